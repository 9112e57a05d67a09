"""The load report: one command a newcomer runs to see the server's speed against its
budgets and against the empty-handler floor, measured now on this machine.

    .venv/bin/python -m benchmarks.report [--out bench-out/report] [--duration 5]

It builds the benchmark data set (the demo generator: 20,000 customers, 1,000 offers
all candidates everywhere, 32 features; kept in ``bench-out/loadtest-data`` for the next
run), measures the in-process decide, then starts ``decision serve`` (one process) and
``decision floor`` (the same service with empty handlers, same transport settings) and
runs each scenario against both, with ``decision.loadtest``. Issue 6's budgets:

0. in process, no gRPC (``Engine.decide``, steady state): p99 <= 50 us;
1. one request in flight (closed loop, concurrency 1): Decide p50 <= 1.2x and p99
   <= 1.3x the floor's, and p99 <= 1 ms;
2. saturation (closed loop, 2 client processes x 4 in flight): the server's
   throughput >= 0.75x the floor's;
3. open loop at 50% of the saturation measured in 2: p99 <= 1 ms;
4. ``DecideBatch`` of 100 decisions (100 customers), one call in flight: <= 20 us per
   decision (the floor answers 100 empty responses).

It prints a table of each figure with its budget, the floor and the ratio, writes
``report.json`` and the plots of each scenario under ``--out``, and exits 1 when a
budget is broken. The client shares the machine's cores with the servers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.conftest import demo_queries, percentiles
from decision.demo import ensure_demo
from decision.core.engine import Engine
from decision.loadtest import Load, Target, Workload, ratios, run_load
from decision.loadtest.plots import save_plots
from decision.loadtest.servers import decision_server, floor_server
from decision.settings import Settings

N_CUSTOMERS, N_OFFERS = 20_000, 1000
BATCH = 100  # decisions per DecideBatch call
WORKLOAD = Workload(mix={"decide": 1.0}, customers=N_CUSTOMERS)
BATCH_WORKLOAD = Workload(mix={"decide_batch": 1.0}, customers=N_CUSTOMERS, batch_size=BATCH)
IN_PROCESS_CALLS = 20_000

# issue 6's budgets
IN_PROCESS_P99_US = 50.0  # in-process decide p99
P50_RATIO, P99_RATIO = 1.2, 1.3  # gRPC Decide, one in flight, against the floor's
P99_US = 1000.0  # one in flight, and open loop at 50% of saturation
THROUGHPUT_RATIO = 0.75  # one server process against the floor's
BATCH_US = 20.0  # DecideBatch, per decision at 100 per call


def _pair(name: str, real: str, floor: str, load: Load, out: Path, log,
          workload: Workload = WORKLOAD) -> dict:
    """Same load against the server then the floor; plots; the result with ratios."""
    keep: dict = {}
    log(f"{name}: server ...")
    result = run_load(Target(real), load, workload, keep=keep)
    runs = {"server": (result, keep["aggregate"].spectrum())}
    log(f"{name}: floor ...")
    floor = run_load(Target(floor), load, workload, keep=keep)
    runs["floor"] = (floor, keep["aggregate"].spectrum())
    result["floor"], result["ratio"] = floor, ratios(result, floor)
    save_plots(out / name, runs, name)
    return result


def in_process_decide(data: Path, catalog: Path, calls: int = IN_PROCESS_CALLS) -> dict:
    """``Engine.decide`` in this process over the data set, no gRPC: p50/p90/p99/max in
    us, in steady state (every query of the set answered once before the measured
    calls, so no first page fault of the map is counted)."""
    engine = Engine(Settings(data_dir=data / "profiles", catalog_path=catalog,
                             address="127.0.0.1:0"), publish=False)
    try:
        engine.warm()
        queries = demo_queries(N_CUSTOMERS)
        for q in queries:
            engine.decide(q)
        clock, times = time.perf_counter_ns, []
        for i in range(calls):
            q = queries[i % len(queries)]
            t = clock()
            engine.decide(q)
            times.append(clock() - t)
    finally:
        engine.close()
    return percentiles(times)


def run_report(out: Path, duration: float, data: Path, log=print) -> dict:
    catalog = ensure_demo(data, n_customers=N_CUSTOMERS, n_offers=N_OFFERS, everywhere=True,
                          progress=False)
    log("in-process decide ...")
    local = in_process_decide(data, catalog)
    with decision_server(data / "profiles", catalog) as real, floor_server() as floor:
        one = _pair("one-in-flight", real, floor,
                    Load(concurrency=1, duration_s=duration, warmup_s=1), out, log)
        sat = _pair("saturation", real, floor,
                    Load(concurrency=8, processes=2, duration_s=duration, warmup_s=1), out,
                    log)
        rate = round(0.5 * sat["throughput_rps"])
        half = _pair("open-loop-50pct", real, floor,
                     Load(rate=rate, duration_s=duration, warmup_s=1), out, log)
        batch = _pair("decide-batch", real, floor,
                      Load(concurrency=1, duration_s=duration, warmup_s=1), out, log,
                      BATCH_WORKLOAD)
    scenarios = {"in_process": local, "one_in_flight": one, "saturation": sat,
                 "open_loop_50pct": half, "decide_batch": batch}
    rows: list[dict] = []

    def row(scenario, figure, server, base, budget=None, kind=None, unit="us", errors=0):
        ratio = server / base if server is not None and base else None
        if kind == "ratio_max":
            ok = ratio is not None and ratio <= budget
        elif kind == "ratio_min":
            ok = ratio is not None and ratio >= budget
        elif kind == "max":
            ok = server is not None and server <= budget
        else:
            ok = None
        rows.append({"scenario": scenario, "figure": figure, "server": server, "floor": base,
                     "ratio": ratio, "budget": budget, "budget_kind": kind, "unit": unit,
                     "ok": ok, "errors": errors})

    def load_row(scenario, figure, result, key, budget=None, kind=None, per=1):
        if key == "throughput":
            server, base, unit = result["throughput_rps"], result["floor"]["throughput_rps"], "/s"
        else:
            server, base, unit = result["latency_us"][key], result["floor"]["latency_us"][key], "us"
            server, base = (None if v is None else v / per for v in (server, base))
        row(scenario, figure, server, base, budget, kind, unit,
            result["error_count"] + result["floor"]["error_count"])

    row("in process (no gRPC)", "decide p50", local["p50"], None)
    row("in process (no gRPC)", "decide p99", local["p99"], None, IN_PROCESS_P99_US, "max")
    load_row("one in flight", "Decide p50", one, "p50", P50_RATIO, "ratio_max")
    load_row("one in flight", "Decide p99", one, "p99", P99_RATIO, "ratio_max")
    load_row("one in flight", "Decide p99 (absolute)", one, "p99", P99_US, "max")
    load_row("saturation", "Decide /s", sat, "throughput", THROUGHPUT_RATIO, "ratio_min")
    load_row("saturation", "Decide p99 at saturation", sat, "p99")
    load_row(f"open loop {rate}/s (50%)", "Decide p50", half, "p50")
    load_row(f"open loop {rate}/s (50%)", "Decide p99", half, "p99", P99_US, "max")
    load_row(f"open loop {rate}/s (50%)", "Decide p99.9", half, "p99.9")
    load_row(f"DecideBatch x{BATCH}", "per decision p50", batch, "p50", BATCH_US, "max",
             per=BATCH)
    load_row(f"DecideBatch x{BATCH}", "per decision p99", batch, "p99", per=BATCH)
    report = {"rows": rows, "scenarios": scenarios}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render_table(rows: list[dict]) -> str:
    def fig(v, unit):
        if v is None:
            return "-"
        if unit != "us":
            return f"{v:,.0f}{unit}"
        return f"{v:.1f} us" if v < 100 else f"{v / 1000:.3f} ms"

    def budget(r):
        b, kind = r["budget"], r["budget_kind"]
        if kind is None:
            return "-"
        if kind == "max":
            return f"<= {fig(b, r['unit'])}"
        return f"{'<=' if kind == 'ratio_max' else '>='} {b:g}x floor"

    lines = [f"{'scenario':26}{'figure':26}{'server':>12}{'floor':>12}{'ratio':>8}  "
             f"{'budget':18}ok"]
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        if r["errors"]:
            ok += f" ({r['errors']} errors)"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"{r['scenario']:26}{r['figure']:26}{fig(r['server'], r['unit']):>12}"
                     f"{fig(r['floor'], r['unit']):>12}{ratio:>8}  {budget(r):18}{ok}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-out/report", help="where the JSON and plots go")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--data", default="bench-out/loadtest-data", help="benchmark data set")
    args = p.parse_args(argv)
    out = Path(args.out)
    report = run_report(out, args.duration, Path(args.data),
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    print(render_table(report["rows"]))
    print(f"\nJSON and plots (latency over time, percentile spectrum) in {out}/; the client "
          "shares this machine's cores with the servers")
    broken = [r for r in report["rows"] if r["ok"] is False]
    if broken:
        print("budgets broken: " + "; ".join(f"{r['scenario']} {r['figure']}" for r in broken))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
