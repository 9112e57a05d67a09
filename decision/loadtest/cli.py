"""``decision loadtest``: the command-line face of the harness."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from decision.loadtest.client import Load, LoadTestError, Target
from decision.loadtest.results import ratios, render
from decision.loadtest.runner import max_rate_at, progress_line, run_load
from decision.loadtest.workload import Workload, WorkloadError, parse_mix, parse_skew


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--address", default="127.0.0.1:50051", help="server host:port "
                   "(default %(default)s)")
    g.add_argument("--token", help="bearer token, sent as 'authorization: Bearer TOKEN' "
                   "(default: the DECISION_TOKEN environment variable, kept out of ps)")
    g.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting these root "
                   "certificates")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="the name the server's certificate must carry (default: the host)")
    g = p.add_argument_group("load")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--rate", type=float, help="open loop: requests per second in all, "
                     "sent on schedule whatever is still in flight (default 1000)")
    how.add_argument("--concurrency", type=int, help="closed loop: requests outstanding "
                     "in all, each sent as another returns")
    g.add_argument("--duration", type=float, default=10.0, help="measured seconds "
                   "(default %(default)s)")
    g.add_argument("--warmup", type=float, default=1.0, help="seconds of load first, not "
                   "counted (default %(default)s)")
    g.add_argument("--requests", type=int, default=0, help="stop after this many requests "
                   "(warm-up included); 0: no cap")
    g.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, "
                   "seconds (default %(default)s)")
    g.add_argument("--processes", type=int, default=1, help="client processes sharing the "
                   "load; their histograms are merged (default %(default)s)")
    g.add_argument("--connections", type=int, default=1, help="connections per client "
                   "process (with a --workers server, each connection lands on one worker)")
    g.add_argument("--interval", type=float, default=0.25, help="time-series interval, "
                   "seconds (default %(default)s)")
    g = p.add_argument_group("requests")
    g.add_argument("--mix", default="decide=100", help="RPC weights, e.g. "
                   "decide=90,track=10; RPCs: decide, decide_batch, track, get_profile, "
                   "list_offers, upsert_profile (default %(default)s)")
    g.add_argument("--customers", type=int, default=100_000, help="customer ids C0000000 .. "
                   "(the demo data set's; default %(default)s)")
    g.add_argument("--skew", default="zipf:1.0", help="customer popularity: zipf:S, "
                   "hot:80/20 (80%% of requests to 20%% of customers) or uniform "
                   "(default %(default)s)")
    g.add_argument("--channel", default="web")
    g.add_argument("--placement", default="")
    g.add_argument("--limit", type=int, default=5, help="offers per Decide")
    g.add_argument("--batch-size", type=int, default=100, help="decisions per DecideBatch "
                   "call (mix decide_batch; default %(default)s)")
    g.add_argument("--context", action="append", default=None, metavar="KEY=VALUE",
                   help="Decide context entry (repeat); default: country, device, basket "
                   "varied per request")
    g.add_argument("--event-type", default="page_view", help="Track event type "
                   "(default %(default)s)")
    g.add_argument("--event-field", action="append", default=None, metavar="KEY=VALUE",
                   help="Track event field (repeat); default: page=<a demo page>")
    g.add_argument("--seed", type=int, default=1)
    g = p.add_argument_group("comparison and search")
    g.add_argument("--floor", action="store_true", help="also run the same load against an "
                   "empty-handler server started here, and report each figure as a ratio")
    g.add_argument("--floor-threads", type=int, default=8, help="handler threads of that "
                   "floor server (default %(default)s, as decision serve)")
    g.add_argument("--max-rate-at-p99", type=float, metavar="MS", help="search: the highest "
                   "open-loop rate whose p99 stays within MS milliseconds (from --rate up)")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write the result as JSON")
    g.add_argument("--plots", metavar="DIR", help="write latency-over-time.png and "
                   "percentiles.png there")
    g.add_argument("--no-progress", action="store_true", help="no live status line")


def run(args, parse_context) -> int:
    if args.floor and args.tls_ca:
        print("decision loadtest: --floor serves plaintext, so its ratios against a TLS "
              "server would mislead; compare without TLS", file=sys.stderr)
        return 2
    try:
        token = args.token or os.environ.get("DECISION_TOKEN")
        target = Target(args.address, token=token, tls_ca=args.tls_ca,
                        tls_server_name=args.tls_server_name)
        workload = Workload(
            mix=parse_mix(args.mix), customers=args.customers, skew=parse_skew(args.skew),
            channel=args.channel, placement=args.placement, limit=args.limit,
            batch_size=args.batch_size,
            context=parse_context(args.context) if args.context is not None else None,
            event_type=args.event_type,
            event_fields=(parse_context(args.event_field) if args.event_field is not None
                          else None),
            seed=args.seed)
        rate = args.rate if args.rate is not None or args.concurrency else 1000.0
        load = Load(rate=rate or 0.0, concurrency=args.concurrency or 0,
                    duration_s=args.duration, warmup_s=args.warmup, requests=args.requests,
                    timeout_s=args.timeout, processes=args.processes,
                    connections=args.connections, interval_s=args.interval)
        if args.max_rate_at_p99 is not None:
            return _search(args, target, load, workload)
        show = None if args.no_progress or not sys.stderr.isatty() else progress_line()
        keep: dict = {}
        result = run_load(target, load, workload, progress=show, keep=keep)
        if show:
            sys.stderr.write("\n")
        runs = {"server": (result, keep["aggregate"].spectrum())}
        if args.floor:
            from decision.loadtest.servers import floor_server

            print(f"same load against the empty-handler floor ({args.floor_threads} threads)",
                  file=sys.stderr)
            with floor_server(args.floor_threads) as floor_address:
                floor = run_load(Target(floor_address), load, workload, progress=show,
                                 keep=keep)
            if show:
                sys.stderr.write("\n")
            result["floor"] = floor
            result["ratio"] = ratios(result, floor)
            runs["floor"] = (floor, keep["aggregate"].spectrum())
    except (LoadTestError, WorkloadError) as exc:
        print(f"decision loadtest: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plots:
        from decision.loadtest.plots import save_plots

        paths = save_plots(Path(args.plots), runs, f"decision loadtest {args.address}")
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def _search(args, target: Target, load: Load, workload: Workload) -> int:
    if not load.open_loop:
        raise LoadTestError("--max-rate-at-p99 searches open-loop rates: give --rate "
                            "(the first rate to try), not --concurrency")
    print(f"searching the highest rate with p99 <= {args.max_rate_at_p99} ms, from "
          f"{load.rate:g} req/s up", file=sys.stderr)
    found = max_rate_at(target, workload, args.max_rate_at_p99 * 1000, load.rate, load,
                        log=lambda line: print(line, file=sys.stderr))
    if found["result"] is None:
        print(f"no rate from {load.rate:g} req/s up keeps p99 <= {args.max_rate_at_p99} ms")
    else:
        print(f"highest rate with p99 <= {args.max_rate_at_p99} ms: {found['rate']:g} req/s\n")
        print(render(found["result"]))
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2) + "\n")
    return 0 if found["result"] is not None else 1
