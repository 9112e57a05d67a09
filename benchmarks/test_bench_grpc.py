"""gRPC Decide end to end over loopback vs. the empty handler, one request in flight.

Both servers are separate processes with the same transport settings; the client
alternates blocks of calls between them so drift on a noisy machine hits both alike.
The enforced figures are per pair of blocks: Decide's p50 (p99) over its block
against the empty handler's over the neighbouring block, the median over the pairs,
so a stall of the machine that hits one block moves one of the pairs, not the figure.

Budgets: those ratios <= 1.5x (enforced); goals p50 <= 1.2x and p99 <= 1.3x (shown,
never fail the run). The empty handler's time is mostly wake-ups and the network
stack, which a slower machine barely changes (p50 ~460 us both on a quiet day and on
a day 2.5x slower), while Decide's excess over it is the server's Python work, which
it multiplies (the same code measured 1.31x on the quiet day, 2.1x on the slow one).
So the enforced budget scales that excess by the machine factor: 1 + 0.5 x scale
(1.5x on a machine as fast as the reference). The overall p50/p99 are shown (info).
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from benchmarks.conftest import (
    DECIDE_P50_RATIO_GOAL, DECIDE_P99_RATIO_GOAL, DECIDE_RATIO, ENFORCED, GOAL, enforce,
    percentiles, record,
)
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

CALLS = 10_000
BLOCK = 500


def _requests(queries) -> list[pb.DecideRequest]:
    def value(v):
        return pb.Value(number_value=v) if isinstance(v, float) else pb.Value(string_value=v)

    return [pb.DecideRequest(customer=pb.Identifier(kind=q.customer.kind, value=q.customer.value),
                             channel=q.channel, limit=5,
                             context={k: value(v) for k, v in q.context.items()})
            for q in queries]


def test_grpc_decide_vs_empty_handler(benchmark, servers, queries, machine):
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
        blocks: dict[str, list] = {"real": [], "floor": []}
        clock = time.perf_counter_ns
        for block in range(CALLS // BLOCK):
            for name, call in (("floor", floor), ("real", real)) if block % 2 else \
                    (("real", real), ("floor", floor)):
                out = []
                for i in range(block * BLOCK, (block + 1) * BLOCK):
                    req = requests[i % len(requests)]
                    t = clock()
                    call(req)
                    out.append(clock() - t)
                times[name] += out
                blocks[name].append(out)
            machine.sample(50)  # untimed, between pairs of blocks
        # pytest-benchmark's own table row for the real call
        it = iter(requests * 2)
        benchmark.pedantic(lambda: real(next(it)), rounds=2000, iterations=1)

    r, f = percentiles(times["real"]), percentiles(times["floor"])
    pairs = [(percentiles(a), percentiles(b)) for a, b in zip(blocks["real"], blocks["floor"])]
    ratio50 = float(np.median([a["p50"] / b["p50"] for a, b in pairs]))
    ratio99 = float(np.median([a["p99"] / b["p99"] for a, b in pairs]))
    benchmark.extra_info.update({"decide": r, "empty": f, "ratio_p50": ratio50,
                                 "ratio_p99": ratio99})
    name = "gRPC Decide vs empty handler"
    record(name, "p50", r["p50"], "us", floor=f["p50"])
    record(name, "p99", r["p99"], "us", floor=f["p99"])
    rows = (
        record(name, "p50 / floor p50", ratio50, "x", kind=ENFORCED, budget=DECIDE_RATIO,
               floor=f["p50"], floor_unit="us", machine=machine, excess=True),
        record(name, "p99 / floor p99", ratio99, "x", kind=ENFORCED, budget=DECIDE_RATIO,
               floor=f["p99"], floor_unit="us", machine=machine, excess=True),
        record(name, "p50 / floor p50", ratio50, "x", kind=GOAL, budget=DECIDE_P50_RATIO_GOAL,
               floor=f["p50"], floor_unit="us"),
        record(name, "p99 / floor p99", ratio99, "x", kind=GOAL, budget=DECIDE_P99_RATIO_GOAL,
               floor=f["p99"], floor_unit="us"),
    )
    enforce(*rows, detail=(r, f))
