"""``decision report``: what the decisions earned, over a time range.

Read with DuckDB from the Parquet export (``decision.analytics.export``). A decision
belongs to the range by its time; its outcomes count with it whenever they came (a
cohort: the rates of a range do not change with the day the report is run, only grow
as late responses arrive).

Per decision: ``impressions`` (offers of it impressed, each once), ``clicks`` (offers
clicked, each once), ``conversions`` (conversion events), ``revenue`` (their revenue),
and whether it got a response (the learning label, a click by default). Per group (by
offer, channel, placement, segment, experiment arm, day): decisions, impressions,
clicks, conversions, revenue, CTR = clicks / impressions, conversion rate =
conversions / impressions, revenue per decision. By offer, a decision counts for every
offer it showed, with that offer's outcomes. By segment, a decision counts for every
segment its customer was in at the decision's time (the segment changes the trigger
log recorded), and for ``(none)`` when in none.

Lift: every experiment arm against the control group of the same experiment (the
decisions of the universal control group on that experiment's channels), for the
response rate per decision and the revenue per decision: the difference with its 95%
interval, the relative lift, a significance flag and the decisions each group needs
(``decision.analytics.stats``).

Attribution: conversions credited over the impressions that preceded them for the same
customer, across merged identities (``decision.analytics.attribution``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from decision.analytics import attribution, stats
from decision.analytics.export import TABLES, ExportError, check_range

DIMENSIONS = ("offer", "channel", "placement", "segment", "arm", "day")
METRICS = ("decisions", "impressions", "clicks", "conversions", "revenue", "ctr",
           "conversion_rate", "revenue_per_decision")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class ReportRequest:
    from_ms: int
    to_ms: int
    dimensions: tuple[str, ...] = DIMENSIONS
    lookback_ms: int = 30 * DAY_MS
    half_life_ms: int = 7 * DAY_MS
    label: str = "click"
    attribution: bool = True


def check(request: ReportRequest) -> None:
    """ExportError naming what to fix: an empty or inverted range, an unknown
    dimension, a look-back or half-life that is not positive."""
    check_range(request.from_ms, request.to_ms)
    unknown = [d for d in request.dimensions if d not in DIMENSIONS]
    if unknown:
        raise ExportError(f"unknown dimension {unknown[0]!r}: the report groups by "
                          f"{', '.join(DIMENSIONS)}")
    if request.lookback_ms <= 0 or request.half_life_ms <= 0:
        raise ExportError("--lookback and --half-life must be positive durations")
    if request.label not in ("click", "conversion"):
        raise ExportError(f"label {request.label!r}: click or conversion")


def connect(directory: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per exported table (empty where no part file
    exists yet)."""
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    for name, schema in TABLES.items():
        parts = sorted((Path(directory) / name).glob("part-*.parquet"))
        if parts:
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{files}])")
        else:
            cols = ", ".join(f"NULL::{_sql_type(f.type)} AS {f.name}" for f in schema)
            con.execute(f"CREATE VIEW {name} AS SELECT {cols} WHERE false")
    return con


def _sql_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_list(t):
        return "FLOAT[]"
    return {"string": "VARCHAR", "int64": "BIGINT", "uint64": "UBIGINT", "int32": "INTEGER",
            "int16": "SMALLINT", "double": "DOUBLE", "bool": "BOOLEAN",
            "binary": "BLOB"}[str(t)]


def _prepare(con: duckdb.DuckDBPyConnection, request: ReportRequest) -> None:
    """``d``: the range's decisions with their per-decision outcome figures; ``so``:
    one row per offer shown with that offer's figures; ``customers``: profile keys as
    the customers they are now (after merges)."""
    label = request.label
    con.execute(f"""
        CREATE TEMP TABLE d AS
        WITH o AS (
            SELECT decision_id,
                   count(DISTINCT offer_id) FILTER (WHERE kind = 'impression') AS impressions,
                   count(DISTINCT offer_id) FILTER (WHERE kind = 'click') AS clicks,
                   count(*) FILTER (WHERE kind = 'conversion') AS conversions,
                   coalesce(sum(revenue) FILTER (WHERE kind = 'conversion'), 0) AS revenue,
                   count(*) FILTER (WHERE kind = '{label}') > 0 AS responded
            FROM outcomes GROUP BY decision_id)
        SELECT d.decision_id, d.decided_ms, d.profile_key, d.channel, d.placement,
               d.experiment, d.arm,
               strftime(make_timestamp(d.decided_ms * 1000), '%Y-%m-%d') AS day,
               coalesce(o.impressions, 0) AS impressions, coalesce(o.clicks, 0) AS clicks,
               coalesce(o.conversions, 0) AS conversions, coalesce(o.revenue, 0) AS revenue,
               coalesce(o.responded, false)::INTEGER AS responded
        FROM decisions d LEFT JOIN o USING (decision_id)
        WHERE d.decided_ms >= {request.from_ms} AND d.decided_ms < {request.to_ms}""")
    con.execute("""
        CREATE TEMP TABLE so AS
        WITH o AS (
            SELECT decision_id, offer_id,
                   count(*) FILTER (WHERE kind = 'impression') > 0 AS impressed,
                   count(*) FILTER (WHERE kind = 'click') > 0 AS clicked,
                   count(*) FILTER (WHERE kind = 'conversion') AS conversions,
                   coalesce(sum(revenue) FILTER (WHERE kind = 'conversion'), 0) AS revenue
            FROM outcomes GROUP BY decision_id, offer_id)
        SELECT s.offer_id, coalesce(o.impressed, false)::INTEGER AS impressions,
               coalesce(o.clicked, false)::INTEGER AS clicks,
               coalesce(o.conversions, 0) AS conversions, coalesce(o.revenue, 0) AS revenue
        FROM shown s SEMI JOIN d USING (decision_id)
        LEFT JOIN o ON o.decision_id = s.decision_id AND o.offer_id = s.offer_id""")
    con.execute("""
        CREATE TEMP TABLE customers AS
        SELECT merged AS profile_key, arg_max(survivor, at_ms) AS customer
        FROM (SELECT DISTINCT * FROM merges) GROUP BY merged""")


_SUMS = ("count(*) AS decisions, sum(impressions) AS impressions, sum(clicks) AS clicks, "
         "sum(conversions) AS conversions, sum(revenue) AS revenue")


def _rows(con, sql: str) -> list[dict]:
    """Group rows as dicts with the derived rates."""
    cur = con.execute(sql)
    names = [c[0] for c in cur.description]
    out = []
    for values in cur.fetchall():
        row = dict(zip(names, values))
        for k in ("decisions", "impressions", "clicks", "conversions"):
            row[k] = int(row[k] or 0)
        row["revenue"] = round(float(row["revenue"] or 0.0), 6)
        row["ctr"] = row["clicks"] / row["impressions"] if row["impressions"] else None
        row["conversion_rate"] = (row["conversions"] / row["impressions"]
                                  if row["impressions"] else None)
        row["revenue_per_decision"] = (row["revenue"] / row["decisions"]
                                       if row["decisions"] else None)
        out.append(row)
    return out


def _by(con, dimension: str) -> list[dict]:
    if dimension == "offer":
        return _rows(con, f"SELECT offer_id AS key, {_SUMS} FROM so GROUP BY 1 "
                          "ORDER BY revenue DESC, decisions DESC, key")
    if dimension == "segment":
        return _rows(con, f"""
            WITH changes AS (
                SELECT profile_key, segment, entered, at_ms,
                       lead(at_ms) OVER (PARTITION BY profile_key, segment ORDER BY at_ms)
                           AS until_ms
                FROM (SELECT DISTINCT * FROM segments)),
            spans AS (SELECT profile_key, segment, at_ms, coalesce(until_ms, 9e18) AS until_ms
                      FROM changes WHERE entered),
            member AS (
                SELECT s.segment AS key, d.* FROM d JOIN spans s
                  ON d.profile_key = s.profile_key AND d.decided_ms >= s.at_ms
                 AND d.decided_ms < s.until_ms),
            alone AS (SELECT '(none)' AS key, d.* FROM d
                      WHERE decision_id NOT IN (SELECT decision_id FROM member))
            SELECT key, {_SUMS} FROM (SELECT * FROM member UNION ALL SELECT * FROM alone)
            GROUP BY key ORDER BY decisions DESC, key""")
    column = {"channel": "channel", "day": "day",
              "placement": "CASE WHEN placement = '' THEN '(default)' ELSE placement END",
              "arm": "CASE WHEN experiment = '' THEN arm ELSE experiment || '/' || arm END"}
    order = "key" if dimension == "day" else "decisions DESC, key"
    return _rows(con, f"SELECT {column[dimension]} AS key, {_SUMS} FROM d GROUP BY 1 "
                      f"ORDER BY {order}")


def _lift(con) -> list[dict]:
    """Each experiment arm against the control group on the same experiment."""
    groups = con.execute("""
        SELECT experiment, arm, count(*), sum(responded), sum(revenue), sum(revenue * revenue)
        FROM d GROUP BY ALL ORDER BY experiment, arm""").fetchall()
    control = {e: (n, r, v, v2) for e, a, n, r, v, v2 in groups if a == "control"}
    out = []
    for experiment, arm, n, responded, revenue, revenue_sq in groups:
        if arm == "control" or experiment not in control:
            continue
        cn, cr, cv, cv2 = control[experiment]
        for metric, a, c in (
                ("response_rate", stats.Sample(n, float(responded), float(responded)),
                 stats.Sample(cn, float(cr), float(cr))),
                ("revenue_per_decision", stats.Sample(n, float(revenue), float(revenue_sq)),
                 stats.Sample(cn, float(cv), float(cv2)))):
            out.append({"experiment": experiment, "arm": arm or "(default)",
                        "metric": metric, **stats.lift(a, c)})
    return out


def _attribution(con, request: ReportRequest) -> dict:
    """Attribution by channel and by offer over the range's impressions and
    conversions, customers followed across merges."""
    con.execute("""
        CREATE TEMP TABLE touch_events AS
        SELECT coalesce(c.customer, k.key)::UBIGINT AS customer, o.at_ms, d.channel,
               o.offer_id AS offer, o.kind, o.revenue
        FROM outcomes o JOIN d USING (decision_id)
        CROSS JOIN LATERAL (SELECT CASE WHEN d.profile_key <> 0 THEN d.profile_key
                                        ELSE o.profile_key END AS key) k
        LEFT JOIN customers c ON c.profile_key = k.key
        WHERE o.kind IN ('impression', 'conversion')""")
    con.execute("CREATE TEMP VIEW touches AS SELECT customer, at_ms, channel, offer "
                "FROM touch_events WHERE kind = 'impression'")
    con.execute("CREATE TEMP VIEW conversions AS SELECT customer, at_ms, revenue "
                "FROM touch_events WHERE kind = 'conversion'")
    return {by: attribution.attribute(con, "touches", "conversions",
                                      lookback_ms=request.lookback_ms,
                                      half_life_ms=request.half_life_ms, by=by)
            for by in ("channel", "offer")}


def report(directory: Path, request: ReportRequest) -> dict:
    """The report over an export directory, as a JSON-ready dict."""
    check(request)
    con = connect(directory)
    try:
        _prepare(con, request)
        first, last = con.execute("SELECT min(decided_ms), max(decided_ms) FROM d").fetchone()
        shown_from = first if request.from_ms == 0 and first is not None else request.from_ms
        out = {"range": {"from": iso(shown_from), "to": iso(request.to_ms),
                         "from_ms": request.from_ms, "to_ms": request.to_ms,
                         "first_decision": None if first is None else iso(first),
                         "last_decision": None if last is None else iso(last)},
               "label": request.label,
               "totals": (_rows(con, f"SELECT 'all' AS key, {_SUMS} FROM d") or [{}])[0],
               "by": {dim: _by(con, dim) for dim in request.dimensions}}
        out["totals"].pop("key", None)
        channels = out["by"].get("channel") or _by(con, "channel")
        out["funnel"] = {r["key"]: {k: r[k] for k in ("decisions", "impressions", "clicks",
                                                      "conversions", "revenue")}
                         for r in channels}
        out["revenue_by_channel_day"] = [
            {"day": day, "channel": channel, "revenue": round(float(revenue), 6)}
            for day, channel, revenue in con.execute(
                "SELECT day, channel, sum(revenue) FROM d GROUP BY ALL ORDER BY ALL"
            ).fetchall()]
        out["lift"] = _lift(con)
        if request.attribution:
            out["attribution"] = _attribution(con, request)
        return out
    finally:
        con.close()


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def render(out: dict) -> str:
    """The report as terminal tables."""
    lines = [(f"decision report {out['range']['from']} .. {out['range']['to']} "
              f"(response = {out['label']})"), ""]
    head = ("decisions", "impressions", "clicks", "conversions", "revenue", "CTR", "conv.",
            "rev/decision")

    def table(title: str, rows: list[dict]) -> None:
        width = max([len(title)] + [len(str(r.get("key", ""))) for r in rows])
        lines.append(f"{title:<{width}}  " + "  ".join(f"{h:>12}" for h in head))
        for r in rows:
            cells = [f"{r['decisions']:>12,}", f"{r['impressions']:>12,}",
                     f"{r['clicks']:>12,}", f"{r['conversions']:>12,}",
                     f"{r['revenue']:>12,.2f}", _pct(r["ctr"]), _pct(r["conversion_rate"]),
                     f"{r['revenue_per_decision']:>12.4f}" if r["revenue_per_decision"]
                     is not None else f"{'-':>12}"]
            lines.append(f"{r.get('key', 'all')!s:<{width}}  " + "  ".join(cells))
        lines.append("")

    table("total", [out["totals"]] if out["totals"].get("decisions") else [])
    for dim, rows in out["by"].items():
        table(dim, rows)
    if out["lift"]:
        lines.append("lift against the control group (95% CI)")
        lines.append(f"{'experiment/arm':<24} {'metric':<21} {'arm':>10} {'control':>10} "
                     f"{'difference [95% CI]':>30} {'relative':>9} {'sig.':>4} "
                     f"{'n arm':>8} {'n ctrl':>8} {'n needed':>9}")
        for r in out["lift"]:
            lo, hi = r["difference_ci"]
            rel = f"{r['relative']:+.1%}" if r["relative"] is not None else "-"
            need = f"{r['needed_per_group']:,}" if r["needed_per_group"] else "-"
            lines.append(
                f"{(r['experiment'] + '/' if r['experiment'] else '') + r['arm']:<24} "
                f"{r['metric']:<21} {r['arm_value']:>10.4f} {r['control_value']:>10.4f} "
                f"{r['difference']:>+10.4f} [{lo:+.4f}, {hi:+.4f}] {rel:>9} "
                f"{'yes' if r['significant'] else 'no':>4} {r['n_arm']:>8,} "
                f"{r['n_control']:>8,} {need:>9}")
        lines.append("")
    for by, a in (out.get("attribution") or {}).items():
        lines.append(f"attribution by {by}: {a['attributed']:,} of {a['conversions']:,} "
                     f"conversions have touches (look-back {a['lookback_ms'] // 1000:,} s); "
                     "conversions credited")
        models = attribution.MODELS
        width = max([len(by)] + [len(r["key"]) for r in a["rows"]])
        lines.append(f"{by:<{width}}  " + "  ".join(f"{m:>11}" for m in models))
        for r in a["rows"]:
            lines.append(f"{r['key']:<{width}}  " + "  ".join(
                f"{r[m]['conversions']:>11.2f}" for m in models))
        lines.append("")
    return "\n".join(lines)


def _pct(x) -> str:
    return f"{x:>12.2%}" if x is not None else f"{'-':>12}"
