"""The ``decision`` command: serve, demo, ask, backup, restore.

    decision serve --data-dir DIR --catalog FILE [--address H:P] [--workers N] [--threads T]
    decision demo  [--data-dir ./demo-data] [--customers 100000] [--offers 500] [--once]
    decision ask   --customer ID [--channel kiosk] [--placement P] [--context key=value ...]
    decision backup --data-dir DIR OUT
    decision restore BACKUP --data-dir DIR [--force]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from decision.errors import DecisionError
from decision.settings import DEFAULT_IDENTIFIER_KINDS, Limits, Settings

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _settings(args, data_dir: Path, catalog: Path) -> Settings:
    return Settings(
        data_dir=data_dir, catalog_path=catalog, address=args.address, workers=args.workers,
        threads=args.threads, map_size=args.map_size << 20, durable=not args.nosync,
        identifier_kinds=tuple(k.strip() for k in args.identifier_kinds.split(",") if k.strip()),
        limits=Limits(max_offers=args.max_offers, default_offers=min(5, args.max_offers)),
    )


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="host:port to listen on; port 0 picks a free port (default %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port and the store (default %(default)s)")
    p.add_argument("--threads", type=int, default=8,
                   help="gRPC handler threads per process (default %(default)s)")
    p.add_argument("--map-size", type=int, default=1024, metavar="MIB",
                   help="initial LMDB map size in MiB; it doubles when full (default %(default)s)")
    p.add_argument("--identifier-kinds", default=",".join(DEFAULT_IDENTIFIER_KINDS),
                   metavar="KIND,KIND", help="the kinds of customer identifiers accepted "
                   "(default %(default)s)")
    p.add_argument("--nosync", action="store_true",
                   help="commit without fsync: faster writes; a killed process loses "
                        "nothing, a machine crash can lose the last commits")
    p.add_argument("--max-offers", type=int, default=100,
                   help="largest limit a Decide request may ask for (default %(default)s)")


def cmd_serve(args) -> int:
    from decision.server import serve_workers

    serve_workers(_settings(args, Path(args.data_dir), Path(args.catalog)))
    return 0


def cmd_floor(args) -> int:
    from decision.floor import serve_floor

    serve_floor(_settings(args, Path("."), Path(".")))
    return 0


def cmd_demo(args) -> int:
    from decision.demo import ensure_demo
    from decision.server import serve

    data_dir = Path(args.data_dir)
    print(f"decision demo: data in {data_dir.resolve()}", flush=True)
    started = time.perf_counter()
    catalog = ensure_demo(data_dir, args.customers, args.offers, progress=not args.quiet)
    print(f"decision demo: data ready in {time.perf_counter() - started:.1f} s", flush=True)
    settings = _settings(args, data_dir / "profiles", catalog)

    def ask_once(running) -> None:
        from decision.demo import customer_id

        address = f"{settings.address.rpartition(':')[0]}:{running.port}"
        who = customer_id(42)
        print(f"\n$ decision ask --address {address} --customer {who} --channel kiosk "
              "--context country=FR --context device=kiosk\n", flush=True)
        _ask(address, who, "customer_id", "kiosk", "", 3,
             {"country": "FR", "device": "kiosk"}, as_json=False)
        print(f"\nTry it yourself:\n  decision ask --address {address} --customer C0000007 "
              f"--channel web --placement home_hero --context device=mobile\n"
              f"  grpcurl -plaintext -d '{{\"customer\": {{\"value\": \"{who}\"}}, "
              f"\"channel\": \"app\"}}' {address} decision.v1.DecisionService/Decide\n",
              flush=True)
        if args.once:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            print("Serving until Ctrl-C.", flush=True)

    serve(settings, ready=ask_once)
    return 0


def _parse_context(items: list[str]) -> dict:
    """key=value pairs: numbers and true/false are typed, anything else is a string."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--context {item!r}: expected key=value")
        if raw in ("true", "false"):
            out[key] = raw == "true"
        else:
            try:
                out[key] = float(raw)
            except ValueError:
                out[key] = raw
    return out


def _ask(address: str, customer: str, kind: str, channel: str, placement: str, limit: int,
         context: dict, as_json: bool) -> int:
    import grpc
    from google.protobuf import json_format

    from decision.v1 import decision_pb2 as pb
    from decision.v1 import decision_pb2_grpc as pb_grpc

    def value(v):
        if isinstance(v, bool):
            return pb.Value(bool_value=v)
        if isinstance(v, float):
            return pb.Value(number_value=v)
        return pb.Value(string_value=v)

    request = pb.DecideRequest(
        customer=pb.Identifier(kind=kind, value=customer), channel=channel,
        placement=placement, limit=limit, context={k: value(v) for k, v in context.items()})
    with grpc.insecure_channel(address) as channel_:
        stub = pb_grpc.DecisionServiceStub(channel_)
        started = time.perf_counter()
        try:
            reply = stub.Decide(request, timeout=10)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        elapsed_ms = (time.perf_counter() - started) * 1000
    if as_json:
        print(json_format.MessageToJson(reply, preserving_proto_field_name=True))
        return 0
    print(render(reply, customer, channel, placement, elapsed_ms))
    return 0


def render(reply, customer: str, channel: str, placement: str, elapsed_ms: float) -> str:
    """A decision as a kiosk screen or a contact-center agent would read it."""
    where = channel + (f" / {placement}" if placement else "")
    who = customer + (" (new customer: no profile yet)" if reply.cold_start else "")
    lines = [f"Next best offers for {who} on {where}",
             f"{reply.eligible_count} offers eligible, best {len(reply.offers)} shown"]
    if not reply.offers:
        lines.append("  (no offer is eligible here and now)")
    for o in reply.offers:
        lines.append("")
        lines.append(f"  {o.rank}. {o.name}  [{o.offer_id}]")
        lines.append(f"     score {o.score:.2f} = propensity {o.propensity:.1%} x value "
                     f"{o.value:.2f} x lever {o.lever:g}")
        why = [r for r in o.reasons if r.code == "ELIGIBLE"]
        if why:
            lines.append(f"     eligible: {why[0].detail}")
        drivers = [f"{r.detail} ({r.weight:+.2f})" for r in o.reasons if r.code == "FEATURE"]
        if drivers:
            lines.append(f"     because: {', '.join(drivers)}")
        if any(r.code == "COLD_START" for r in o.reasons):
            lines.append("     because: no history yet, the model's prior")
        creative = json.loads(o.creative_json or "{}")
        if creative:
            lines.append("     shows: " + ", ".join(f"{k}={v}" for k, v in creative.items()))
    lines.append("")
    lines.append(f"decision {reply.decision_id}, catalog {reply.catalog_version}, "
                 f"answered in {elapsed_ms:.2f} ms")
    return "\n".join(lines)


def cmd_ask(args) -> int:
    return _ask(args.address, args.customer, args.kind, args.channel, args.placement,
                args.limit, _parse_context(args.context), args.json)


def cmd_backup(args) -> int:
    from decision.backup import backup

    started = time.perf_counter()
    summary = backup(args.data_dir, args.out)
    print(f"decision: backed up {args.data_dir} to {summary.path} in "
          f"{time.perf_counter() - started:.2f} s: {summary.line()}", flush=True)
    return 0


def cmd_restore(args) -> int:
    from decision.backup import restore

    summary = restore(args.backup, args.data_dir, force=args.force)
    print(f"decision: restored {args.backup} into {args.data_dir}: {summary.line()}",
          flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decision", description="Real-time next-best-offer server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve decisions over gRPC")
    serve.add_argument("--data-dir", required=True, help="the LMDB profile store (created if missing)")
    serve.add_argument("--catalog", required=True, help="the offer catalog (TOML)")
    _add_server_flags(serve)
    serve.set_defaults(run=cmd_serve)

    demo = sub.add_parser("demo", help="create a synthetic data set if missing, then serve it")
    demo.add_argument("--data-dir", default="demo-data", help="where the demo data lives "
                      "(default %(default)s)")
    demo.add_argument("--customers", type=int, default=100_000)
    demo.add_argument("--offers", type=int, default=500)
    demo.add_argument("--once", action="store_true",
                      help="stop after answering the example question")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_server_flags(demo)
    demo.set_defaults(run=cmd_demo)

    floor = sub.add_parser("floor", help="serve the same API with empty handlers, to measure "
                           "what the transport alone costs (benchmarks compare against it)")
    _add_server_flags(floor)
    floor.set_defaults(run=cmd_floor)

    ask = sub.add_parser("ask", help="ask a running server for one decision and print it")
    ask.add_argument("--address", default=DEFAULT_ADDRESS)
    ask.add_argument("--customer", required=True, help="the customer identifier value")
    ask.add_argument("--kind", default="customer_id", help="identifier kind (default %(default)s)")
    ask.add_argument("--channel", default="kiosk")
    ask.add_argument("--placement", default="")
    ask.add_argument("--limit", type=int, default=3)
    ask.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                     help="a context entry; repeat for several")
    ask.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    ask.set_defaults(run=cmd_ask)

    backup = sub.add_parser("backup", help="copy the profile store while servers keep "
                            "serving: one consistent snapshot, compacted")
    backup.add_argument("--data-dir", required=True, help="the LMDB profile store")
    backup.add_argument("out", help="a new directory for the copy (must not exist)")
    backup.set_defaults(run=cmd_backup)

    restore = sub.add_parser("restore", help="put a backup in place as a data directory's "
                             "store (no server may have it open)")
    restore.add_argument("backup", help="a directory written by 'decision backup'")
    restore.add_argument("--data-dir", required=True, help="where to restore the store")
    restore.add_argument("--force", action="store_true",
                         help="replace a store that is already there (it is lost)")
    restore.set_defaults(run=cmd_restore)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.run(args)
    except DecisionError as exc:
        print(f"decision: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
