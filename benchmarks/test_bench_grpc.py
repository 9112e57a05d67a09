"""gRPC Decide end to end over loopback vs. the empty handler, one request in flight.

Both servers are separate processes with the same transport settings; the client
alternates blocks of calls between them so drift on a noisy machine hits both alike.
Budgets (issue 3): Decide p50 and p99 each <= 1.5x the empty handler's, p99 <= 1 ms
(where the floor's own p99 leaves room for that). Issue 6's p50 <= 1.2x and p99 <=
1.3x are shown and, with DECISION_LOAD_BUDGETS=1, enforced.
"""

from __future__ import annotations

import time

import grpc

from benchmarks.conftest import ci_slack, issue6_budgets, percentiles, record
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

CALLS = 10_000
BLOCK = 500
RATIO_BUDGET = 1.5
P99_BUDGET_US = 1000.0
# issue 6 tightens the ratios; shown in the table, enforced with DECISION_LOAD_BUDGETS=1
# until they hold on the 2-core reference machine (benchmarks/README.md)
TIGHT_P50_RATIO, TIGHT_P99_RATIO = 1.2, 1.3


def _requests(queries) -> list[pb.DecideRequest]:
    def value(v):
        return pb.Value(number_value=v) if isinstance(v, float) else pb.Value(string_value=v)

    return [pb.DecideRequest(customer=pb.Identifier(kind=q.customer.kind, value=q.customer.value),
                             channel=q.channel, limit=5,
                             context={k: value(v) for k, v in q.context.items()})
            for q in queries]


def test_grpc_decide_vs_empty_handler(benchmark, servers, queries):
    real_addr, floor_addr = servers
    requests = _requests(queries)
    with grpc.insecure_channel(real_addr) as real_ch, grpc.insecure_channel(floor_addr) as floor_ch:
        real = pb_grpc.DecisionServiceStub(real_ch).Decide
        floor = pb_grpc.DecisionServiceStub(floor_ch).Decide
        for call in (real, floor):  # connections up, caches warm
            for r in requests[:300]:
                call(r)
        assert len(real(requests[0]).offers) == 5
        times = {"real": [], "floor": []}
        clock = time.perf_counter_ns
        for block in range(CALLS // BLOCK):
            for name, call in (("floor", floor), ("real", real)) if block % 2 else \
                    (("real", real), ("floor", floor)):
                out = times[name]
                for i in range(block * BLOCK, (block + 1) * BLOCK):
                    req = requests[i % len(requests)]
                    t = clock()
                    call(req)
                    out.append(clock() - t)
        # pytest-benchmark's own table row for the real call
        it = iter(requests * 2)
        benchmark.pedantic(lambda: real(next(it)), rounds=2000, iterations=1)

    r, f = percentiles(times["real"]), percentiles(times["floor"])
    ratio50, ratio99 = r["p50"] / f["p50"], r["p99"] / f["p99"]
    benchmark.extra_info.update({"decide": r, "empty": f, "ratio_p50": ratio50,
                                 "ratio_p99": ratio99})
    name = "gRPC Decide vs empty handler"
    record(name, "p50 (us)", r["p50"], f["p50"] * RATIO_BUDGET, "us", floor=f["p50"])
    record(name, "p99 (us)", r["p99"], min(P99_BUDGET_US, f["p99"] * RATIO_BUDGET), "us",
           floor=f["p99"])
    record(name, "p50 ratio (issue 6)", ratio50, TIGHT_P50_RATIO, "x")
    record(name, "p99 ratio (issue 6)", ratio99, TIGHT_P99_RATIO, "x")
    slack = ci_slack()
    if issue6_budgets():
        assert ratio50 <= TIGHT_P50_RATIO * slack, (r, f)
        assert ratio99 <= TIGHT_P99_RATIO * slack, (r, f)
    assert ratio50 <= RATIO_BUDGET * slack, (r, f)
    assert ratio99 <= RATIO_BUDGET * slack, (r, f)
    # The absolute p99 is a fact about the machine as much as about the server: it is
    # held where the empty handler's own p99 leaves room for the allowed overhead
    # (a host busy elsewhere can push the floor's p99 alone past 1 ms; the ratio
    # above still holds the server to account then).
    if f["p99"] * RATIO_BUDGET <= P99_BUDGET_US:
        assert r["p99"] <= P99_BUDGET_US * slack, (r, f)
