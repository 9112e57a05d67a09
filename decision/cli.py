"""The ``decision`` command: serve, demo, ask, campaign, loadtest, floor, backup, restore,
models, records, simulate.

    decision serve --data-dir DIR --catalog FILE [--address H:P] [--workers N] [--threads T]
    decision demo  [--data-dir ./demo-data] [--customers 100000] [--offers 500] [--once]
    decision ask   --customer ID [--channel kiosk] [--placement P] [--context key=value ...]
    decision campaign --data-dir DIR --catalog FILE --segment S --channel C --out FILE
    decision loadtest [--address H:P] (--rate R | --concurrency C) [--mix decide=90,track=10]
                      [--floor] [--json FILE] [--plots DIR]
    decision backup --data-dir DIR OUT
    decision restore BACKUP --data-dir DIR [--force]
    decision models [--address H:P] [--offer ID] [--channel C]      (GetModel)
    decision records [--address H:P] (--decision-id ID | --since 10m) (GetDecisionRecords)
    decision simulate [--data-dir DIR | --server H:P] --steps N --seed S [--drift-after N]
    decision console [--server H:P] [--token-file F] [--tls-ca PEM] [--host 127.0.0.1]
                     [--port 8080]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
        limits=Limits(max_offers=args.max_offers, default_offers=min(5, args.max_offers),
                      max_context_entries=args.max_context_entries,
                      max_string_bytes=args.max_string_bytes,
                      max_attributes=args.max_attributes,
                      max_identifiers=args.max_identifiers,
                      max_events_per_message=args.max_events_per_message,
                      max_message_bytes=args.max_message_bytes),
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        credentials=args.credentials, allow_unauthenticated=args.allow_unauthenticated,
        max_in_flight=args.max_in_flight, metrics_address=args.metrics_address,
        log_format=args.log_format, access_log_sample=args.access_log_sample,
        port_file=getattr(args, "port_file", None),
    )


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="host:port to listen on; port 0 picks a free port (default %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port and the store (default %(default)s)")
    p.add_argument("--threads", type=int, default=8,
                   help="sizes a process: up to threads/2 WatchTriggers subscribers, and "
                        "4 x threads requests in flight unless --max-in-flight says "
                        "(default %(default)s)")
    p.add_argument("--map-size", type=int, default=1024, metavar="MIB",
                   help="initial LMDB map size in MiB; it doubles when full (default %(default)s)")
    p.add_argument("--identifier-kinds", default=",".join(DEFAULT_IDENTIFIER_KINDS),
                   metavar="KIND,KIND", help="the kinds of customer identifiers accepted "
                   "(default %(default)s)")
    p.add_argument("--nosync", action="store_true",
                   help="commit without fsync: faster writes; a killed process loses "
                        "nothing, a machine crash can lose the last commits")
    p.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="requests worked on at once per process; beyond, RESOURCE_EXHAUSTED "
                        "at once (default: 4 x --threads)")
    limits = p.add_argument_group("limits (over a limit: INVALID_ARGUMENT or "
                                  "RESOURCE_EXHAUSTED naming it)")
    defaults = Limits()
    limits.add_argument("--max-offers", type=int, metavar="N", default=defaults.max_offers,
                        help="largest limit a Decide request may ask for (default %(default)s)")
    limits.add_argument("--max-context-entries", type=int, metavar="N",
                        default=defaults.max_context_entries,
                        help="entries in a request context or event (default %(default)s)")
    limits.add_argument("--max-string-bytes", type=int, metavar="N",
                        default=defaults.max_string_bytes,
                        help="bytes per identifier, key and string value (default %(default)s)")
    limits.add_argument("--max-attributes", type=int, metavar="N", default=defaults.max_attributes,
                        help="attributes per profile (default %(default)s)")
    limits.add_argument("--max-identifiers", type=int, metavar="N",
                        default=defaults.max_identifiers,
                        help="identifiers per profile (default %(default)s)")
    limits.add_argument("--max-events-per-message", type=int, metavar="N",
                        default=defaults.max_events_per_message,
                        help="events in one TrackStream message (default %(default)s)")
    limits.add_argument("--max-message-bytes", type=int, metavar="N",
                        default=defaults.max_message_bytes,
                        help="gRPC message size, both directions (default %(default)s)")
    sec = p.add_argument_group("security (default: plaintext, no credentials, which is only "
                               "allowed on a loopback address)")
    sec.add_argument("--tls-cert", type=Path, metavar="PEM",
                     help="server certificate chain: serve TLS")
    sec.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    sec.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                     help="mutual TLS: require client certificates signed by this CA")
    sec.add_argument("--credentials", type=Path, metavar="TOML",
                     help="clients, tokens (or their sha256) and roles; every call must "
                          "send 'authorization: Bearer <token>'")
    sec.add_argument("--allow-unauthenticated", action="store_true",
                     help="serve a non-loopback address without --credentials")
    ops = p.add_argument_group("operations")
    ops.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics; with "
                          "--workers N, worker i uses PORT+i (default: off)")
    ops.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="text or JSON lines (default %(default)s)")
    ops.add_argument("--access-log-sample", type=float, default=0.0, metavar="FRACTION",
                     help="fraction of successful requests logged, one line each; failed "
                          "requests are always logged (default %(default)s)")
    ops.add_argument("--kernel-cache", metavar="DIR",
                     help="where the compiled kernels are kept across starts; sets "
                          "DECISION_KERNEL_CACHE (default: that variable, else "
                          "$XDG_CACHE_HOME/decision/kernels or ~/.cache/decision/kernels; "
                          "NUMBA_CACHE_DIR, if set, wins)")


def cmd_serve(args) -> int:
    from decision.logs import configure
    from decision.edge.supervisor import serve_workers

    # one process: it runs gRPC here, so its C core's stderr lines become JSON too;
    # with --workers each worker does that itself (they inherit this stderr)
    configure(args.log_format, capture_stderr=args.workers == 1)
    try:
        serve_workers(_settings(args, Path(args.data_dir), Path(args.catalog)))
    except DecisionError as exc:
        if args.log_format != "json":
            raise  # main prints it: "decision: <message>"
        logging.getLogger("decision").error("%s", exc)  # every line JSON, this one too
        return 2
    return 0


def cmd_floor(args) -> int:
    from decision.edge.floor import serve_floor

    serve_floor(_settings(args, Path("."), Path(".")))
    return 0


def cmd_demo(args) -> int:
    from decision.demo import ensure_demo
    from decision.logs import configure as configure_logs
    from decision.edge.server import serve

    data_dir = Path(args.data_dir)
    print(f"decision demo: data in {data_dir.resolve()}", flush=True)
    started = time.perf_counter()
    catalog = ensure_demo(data_dir, args.customers, args.offers, progress=not args.quiet)
    print(f"decision demo: data ready in {time.perf_counter() - started:.1f} s", flush=True)
    settings = _settings(args, data_dir / "profiles", catalog)
    if settings.workers > 1:
        raise SystemExit("decision demo runs one process; for --workers use "
                         "decision serve --data-dir DIR/profiles --catalog DIR/catalog.toml")
    configure_logs(args.log_format)
    secured = settings.credentials is not None or settings.tls_cert is not None

    def ask_once(running) -> None:
        from decision.demo import customer_id

        address = f"{settings.address.rpartition(':')[0]}:{running.port}"
        who = customer_id(42)
        if secured:  # the example would need a token or the CA: the user has them
            print(f"\ndecision demo: serving on {address} with credentials or TLS; ask with "
                  f"decision ask --address {address} --customer {who} --token ... "
                  "(and --tls-ca for TLS)\n", flush=True)
            if args.once:
                import signal
                os.kill(os.getpid(), signal.SIGTERM)
            return
        print(f"\n$ decision ask --address {address} --customer {who} --channel kiosk "
              "--context country=FR --context device=kiosk\n", flush=True)
        _ask(address, who, "customer_id", "kiosk", "", 3,
             {"country": "FR", "device": "kiosk"}, as_json=False, token=None, tls=None)
        print(f"\nTry it yourself:\n  decision ask --address {address} --customer C0000007 "
              f"--channel web --placement home_hero --context device=mobile\n"
              f"  grpcurl -plaintext -d '{{\"customer\": {{\"value\": \"{who}\"}}, "
              f"\"channel\": \"app\"}}' {address} decision.v1.DecisionService/Decide\n",
              flush=True)
        if args.once:
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


def _read_pem(flag: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"{flag} {path}: {exc.strerror}") from None


def _ask(address: str, customer: str, kind: str, channel: str, placement: str, limit: int,
         context: dict, as_json: bool, token: str | None,
         tls: tuple[bytes | None, bytes | None, bytes | None] | None,
         explain: bool = False) -> int:
    """``tls``: (root CA, client cert, client key) PEM bytes for a TLS server, or None."""
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
        placement=placement, limit=limit, context={k: value(v) for k, v in context.items()},
        explain=explain)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    if tls is None:
        channel_ = grpc.insecure_channel(address)
    else:
        root, cert, key = tls
        channel_ = grpc.secure_channel(address, grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert))
    with channel_:
        stub = pb_grpc.DecisionServiceStub(channel_)
        started = time.perf_counter()
        try:
            reply = stub.Decide(request, timeout=10, metadata=metadata)
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
    n = reply.policy_removed_count  # set only when no offer is left
    if not reply.offers and n:
        what = (f"all {n} offers whose rule held were removed by contact policies" if n > 1
                else "the one offer whose rule held was removed by a contact policy")
        listed = len(reply.removed)  # explain lists at most the server's maximum limit
        lines.append(f"  no offer: {what}"
                     + (" (ask again with --explain to see which)" if not listed else
                        f" (the first {listed} listed below)" if listed < n else ""))
    elif not reply.offers:
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
    if reply.timing and reply.timing != "now":
        from datetime import datetime, timezone

        at = datetime.fromtimestamp(reply.deliver_at_ms / 1000, tz=timezone.utc)
        lines.append("")
        lines.append(f"  deliver at {at:%Y-%m-%d %H:%M} UTC: {reply.timing}")
    for removed in reply.removed:
        lines.append(f"  removed {removed.offer_id}: {removed.reason.detail}")
    lines.append("")
    lines.append(f"decision {reply.decision_id}, catalog {reply.catalog_version}, "
                 f"answered in {elapsed_ms:.2f} ms")
    return "\n".join(lines)


def cmd_ask(args) -> int:
    if (args.client_cert is None) != (args.client_key is None):
        raise SystemExit("--client-cert and --client-key go together")
    tls = None
    if args.tls or args.tls_ca or args.client_cert:
        tls = (_read_pem("--tls-ca", args.tls_ca), _read_pem("--client-cert", args.client_cert),
               _read_pem("--client-key", args.client_key))
    return _ask(args.address, args.customer, args.kind, args.channel, args.placement,
                args.limit, _parse_context(args.context), args.json,
                token=args.token or os.environ.get("DECISION_TOKEN"), tls=tls,
                explain=args.explain)


def cmd_campaign(args) -> int:
    from decision.core.inspire import CampaignSpec, run_campaign
    from decision.core.engine import Engine

    settings = _settings(args, Path(args.data_dir), Path(args.catalog))
    engine = Engine(settings, publish=False)  # a batch job: serving state is not ours
    try:
        s = run_campaign(engine, CampaignSpec(args.segment, args.channel, args.placement,
                                              args.limit, _parse_context(args.context)),
                         Path(args.out), args.format, progress=not args.quiet)
    finally:
        engine.close()
    print(f"campaign {s.campaign_id}: {s.members} members of {args.segment}, {s.decided} with "
          f"an offer, {s.rows} rows written to {s.path} in {s.seconds:.1f} s "
          f"(catalog {s.catalog_version}"
          + (f"; {s.skipped} unreadable profiles skipped" if s.skipped else "") + ")")
    return 0


def cmd_loadtest(args) -> int:
    from decision.loadtest.cli import run

    return run(args, _parse_context)


def cmd_backup(args) -> int:
    from decision.store.backup import backup

    started = time.perf_counter()
    summary = backup(args.data_dir, args.out)
    print(f"decision: backed up {args.data_dir} to {summary.path} in "
          f"{time.perf_counter() - started:.2f} s: {summary.line()}", flush=True)
    return 0


def cmd_restore(args) -> int:
    from decision.store.backup import restore

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
    serve.add_argument("--port-file", metavar="PATH",
                       help="once serving, write the port (a number and a newline) to PATH, "
                            "atomically; removed at shutdown (for --address HOST:0)")
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
    ask.add_argument("--explain", action="store_true",
                     help="also list the offers a contact policy removed")
    ask.add_argument("--token", help="send 'authorization: Bearer TOKEN' (default: the "
                     "DECISION_TOKEN environment variable, which keeps it out of ps)")
    ask.add_argument("--tls", action="store_true",
                     help="connect with TLS, trusting the system's root certificates")
    ask.add_argument("--tls-ca", metavar="PEM",
                     help="connect with TLS, trusting this CA (implies --tls)")
    ask.add_argument("--client-cert", metavar="PEM", help="client certificate (mutual TLS)")
    ask.add_argument("--client-key", metavar="PEM", help="client private key (mutual TLS)")
    ask.set_defaults(run=cmd_ask)

    campaign = sub.add_parser("campaign", help="Inspire: decide for every member of a segment "
                              "on a channel and write the send file (CSV or JSON lines)")
    campaign.add_argument("--data-dir", required=True, help="the LMDB profile store")
    campaign.add_argument("--catalog", required=True, help="the offer catalog (TOML)")
    campaign.add_argument("--segment", required=True, help="whose members get a decision")
    campaign.add_argument("--channel", required=True, help="the (outbound) channel")
    campaign.add_argument("--placement", default="")
    campaign.add_argument("--limit", type=int, default=1, help="offers per customer "
                          "(default %(default)s)")
    campaign.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                          help="a context entry for every decision; repeat for several")
    campaign.add_argument("--out", required=True, help="the file to write (.csv or .jsonl)")
    campaign.add_argument("--format", default="", choices=["", "csv", "jsonl"],
                          help="csv or jsonl (default: from --out's extension)")
    campaign.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_server_flags(campaign)
    campaign.set_defaults(run=cmd_campaign)

    from decision.loadtest.cli import add_arguments

    loadtest = sub.add_parser(
        "loadtest", help="drive a server at a fixed rate (open loop) or concurrency (closed "
        "loop) and report latency percentiles, throughput and errors, optionally against "
        "the empty-handler floor")
    add_arguments(loadtest)
    loadtest.set_defaults(run=cmd_loadtest)
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

    from decision import insight  # models, records
    from decision.analytics import cli as analytics  # export, report, whatif
    from decision.console.cli import add_parser as add_console
    from decision.simulate import add_parser as add_simulate

    insight.add_parsers(sub)
    analytics.add_parsers(sub)
    add_simulate(sub)
    add_console(sub)
    return parser


def _kernel_cache_first(argv: list[str] | None) -> None:
    """``--kernel-cache DIR`` becomes ``DECISION_KERNEL_CACHE`` before anything imports
    the kernels (``build_parser`` does: numba fixes a kernel's cache directory when it
    compiles the module), and worker processes inherit it."""
    pre = argparse.ArgumentParser(prog="decision", add_help=False, allow_abbrev=False)
    pre.add_argument("--kernel-cache")
    wanted = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0].kernel_cache
    if wanted is None:
        return
    wanted = os.path.abspath(os.path.expanduser(wanted))
    if "kernels" in sys.modules and os.environ.get("DECISION_KERNEL_CACHE") != wanted:
        raise SystemExit("decision: --kernel-cache comes too late: the kernels are already "
                         "imported in this process; set DECISION_KERNEL_CACHE instead")
    if os.environ.get("NUMBA_CACHE_DIR"):
        print(f"decision: --kernel-cache ignored: NUMBA_CACHE_DIR="
              f"{os.environ['NUMBA_CACHE_DIR']} wins", file=sys.stderr)
    os.environ["DECISION_KERNEL_CACHE"] = wanted


def main(argv: list[str] | None = None) -> int:
    _kernel_cache_first(argv)
    args = build_parser().parse_args(argv)
    if (getattr(args, "kernel_cache", None) and os.environ.get("DECISION_KERNEL_CACHE")
            != os.path.abspath(os.path.expanduser(args.kernel_cache))):
        raise SystemExit("decision: write --kernel-cache in full (it is read before the "
                         "other flags)")
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
