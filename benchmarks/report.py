"""The load report: one command a newcomer runs to see the server's speed against its
budgets and against the empty-handler floor, measured now on this machine.

    .venv/bin/python -m benchmarks.report [--out bench-out/report] [--duration 5]

It builds the benchmark data set (the demo generator: 20,000 customers, 1,000 offers
all candidates everywhere, 32 features; kept in ``bench-out/loadtest-data`` for the next
run), measures the in-process decide, then starts ``decision serve`` (one process) and
``decision floor`` (the same service with empty handlers, same transport settings) and
runs each scenario against both, with ``decision.loadtest``. The budgets are the
benchmarks' (``benchmarks/conftest.py``), enforced, with the goals beside them:

0. in process, no gRPC (``Engine.decide``, steady state): p99 <= 100 us, scaled by the
   machine factor measured between its blocks of calls (goal 50 us, not scaled);
1. one request in flight (closed loop, concurrency 1): Decide p50 and p99 each <= 1.5x
   the floor's (goals 1.2x and 1.3x);
2. saturation (closed loop, 2 client processes x 4 in flight): the server's
   throughput >= 0.6x the floor's (goal 0.75x);
3. open loop at 50% of the saturation measured in 2: p99 <= 1.25x the floor's p99 at
   the same rate;
4. ``DecideBatch`` of 100 decisions (100 customers), one call in flight: p50 <= 50 us
   per decision, scaled by the machine factor (goal 20 us, not scaled; the floor
   answers 100 empty responses).

It prints a table of each figure with its budget, its kind (enforced, goal, info),
whether it is met, the floor and the ratio; writes ``report.json`` and the plots of
each scenario under ``--out``; and exits 1 when an enforced budget is broken (a goal
never fails it). The client shares the machine's cores with the servers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.conftest import (
    BATCH_GOAL_US, BATCH_US, CALIBRATION_REFERENCE_US, DECIDE_P50_RATIO_GOAL,
    DECIDE_P99_RATIO_GOAL, DECIDE_RATIO, ENFORCED, FACTOR_CAP, GOAL, IN_PROCESS_P99_GOAL_US,
    IN_PROCESS_P99_US, INFO, OPEN_LOOP_P99_RATIO, THROUGHPUT_RATIO, THROUGHPUT_RATIO_GOAL,
    Machine, demo_queries, percentiles,
)
from decision.core.engine import Engine
from decision.demo import ensure_demo
from decision.loadtest import Load, Target, Workload, ratios, run_load
from decision.loadtest.plots import save_plots
from decision.loadtest.servers import decision_server, floor_server
from decision.settings import Settings

N_CUSTOMERS, N_OFFERS = 20_000, 1000
BATCH = 100  # decisions per DecideBatch call
WORKLOAD = Workload(mix={"decide": 1.0}, customers=N_CUSTOMERS)
BATCH_WORKLOAD = Workload(mix={"decide_batch": 1.0}, customers=N_CUSTOMERS, batch_size=BATCH)
IN_PROCESS_CALLS = 20_000


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


def in_process_decide(data: Path, catalog: Path, machine: Machine,
                      calls: int = IN_PROCESS_CALLS) -> dict:
    """``Engine.decide`` in this process over the data set, no gRPC: p50/p90/p99/max in
    us, in steady state (every query of the set answered once before the measured
    calls, so no first page fault of the map is counted). ``machine`` takes a
    calibration sample every 1,000 calls (untimed)."""
    engine = Engine(Settings(data_dir=data / "profiles", catalog_path=catalog,
                             address="127.0.0.1:0"), publish=False)
    try:
        engine.warm()
        queries = demo_queries(N_CUSTOMERS)
        for q in queries:
            engine.decide(q)
        clock, times = time.perf_counter_ns, []
        machine.sample()
        for i in range(calls):
            if i and i % 1000 == 0:
                machine.sample()
                for q in queries[:8]:  # the caches back
                    engine.decide(q)
            q = queries[i % len(queries)]
            t = clock()
            engine.decide(q)
            times.append(clock() - t)
        machine.sample()
    finally:
        engine.close()
    return percentiles(times)


def run_report(out: Path, duration: float, data: Path, log=print) -> dict:
    catalog = ensure_demo(data, n_customers=N_CUSTOMERS, n_offers=N_OFFERS, everywhere=True,
                          progress=False)
    log("in-process decide ...")
    machine = Machine()
    local = in_process_decide(data, catalog, machine)
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
    scale = machine.scale

    def row(scenario, figure, server, base, kind=INFO, budget=None, bound=None, unit="us",
            errors=0, scaled=False):
        """``bound``: "max"/"min" (the server's figure against ``budget``, times the
        machine scale when ``scaled``) or "ratio_max"/"ratio_min" (server / floor)."""
        ratio = server / base if server is not None and base else None
        applied = budget
        if budget is not None and scaled:
            applied = budget / scale if bound == "min" else budget * scale
        if bound == "ratio_max":
            ok = ratio is not None and ratio <= applied
        elif bound == "ratio_min":
            ok = ratio is not None and ratio >= applied
        elif bound == "max":
            ok = server is not None and server <= applied
        elif bound == "min":
            ok = server is not None and server >= applied
        else:
            ok = None
        rows.append({"scenario": scenario, "figure": figure, "server": server, "floor": base,
                     "ratio": ratio, "kind": kind, "budget": applied, "base_budget": budget,
                     "scale": scale if scaled else 1.0, "budget_kind": bound, "unit": unit,
                     "ok": ok, "errors": errors})

    def load_row(scenario, figure, result, key, kind=INFO, budget=None, bound=None, per=1,
                 scaled=False):
        if key == "throughput":
            server, base, unit = result["throughput_rps"], result["floor"]["throughput_rps"], "/s"
        else:
            server, base, unit = result["latency_us"][key], result["floor"]["latency_us"][key], "us"
            server, base = (None if v is None else v / per for v in (server, base))
        row(scenario, figure, server, base, kind, budget, bound, unit,
            result["error_count"] + result["floor"]["error_count"], scaled)

    inp, one_ = "in process (no gRPC)", "one in flight"
    row(inp, "decide p50", local["p50"], None)
    row(inp, "decide p99", local["p99"], None, ENFORCED, IN_PROCESS_P99_US, "max", scaled=True)
    row(inp, "decide p99", local["p99"], None, GOAL, IN_PROCESS_P99_GOAL_US, "max")
    load_row(one_, "Decide p50", one, "p50", ENFORCED, DECIDE_RATIO, "ratio_max")
    load_row(one_, "Decide p50", one, "p50", GOAL, DECIDE_P50_RATIO_GOAL, "ratio_max")
    load_row(one_, "Decide p99", one, "p99", ENFORCED, DECIDE_RATIO, "ratio_max")
    load_row(one_, "Decide p99", one, "p99", GOAL, DECIDE_P99_RATIO_GOAL, "ratio_max")
    load_row("saturation", "Decide /s", sat, "throughput", ENFORCED, THROUGHPUT_RATIO,
             "ratio_min")
    load_row("saturation", "Decide /s", sat, "throughput", GOAL, THROUGHPUT_RATIO_GOAL,
             "ratio_min")
    load_row("saturation", "Decide p99 at saturation", sat, "p99")
    open_ = f"open loop {rate}/s (50%)"
    load_row(open_, "Decide p50", half, "p50")
    load_row(open_, "Decide p99", half, "p99", ENFORCED, OPEN_LOOP_P99_RATIO, "ratio_max")
    load_row(open_, "Decide p99.9", half, "p99.9")
    batch_ = f"DecideBatch x{BATCH}"
    load_row(batch_, "per decision p50", batch, "p50", ENFORCED, BATCH_US, "max", per=BATCH,
             scaled=True)
    load_row(batch_, "per decision p50", batch, "p50", GOAL, BATCH_GOAL_US, "max", per=BATCH)
    load_row(batch_, "per decision p99", batch, "p99", per=BATCH)
    report = {"rows": rows, "scenarios": scenarios,
              "machine": {"calibration_us": machine.calibration_us, "factor": machine.factor,
                          "scale": scale, "samples": machine.samples}}
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
        if kind in ("max", "min"):
            text = f"{'<=' if kind == 'max' else '>='} {fig(b, r['unit'])}"
            return text + (f" (x{r['scale']:.2f})" if r["scale"] != 1.0 else "")
        return f"{'<=' if kind == 'ratio_max' else '>='} {b:g}x floor"

    lines = [(f"{'scenario':26}{'figure':26}{'server':>12}{'floor':>12}{'ratio':>8}  "
              f"{'budget':24}{'kind':10}met")]
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else
                                          ("NO" if r["kind"] == ENFORCED else "no"))
        if r["errors"]:
            ok += f" ({r['errors']} errors)"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"{r['scenario']:26}{r['figure']:26}{fig(r['server'], r['unit']):>12}"
                     f"{fig(r['floor'], r['unit']):>12}{ratio:>8}  {budget(r):24}"
                     f"{r['kind']:10}{ok}")
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
    m = report["machine"]
    print(f"machine factor {m['factor']:.2f} (calibration {m['calibration_us']:.1f} us / "
          f"reference {CALIBRATION_REFERENCE_US:g} us): enforced absolute budgets "
          f"x{m['scale']:.2f} (max(1, factor), at most {FACTOR_CAP:g}); ratios to the floor "
          "and goals unscaled")
    print(render_table(report["rows"]))
    print(f"\nJSON and plots (latency over time, percentile spectrum) in {out}/; the client "
          "shares this machine's cores with the servers")
    broken = [r for r in report["rows"] if r["ok"] is False and r["kind"] == ENFORCED]
    missed = [r for r in report["rows"] if r["ok"] is False and r["kind"] == GOAL]
    if missed:
        print("goals not met (shown only): "
              + "; ".join(f"{r['scenario']} {r['figure']}" for r in missed))
    if broken:
        print("enforced budgets broken: "
              + "; ".join(f"{r['scenario']} {r['figure']}" for r in broken))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
