"""``DecideBatch``: the per-decision cost of 100 decisions in one call (a backend that
needs several decisions per page, or a page for many customers), over loopback to
the real server process, one call in flight. The 100 requests are for 100 different
customers (no profile read or rule shared between them: the costly case).

Budget (issue 6): <= 20 us per decision. It does not hold yet on the 2-core reference
machine (measured 42-65 us over gRPC on a noisy host, of which the kernel ~9, the
Python around it ~19; benchmarks/README.md, "DecideBatch"), so by default the benchmark fails only
past a regression guard of 100 us, and shows the figure against the 20 us budget in
the table; DECISION_LOAD_BUDGETS=1 enforces 20 us.
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from benchmarks.conftest import ci_slack, issue6_budgets, percentiles, record
from benchmarks.test_bench_grpc import _requests
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

PER_CALL = 100
CALLS = 300
BUDGET_US = 20.0
GUARD_US = 100.0  # ~1.4x the slowest it measured on a busy host (73 us): catches a regression


def test_decide_batch_per_decision(benchmark, servers, queries):
    real_addr, _ = servers
    requests = _requests(queries)
    batches = [pb.DecideBatchRequest(requests=requests[i:i + PER_CALL])
               for i in range(0, len(requests) - PER_CALL, PER_CALL)]
    with grpc.insecure_channel(real_addr) as channel:
        call = pb_grpc.DecisionServiceStub(channel).DecideBatch
        for batch in batches:  # every customer read once: steady state
            call(batch)
        reply = call(batches[0])
        assert len(reply.responses) == PER_CALL
        assert all(len(r.offers) == 5 for r in reply.responses)
        clock = time.perf_counter_ns
        per_decision = []
        for n in range(CALLS):
            t = clock()
            call(batches[n % len(batches)])
            per_decision.append((clock() - t) / PER_CALL)
        it = iter(batches * 2)
        benchmark.pedantic(lambda: call(next(it)), rounds=50, iterations=1)
    p = percentiles(np.asarray(per_decision))
    benchmark.extra_info.update({"per_decision_us": p})
    name = f"DecideBatch x{PER_CALL} (gRPC)"
    record(name, "per decision p50", p["p50"], BUDGET_US, "us")
    record(name, "per decision p99", p["p99"], BUDGET_US, "us")
    enforced = BUDGET_US if issue6_budgets() else GUARD_US
    assert p["p50"] <= enforced * ci_slack(), p
