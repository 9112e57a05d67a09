"""``DecideBatch``: the per-decision cost of 100 decisions in one call (a backend that
needs several decisions per page, or a page for many customers), over loopback to
the real server process, one call in flight. The 100 requests are for 100 different
customers (no profile read or rule shared between them: the costly case).

Budget: p50 <= 50 us per decision (enforced), scaled by the machine factor sampled
between blocks of calls; goal <= 20 us (shown, never fails the run, not scaled;
measured 38-65 us on the 2-core machine, of which the kernel ~9 us and the Python
around it ~19 us: benchmarks/README.md, "DecideBatch").
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from benchmarks.conftest import (
    BATCH_GOAL_US, BATCH_US, ENFORCED, GOAL, enforce, percentiles, record,
)
from benchmarks.test_bench_grpc import _requests
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

PER_CALL = 100
CALLS = 300


def test_decide_batch_per_decision(benchmark, servers, queries, machine):
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
            if n and n % 30 == 0:
                machine.sample()  # untimed, between calls
            t = clock()
            call(batches[n % len(batches)])
            per_decision.append((clock() - t) / PER_CALL)
        it = iter(batches * 2)
        benchmark.pedantic(lambda: call(next(it)), rounds=50, iterations=1)
    machine.sample()
    p = percentiles(np.asarray(per_decision))
    benchmark.extra_info.update({"per_decision_us": p, "machine_factor": machine.factor})
    name = f"DecideBatch x{PER_CALL} (gRPC)"
    rows = (record(name, "per decision p50", p["p50"], "us", kind=ENFORCED, budget=BATCH_US,
                   machine=machine),
            record(name, "per decision p50", p["p50"], "us", kind=GOAL, budget=BATCH_GOAL_US,
                   machine=machine))
    record(name, "per decision p99", p["p99"], "us")
    enforce(*rows, detail=p)
