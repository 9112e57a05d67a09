"""Scaling and transport measurements behind benchmarks/README.md ("Load").

    .venv/bin/python -m benchmarks.tuning scaling   [--out bench-out/tuning]
    .venv/bin/python -m benchmarks.tuning transport [--out bench-out/tuning]

``scaling``: ``decision serve --workers 1`` and ``--workers 2`` (SO_REUSEPORT): the
closed-loop saturation throughput; the highest open-loop rate whose p99 stays <= 1 ms
(a search: the rate steps up by 1.25x until p99 breaks, then two bisections); and the
best closed-loop throughput with p99 <= 1 ms over 1, 2, 3, 4, 6 and 8 in flight.
The client (2 processes x 2 connections, so both workers get connections) runs on the
same cores as the servers.

``transport``: the sync floor and server with 2, 4, 8 and 16 handler threads, the
server with gRPC's default experiments (EventEngine on) instead of the project's, and
an asyncio floor prototype (``benchmarks/aio_floor.py``): one request in flight
(p50/p99) and closed-loop saturation (2 client processes x 4 in flight).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from decision.demo import ensure_demo
from decision.loadtest import Load, Target, Workload, max_rate_at, run_load
from decision.loadtest.servers import aio_floor_server, decision_server, floor_server

WORKLOAD = Workload(mix={"decide": 1.0}, customers=20_000)
DURATION = 3.0


def _data(root: Path) -> tuple[Path, Path]:
    catalog = ensure_demo(root, n_customers=20_000, n_offers=1000, everywhere=True,
                          progress=False)
    return root / "profiles", catalog


def _brief(r: dict) -> dict:
    lat = r["latency_us"]
    return {"throughput_rps": r["throughput_rps"], "p50_us": lat["p50"], "p99_us": lat["p99"],
            "p99.9_us": lat["p99.9"], "errors": r["error_count"]}


def _measure(address: str, connections: int = 1) -> dict:
    one = run_load(Target(address), Load(concurrency=1, duration_s=DURATION, warmup_s=0.5),
                   WORKLOAD)
    sat = run_load(Target(address), Load(concurrency=8, processes=2, connections=connections,
                                         duration_s=DURATION, warmup_s=0.5), WORKLOAD)
    return {"one_in_flight": _brief(one), "saturation": _brief(sat)}


def scaling(data: Path, log) -> dict:
    store, catalog = _data(data)
    out = {}
    for workers in (1, 2):
        with decision_server(store, catalog, workers=workers) as address:
            sat = run_load(Target(address), Load(concurrency=8, processes=2, connections=2,
                                                 duration_s=DURATION, warmup_s=0.5), WORKLOAD)
            log(f"workers={workers}: saturation {sat['throughput_rps']:.0f}/s, p99 "
                f"{sat['latency_us']['p99'] / 1000:.2f} ms")
            base = Load(rate=1, processes=2, connections=2, duration_s=DURATION, warmup_s=0.5)
            found = max_rate_at(Target(address), WORKLOAD, 1000.0,
                                0.3 * sat["throughput_rps"], base, log=log)
            log(f"workers={workers}: highest rate with p99 <= 1 ms: {found['rate']:.0f}/s")
            closed = {}
            for c in (1, 2, 3, 4, 6, 8):
                r = run_load(Target(address), Load(concurrency=c, processes=min(c, 2),
                                                   connections=2, duration_s=DURATION,
                                                   warmup_s=0.5), WORKLOAD)
                closed[c] = _brief(r) | {"client_cpu_cores": r["client_cpu_cores"]}
                log(f"workers={workers}: closed loop {c} in flight: {closed[c]}")
            within = [v["throughput_rps"] for v in closed.values() if v["p99_us"] <= 1000]
            out[f"workers={workers}"] = {"saturation": _brief(sat),
                                         "saturation_client_cpu_cores": sat["client_cpu_cores"],
                                         "closed_loop": closed,
                                         "closed_loop_max_rps_p99_1ms": max(within, default=0),
                                         "max_rate_p99_1ms": found["rate"],
                                         "at_that_rate": (_brief(found["result"])
                                                          if found["result"] else None),
                                         "steps": found["steps"]}
    return out


def transport(data: Path, log) -> dict:
    store, catalog = _data(data)
    out = {}
    for threads in (2, 4, 8, 16):
        with floor_server(threads) as floor:
            out[f"sync floor, {threads} threads"] = _measure(floor)
        with decision_server(store, catalog, threads=threads) as real:
            out[f"sync server, {threads} threads"] = _measure(real)
        log(f"threads={threads}: floor {out[f'sync floor, {threads} threads']}, "
            f"server {out[f'sync server, {threads} threads']}")
    grpc_defaults = {"GRPC_EXPERIMENTS": ""}  # gRPC's own defaults: EventEngine on
    with floor_server(8, env=grpc_defaults) as floor:
        out["sync floor, 8 threads, gRPC default experiments"] = _measure(floor)
    with decision_server(store, catalog, env=grpc_defaults) as real:
        out["sync server, 8 threads, gRPC default experiments"] = _measure(real)
    with aio_floor_server() as aio:
        out["asyncio floor (prototype)"] = _measure(aio)
    log(json.dumps({k: v for k, v in out.items() if "default" in k or "asyncio" in k}))
    return out


def table(results: dict) -> str:
    lines = ["| setting | one in flight p50 / p99 (ms) | saturation (/s) "
             "| p99 at saturation (ms) |",
             "| --- | --- | --- | --- |"]
    for name, r in results.items():
        if "one_in_flight" not in r:
            continue
        one, sat = r["one_in_flight"], r["saturation"]
        lines.append(f"| {name} | {one['p50_us'] / 1000:.3f} / {one['p99_us'] / 1000:.3f} | "
                     f"{sat['throughput_rps']:,.0f} | {sat['p99_us'] / 1000:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tuning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("scaling", "transport"))
    p.add_argument("--out", default="bench-out/tuning")
    p.add_argument("--data", default="bench-out/loadtest-data")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(m):
        print(m, file=sys.stderr, flush=True)

    started = time.time()
    results = (scaling if args.what == "scaling" else transport)(Path(args.data), log)
    (out / f"{args.what}.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.what == "transport":
        print(table(results))
    else:
        for name, r in results.items():
            print(f"{name}: saturation {r['saturation']['throughput_rps']:,.0f}/s (client "
                  f"{r['saturation_client_cpu_cores']:.2f} cores); highest open-loop rate "
                  f"with p99 <= 1 ms: {r['max_rate_p99_1ms']:,.0f}/s; closed loop, best "
                  f"throughput with p99 <= 1 ms: {r['closed_loop_max_rps_p99_1ms']:,.0f}/s")
    print(f"({time.time() - started:.0f} s; JSON in {out}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
