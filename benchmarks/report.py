"""The load report: one command a newcomer runs to see the server's speed against its
budgets and against the empty-handler floor, measured now on this machine.

    .venv/bin/python -m benchmarks.report [--out bench-out/report] [--duration 5]

It builds the benchmark data set (the demo generator: 20,000 customers, 1,000 offers
all candidates everywhere; kept in ``bench-out/loadtest-data`` for the next run),
starts ``decision serve`` (one process) and ``decision floor`` with the same settings,
and runs three scenarios against each, with ``decision.loadtest``:

1. one request in flight (closed loop, concurrency 1): Decide p99 <= 1 ms and
   <= 1.5x the floor's;
2. saturation (closed loop, 2 client processes x 4 in flight): the server's
   throughput >= 0.75x the floor's;
3. open loop at 50% of the saturation measured in 2: p99 <= 1 ms.

It prints a table of each figure with its budget, the floor and the ratio, writes
``report.json`` and the plots of each scenario under ``--out``, and exits 1 when a
budget is broken. The client shares the machine's cores with the servers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from decision.demo import ensure_demo
from decision.loadtest import Load, Target, Workload, ratios, run_load
from decision.loadtest.plots import save_plots
from decision.loadtest.servers import decision_server, floor_server

N_CUSTOMERS, N_OFFERS = 20_000, 1000
WORKLOAD = Workload(mix={"decide": 1.0}, customers=N_CUSTOMERS)


def _pair(name: str, real: str, floor: str, load: Load, out: Path, log) -> dict:
    """Same load against the server then the floor; plots; the result with ratios."""
    keep: dict = {}
    log(f"{name}: server ...")
    result = run_load(Target(real), load, WORKLOAD, keep=keep)
    runs = {"server": (result, keep["aggregate"].spectrum())}
    log(f"{name}: floor ...")
    floor = run_load(Target(floor), load, WORKLOAD, keep=keep)
    runs["floor"] = (floor, keep["aggregate"].spectrum())
    result["floor"], result["ratio"] = floor, ratios(result, floor)
    save_plots(out / name, runs, name)
    return result


def run_report(out: Path, duration: float, data: Path, log=print) -> dict:
    catalog = ensure_demo(data, n_customers=N_CUSTOMERS, n_offers=N_OFFERS, everywhere=True,
                          progress=False)
    scenarios = {}
    rows = []
    with decision_server(data / "profiles", catalog) as real, floor_server() as floor:
        one = _pair("one-in-flight", real, floor,
                    Load(concurrency=1, duration_s=duration, warmup_s=1), out, log)
        sat = _pair("saturation", real, floor,
                    Load(concurrency=8, processes=2, duration_s=duration, warmup_s=1), out,
                    log)
        rate = round(0.5 * sat["throughput_rps"])
        half = _pair("open-loop-50pct", real, floor,
                     Load(rate=rate, duration_s=duration, warmup_s=1), out, log)
    scenarios = {"one_in_flight": one, "saturation": sat, "open_loop_50pct": half}

    def row(scenario, figure, result, key, budget, kind, unit):
        if key == "throughput":
            server, base = result["throughput_rps"], result["floor"]["throughput_rps"]
        else:
            server, base = result["latency_us"][key], result["floor"]["latency_us"][key]
        ratio = result["ratio"][key]
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
                     "ok": ok, "errors": result["error_count"] + result["floor"]["error_count"]})

    row("one in flight", "Decide p50", one, "p50", None, None, "us")
    row("one in flight", "Decide p99", one, "p99", 1000.0, "max", "us")
    row("one in flight", "p99 vs floor", one, "p99", 1.5, "ratio_max", "us")
    row("saturation", "Decide /s", sat, "throughput", 0.75, "ratio_min", "/s")
    row("saturation", "Decide p99 at saturation", sat, "p99", None, None, "us")
    row(f"open loop {rate}/s (50%)", "Decide p50", half, "p50", None, None, "us")
    row(f"open loop {rate}/s (50%)", "Decide p99", half, "p99", 1000.0, "max", "us")
    row(f"open loop {rate}/s (50%)", "Decide p99.9", half, "p99.9", None, None, "us")
    report = {"rows": rows, "scenarios": scenarios}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render_table(rows: list[dict]) -> str:
    def fig(v, unit):
        if v is None:
            return "-"
        return f"{v / 1000:.3f} ms" if unit == "us" else f"{v:,.0f}{unit}"

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
