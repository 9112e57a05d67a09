"""``decision export``, ``decision report`` and ``decision whatif``.

    decision export --data-dir DIR [--out DIR --from T --to T]
    decision report --data-dir DIR [--from T --to T] [--by offer,channel,...]
                    [--json FILE] [--charts DIR] [--lookback 30d] [--half-life 7d]
    decision report [--address HOST:PORT] ...   (the same, asked of a server: GetReport;
                                                 --token, --tls-ca as for decision models)
    decision whatif --data-dir DIR --catalog candidate.toml [--reward click] [--from T]

T: an ISO date or time (UTC unless it says otherwise: 2026-12-01, 2026-12-01T08:00),
epoch milliseconds, or a duration back from now (7d, 12h). The store is read beside
the servers that use it (LMDB readers never block them); the export the report reads
is kept up to date in ``DIR/exports``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from decision.analytics.export import ExportError, export
from decision.insight import call, connection_args

DEFAULT_LOOKBACK, DEFAULT_HALF_LIFE = "30d", "7d"


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms of an ISO date/time (UTC by default), epoch ms, or a duration ago."""
    from decision.config.timing import duration_ms
    from decision.errors import CatalogError

    text = text.strip()
    if text == "now":
        return now_ms
    if text.isdigit():
        if int(text) < 100_000_000_000 and int(text) != 0:  # before 1973: not epoch ms
            raise ExportError(f"time {text!r}: digits are epoch milliseconds (13 digits "
                              f"today); for a date write 2026-12-01")
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return now_ms - duration_ms(text, "time")
        except CatalogError:
            raise ExportError(f"time {text!r}: an ISO date or time (2026-12-01, "
                              f"2026-12-01T08:00Z), epoch ms, or a duration ago (7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _range(args) -> tuple[int, int]:
    now_ms = int(time.time() * 1000)
    start = parse_time(args.start, now_ms) if args.start else 0
    end = parse_time(args.end, now_ms) if args.end else now_ms + 1
    return start, end


def _duration(text: str, flag: str, allow_zero: bool = False) -> int:
    """Milliseconds of a duration option, or ExportError naming the option."""
    from decision.config.timing import duration_ms
    from decision.errors import CatalogError

    try:
        return duration_ms(text, flag, allow_zero=allow_zero)
    except CatalogError as exc:
        raise ExportError(str(exc)) from None


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="decision records and outcomes as Parquet files")
    p.add_argument("--data-dir", required=True, help="the store's directory")
    p.add_argument("--out", help="a directory of its own for a time range (default: the "
                                 "incremental export in DATA_DIR/exports)")
    _range_args(p)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("report", help="what the decisions earned: rates, lift against "
                                      "the control group, attribution, charts")
    p.add_argument("--data-dir", help="the store's directory (read here), or:")
    connection_args(p)  # --address: ask a server instead (GetReport, role report)
    _range_args(p)
    p.add_argument("--by", default="offer,channel,placement,segment,arm,day",
                   help="dimensions (default %(default)s)")
    p.add_argument("--lookback", default=DEFAULT_LOOKBACK, help="attribution look-back "
                   "window (default %(default)s)")
    p.add_argument("--half-life", default=DEFAULT_HALF_LIFE, help="time-decay attribution "
                   "half-life (default %(default)s)")
    p.add_argument("--label", default="click", choices=("click", "conversion"),
                   help="the response a decision's response rate counts")
    p.add_argument("--no-attribution", action="store_true")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--charts", metavar="DIR", help="write PNG charts there")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("whatif", help="what a candidate catalog would have earned "
                                      "(off-policy evaluation of the records)")
    p.add_argument("--data-dir", required=True, help="the store's directory")
    p.add_argument("--catalog", required=True, metavar="TOML", help="the candidate catalog")
    _range_args(p)
    p.add_argument("--reward", default="click", choices=("click", "conversion", "revenue"))
    p.add_argument("--replicates", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="write the estimate as JSON")
    p.set_defaults(run=cmd_whatif)


def _range_args(p) -> None:
    p.add_argument("--settle", default="5s", metavar="DURATION", help="decisions of the "
                   "last DURATION wait for the next export, their records may be in flight "
                   "(default %(default)s; 0s when no server writes the store)")
    p.add_argument("--from", dest="start", metavar="T", help="from (default: the first "
                   "record)")
    p.add_argument("--to", dest="end", metavar="T", help="until, excluded (default: now)")


def _fail(exc: Exception) -> int:
    print(f"decision: {exc}", file=sys.stderr)
    return 2


def _store(data_dir: str):
    from decision.store.database import ProfileStore

    path = Path(data_dir)
    if not (path / "data.mdb").exists():
        raise ExportError(f"--data-dir {path}: no store there (data.mdb)")
    return ProfileStore(path)


def _settle(args) -> int:
    return _duration(args.settle, "--settle", allow_zero=True)


def managed_export(store, args) -> Path:
    """Bring the store's own export (``DATA_DIR/exports``) up to date; its path."""
    directory = Path(args.data_dir) / "exports"
    export(store, directory, settle_ms=_settle(args))
    return directory


def cmd_export(args) -> int:
    try:
        store = _store(args.data_dir)
        if args.out:
            start, end = _range(args)
            done = export(store, Path(args.out), from_ms=start, to_ms=end,
                          settle_ms=_settle(args))
        else:
            if args.start or args.end:
                raise ExportError("--from / --to export a range to a directory of its own: "
                                  "add --out DIR")
            done = export(store, Path(args.data_dir) / "exports", settle_ms=_settle(args))
    except ExportError as exc:
        return _fail(exc)
    rows = ", ".join(f"{k} {v:,}" for k, v in done.rows.items())
    print(f"decision export: {done.directory}: {rows}; {done.erased:,} erased rows removed; "
          f"{done.seconds:.2f} s")
    return 0


def cmd_report(args) -> int:
    from decision.analytics import report as rep

    try:
        start, end = _range(args)
        lookback = _duration(args.lookback, "--lookback")
        half_life = _duration(args.half_life, "--half-life")
        request = rep.ReportRequest(
            start, end, tuple(d.strip() for d in args.by.split(",") if d.strip()),
            lookback, half_life, args.label, not args.no_attribution)
        rep.check(request)
        if args.data_dir is None:
            out = _ask(args, request)
        else:
            store = _store(args.data_dir)
            out = rep.report(managed_export(store, args), request)
    except ExportError as exc:
        return _fail(exc)
    print(rep.render(out))
    written = []
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        written.append(args.json)
    if args.charts:
        from decision.analytics import charts

        written += [str(p) for p in charts.write_all(out, Path(args.charts)).values()]
    if written:
        print("written: " + ", ".join(written))
    return 0


def _ask(args, request) -> dict:
    """The report of a server (GetReport) instead of a store read here."""
    import grpc

    from decision.v1 import decision_pb2 as pb

    try:
        reply = call(args, "GetReport", pb.ReportRequest(
            from_ms=request.from_ms, to_ms=request.to_ms, dimensions=list(request.dimensions),
            lookback_ms=request.lookback_ms, half_life_ms=request.half_life_ms,
            label=request.label, attribution=request.attribution), timeout=600)
    except grpc.RpcError as exc:
        raise ExportError(f"{args.address}: {exc.code().name}: {exc.details()}") from None
    return json.loads(reply.json)


def cmd_whatif(args) -> int:
    from decision.analytics import whatif as wi
    from decision.config.catalog import load_catalog
    from decision.errors import CatalogError

    try:
        start, end = _range(args)
        try:
            candidate = load_catalog(args.catalog)
        except (CatalogError, OSError) as exc:
            raise ExportError(f"--catalog {args.catalog}: does not load: {exc}") from None
        store = _store(args.data_dir)
        out = wi.whatif(managed_export(store, args), candidate, store,
                        wi.WhatIfRequest(start, end, args.reward, args.replicates, args.seed))
    except ExportError as exc:
        return _fail(exc)
    print(wi.render(out))
    if args.json:
        keep = {k: v for k, v in out.items() if k not in ("target_p", "decision_ids")}
        Path(args.json).write_text(json.dumps(keep, indent=1) + "\n")
        print(f"written: {args.json}")
    return 0
