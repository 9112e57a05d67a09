"""Load budgets, measured with the load-test harness (decision/loadtest) against real
server processes and the empty-handler floor started with the same settings.

Budgets, each against the floor measured in the same run:
- saturation: one server process answers >= 0.6x the floor's Decide throughput
  (enforced; goal >= 0.75x, shown, never fails the run), closed loop (2 client
  processes x 4 in flight), three alternating 2 s windows each, the median ratio;
- open loop at 50% of the server's saturation rate, measured just before: Decide p99
  <= 1.25x the floor's p99 at the same rate (enforced), latency counted from each
  request's scheduled send time (no coordinated omission). Five alternating windows of
  1.5 s each for the server and the floor; the figure is the median of the five
  windows' ratios: one stall of this shared host (tens of ms, seen in single 4 s runs
  as a server p99 of 18-36 ms against the floor's 1.2-1.6 ms, and the other way round)
  decides a p99 of a few thousand requests, and now spoils one window, not the figure.

The client runs on the same 2 cores as the server: its CPU is part of what is
measured, for the floor and the server alike (benchmarks/README.md, "Load").

As for gRPC Decide one in flight (test_bench_grpc.py), only the server's excess over
the floor is scaled by the machine factor: a slow host multiplies the server's Python
work and barely touches the floor (its saturation measured 3,462-3,896/s on the quiet
day and 2,950-3,840/s on a day at factor ~2.5, while the server fell from 2,269-2,477
to 1,393-1,555/s with the previous code's figures alike). So throughput >= 1 / (1 +
(1 / 0.6 - 1) x scale) of the floor's (0.6x at factor 1, 0.375x at the cap), and the
open-loop p99 <= 1 + 0.25 x scale of the floor's.
"""

from __future__ import annotations

from benchmarks.conftest import (
    ENFORCED, GOAL, N_CUSTOMERS, OPEN_LOOP_P99_RATIO, THROUGHPUT_RATIO, THROUGHPUT_RATIO_GOAL,
    enforce, record,
)
from decision.loadtest import Load, Target, Workload, run_load

SATURATION = dict(concurrency=8, processes=2, duration_s=3.0, warmup_s=0.5)
WORKLOAD = Workload(mix={"decide": 1.0}, customers=N_CUSTOMERS)
WINDOWS, WINDOW_S = 5, 1.5  # open loop: alternating windows of the server and the floor
SATURATION_WINDOWS, SATURATION_WINDOW_S = 3, 2.0  # closed loop, the same way


def _saturation(address: str, duration_s: float = 3.0) -> dict:
    return run_load(Target(address), Load(**{**SATURATION, "duration_s": duration_s}),
                    WORKLOAD)


def test_saturation_throughput_vs_floor(benchmark, servers, machine):
    real_addr, floor_addr = servers
    runs: dict[str, list] = {"real": [], "floor": []}
    for n in range(SATURATION_WINDOWS):  # alternating, so drift hits both alike
        for name, address in ((("floor", floor_addr), ("real", real_addr)) if n % 2 else
                              (("real", real_addr), ("floor", floor_addr))):
            runs[name].append(_saturation(address, SATURATION_WINDOW_S))
        machine.sample()
    ratios = [r["throughput_rps"] / f["throughput_rps"]
              for r, f in zip(runs["real"], runs["floor"])]
    middle = sorted(range(SATURATION_WINDOWS), key=lambda i: ratios[i])[SATURATION_WINDOWS // 2]
    real, floor, ratio = runs["real"][middle], runs["floor"][middle], ratios[middle]
    benchmark.extra_info.update({"server_rps": real["throughput_rps"],
                                 "floor_rps": floor["throughput_rps"], "ratio": ratio})
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are the rates above
    for r in runs["real"] + runs["floor"]:
        assert r["error_count"] == 0, r["errors"]
    name = "load: saturation vs floor"
    record(name, "Decide /s (closed loop)", real["throughput_rps"], "/s",
           floor=floor["throughput_rps"])
    rows = (record(name, "throughput / floor's (median)", ratio, "x", kind=ENFORCED,
                   budget=THROUGHPUT_RATIO, higher_is_better=True,
                   floor=floor["throughput_rps"], floor_unit="/s", machine=machine,
                   excess=True),
            record(name, "throughput / floor's", ratio, "x", kind=GOAL,
                   budget=THROUGHPUT_RATIO_GOAL, higher_is_better=True,
                   floor=floor["throughput_rps"], floor_unit="/s"))
    enforce(*rows, detail=(real["throughput_rps"], floor["throughput_rps"]))


def test_open_loop_at_half_saturation(benchmark, servers, machine):
    real_addr, floor_addr = servers
    saturation = _saturation(real_addr)["throughput_rps"]
    rate = 0.5 * saturation
    load = Load(rate=rate, duration_s=WINDOW_S, warmup_s=0.3)
    windows: dict[str, list] = {"real": [], "floor": []}
    for n in range(WINDOWS):  # alternating, so drift and stalls hit both alike
        for name, address in ((("floor", floor_addr), ("real", real_addr)) if n % 2 else
                              (("real", real_addr), ("floor", floor_addr))):
            windows[name].append(run_load(Target(address), load, WORKLOAD))
        machine.sample()
    ratios = [r["latency_us"]["p99"] / f["latency_us"]["p99"]
              for r, f in zip(windows["real"], windows["floor"])]
    # the window whose ratio is the median: its own figures are shown beside it
    middle = sorted(range(WINDOWS), key=lambda i: ratios[i])[WINDOWS // 2]
    real, floor = windows["real"][middle], windows["floor"][middle]
    p99, floor_p99 = real["latency_us"]["p99"], floor["latency_us"]["p99"]
    benchmark.extra_info.update({"rate": rate, "server": real["latency_us"],
                                 "floor": floor["latency_us"],
                                 "send_lag": real["send_lag_us"]})
    benchmark.pedantic(lambda: None, rounds=1)
    for r in windows["real"] + windows["floor"]:
        assert r["error_count"] == 0, r["errors"]
    # the client kept to the schedule (else the latency is the client's, not the server's)
    assert all(r["throughput_rps"] >= 0.95 * rate for r in windows["real"]), \
        [(r["throughput_rps"], rate) for r in windows["real"]]
    name = f"load: open loop {rate:.0f}/s (50%)"
    record(name, "p50", real["latency_us"]["p50"], "us", floor=floor["latency_us"]["p50"])
    record(name, "p99", p99, "us", floor=floor_p99)
    enforce(record(name, "p99 / floor p99 (median)", ratios[middle], "x", kind=ENFORCED,
                   budget=OPEN_LOOP_P99_RATIO, floor=floor_p99, floor_unit="us",
                   machine=machine, excess=True),
            detail=(real["latency_us"], floor["latency_us"], real["send_lag_us"]))
