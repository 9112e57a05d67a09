"""The results view's figures: the server's report (``GetReport``) as plain data.

``parse_range`` reads the page's query (a preset, or a from/to in UTC) into a time
range; ``plan_buckets`` cuts that range into the time buckets of the learning curves
(one per day when the range's decisions span 2 to 14 days, else 6 equal buckets over
the part of the range that holds decisions); ``results_view`` turns the report's JSON,
its charts and the per-bucket reports into what ``results.html`` lays out.

The learning curves: per experiment, each arm's response rate in each bucket, from the
bucket's own report. The rate is the report's lift figure (decisions that got a
response, a click or a conversion as the report's label says, over decisions), and the
control group's is its ``control_value``; in a bucket where an arm has no lift row (no
control decisions there), it is the arm's clicks (conversions) per decision.

As ``views``: no HTML is built here; Jinja2 escapes every string the template prints.
The curves' geometry (SVG coordinates) is computed here, as numbers.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from decision.console.views import format_number

DAY_MS = 86_400_000
#: the range presets the page offers: name -> (label, length in ms)
PRESETS = {"24h": ("Last 24 h", DAY_MS), "7d": ("Last 7 days", 7 * DAY_MS),
           "30d": ("Last 30 days", 30 * DAY_MS)}
DEFAULT_PRESET = "7d"
LABELS = ("click", "conversion")
#: equal buckets of the learning curves when not one per day
CURVE_BUCKETS = 6
MAX_DAY_BUCKETS = 14
#: the attribution models, in the report's keys -> column titles
ATTRIBUTION_MODELS = (("last_touch", "Last touch"), ("first_touch", "First touch"),
                      ("linear", "Linear"), ("time_decay", "Time decay"),
                      ("position", "Position"), ("markov", "Markov"), ("shapley", "Shapley"))
#: the charts shown, in the report's names -> their alternative text
CHARTS = {"funnel.png": "Funnel per channel: decisions, impressions, clicks, conversions",
          "revenue_by_channel.png": "Revenue per channel and day",
          "lift.png": "Lift of each arm against the control group, with 95% intervals",
          "attribution_channel.png": "Conversions credited to each channel by seven models"}
#: the curves' colours, one per arm in order; the control group is drawn grey and dashed
PALETTE = ("#3b4fd8", "#11845b", "#c2410c", "#9333ea", "#0e7490", "#b4323a", "#a16207")
CONTROL_COLOUR = "#717b8f"
#: the curve plot's size and margins, in SVG user units
PLOT_W, PLOT_H = 720, 260
PAD_L, PAD_R, PAD_T, PAD_B = 52, 16, 14, 34


class RangeError(ValueError):
    """A range the page cannot ask for, with what to fix."""


@dataclass(frozen=True)
class Range:
    from_ms: int
    to_ms: int  #: excluded
    preset: str  #: a key of PRESETS, or "custom"
    label: str  #: the response counted: click or conversion
    from_value: str  #: for the form's inputs (datetime-local, UTC)
    to_value: str

    @property
    def text(self) -> str:
        return f"{format_instant(self.from_ms)} – {format_instant(self.to_ms)}"


def _parse_instant(name: str, raw: str, end: bool) -> int:
    """A UTC date or date-time (ISO 8601) in ms; a date alone as a ``to`` means the end
    of that day (the range then includes it)."""
    text = raw.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise RangeError(f"{name}: '{raw}' is not a date (YYYY-MM-DD) or a date and time "
                         "(YYYY-MM-DDTHH:MM, UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if end and len(text) == 10:  # a day: up to its end
        when += timedelta(days=1)
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        raise RangeError(f"{name}: '{raw}' is before 1970")
    return ms


def input_value(ms: int) -> str:
    """A datetime-local input's value for ``ms`` (UTC), to the second."""
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S" if when.second or when.microsecond
                         else "%Y-%m-%dT%H:%M")


def format_instant(ms: int) -> str:
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if when.microsecond:
        return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d} UTC"
    return when.strftime("%Y-%m-%d %H:%M:%S" if when.second else "%Y-%m-%d %H:%M") + " UTC"


def parse_range(params, now_ms: int) -> Range:
    """The page's query as a range: ``range`` (24h, 7d, 30d) ends now; otherwise
    ``from`` and ``to`` (UTC; an empty ``from`` is the beginning, an empty ``to`` now).
    ``label``: click (default) or conversion. ``RangeError`` names what to fix."""
    label = (params.get("label") or "click").strip()
    if label not in LABELS:
        raise RangeError(f"response: '{label}' is not one of {', '.join(LABELS)}")
    raw_from, raw_to = (params.get("from") or "").strip(), (params.get("to") or "").strip()
    preset = (params.get("range") or "").strip()
    if not preset:
        preset = "custom" if raw_from or raw_to else DEFAULT_PRESET
    if preset in PRESETS:
        to_ms = now_ms - now_ms % 1000  # to the second: the page shows it
        from_ms = max(0, to_ms - PRESETS[preset][1])
    elif preset == "custom":
        from_ms = _parse_instant("From", raw_from, end=False) if raw_from else 0
        to_ms = _parse_instant("To", raw_to, end=True) if raw_to else now_ms
    else:
        raise RangeError(f"range: '{preset}' is not one of {', '.join(PRESETS)} or custom")
    if to_ms <= from_ms:
        raise RangeError(f"The range {format_instant(from_ms)} – {format_instant(to_ms)} is "
                         "empty or inverted: give a To after the From.")
    return Range(from_ms, to_ms, preset, label, input_value(from_ms) if from_ms else "",
                 input_value(to_ms))


# ---------------------------------------------------------------------------- buckets
@dataclass(frozen=True)
class Bucket:
    from_ms: int
    to_ms: int
    label: str  #: the x axis's tick
    title: str  #: the whole span, for a tooltip


def _day_start(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def plan_buckets(rng: Range, days: list[str]) -> tuple[list[Bucket], str]:
    """The learning curves' first buckets over ``rng`` and their kind ("day" or
    "equal"): ``days`` are the report's days (UTC, YYYY-MM-DD) that hold decisions. One
    per day when they span 2 to 14 days; else ``CURVE_BUCKETS`` equal buckets over the
    range cut to those days (which ``zoom`` may narrow further)."""
    if not days:
        return [], "equal"
    first, last = _day_start(min(days)), _day_start(max(days)) + DAY_MS
    lo, hi = max(rng.from_ms, first), min(rng.to_ms, last)
    if hi <= lo:
        return [], "equal"
    span_days = (last - first) // DAY_MS
    if 2 <= span_days <= MAX_DAY_BUCKETS:
        out = []
        for start in range(first, last, DAY_MS):
            a, b = max(lo, start), min(hi, start + DAY_MS)
            if a < b:
                day = datetime.fromtimestamp(start / 1000, tz=UTC)
                out.append(Bucket(a, b, day.strftime("%b %d"), f"{format_instant(a)} – "
                                                                f"{format_instant(b)}"))
        return out, "day"
    return split(lo, hi), "equal"


def split(lo: int, hi: int, n: int = CURVE_BUCKETS) -> list[Bucket]:
    """[lo, hi) in ``n`` equal buckets (fewer when it is shorter than ``n`` ms)."""
    n = max(1, min(n, hi - lo))
    edges = [lo + (hi - lo) * k // n for k in range(n + 1)]
    return [Bucket(a, b, _tick(a, hi - lo), f"{format_instant(a)} – {format_instant(b)}")
            for a, b in itertools.pairwise(edges)]


def decisions_in(report: dict) -> int:
    return int((report.get("totals") or {}).get("decisions") or 0)


def zoom(buckets: list[Bucket], reports: list[dict]) -> tuple[int, int] | None:
    """Where to cut equal buckets again: the span of the buckets that hold decisions,
    when fewer than 3 do and that span is narrower than the buckets' (the decisions of
    a wide range are all in a few hours: their curve gets its points); else None."""
    held = [b for b, r in zip(buckets, reports) if decisions_in(r)]
    if not held or len(held) >= 3:
        return None
    lo, hi = held[0].from_ms, held[-1].to_ms
    if (lo, hi) == (buckets[0].from_ms, buckets[-1].to_ms) or hi - lo < CURVE_BUCKETS:
        return None
    return lo, hi


def _tick(ms: int, width_ms: int) -> str:
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if width_ms >= 3 * DAY_MS:
        return when.strftime("%b %d %H:%M")
    if width_ms >= 6 * 60_000:
        return when.strftime("%H:%M")
    return when.strftime("%H:%M:%S") + (f".{when.microsecond // 100_000}"
                                        if width_ms < 60_000 else "")


# ---------------------------------------------------------------------------- the view
@dataclass(frozen=True)
class Figure:
    name: str
    value: str
    sub: str = ""


@dataclass(frozen=True)
class FunnelRow:
    channel: str
    decisions: int
    impressions: int
    clicks: int
    conversions: int
    revenue: float
    ctr: str
    conversion_rate: str


@dataclass(frozen=True)
class LiftRow:
    experiment: str
    arm: str
    metric: str
    arm_value: str
    control_value: str
    difference: str
    ci: str
    relative: str
    significant: bool
    direction: str  #: up, down or flat: the colour of a significant difference
    p_value: str
    n_arm: int
    n_control: int
    needed: str


@dataclass(frozen=True)
class AttributionRow:
    key: str
    touches: int
    conversions: list[str]  #: per model, in ATTRIBUTION_MODELS order
    revenue: list[str]


@dataclass(frozen=True)
class Attribution:
    rows: list[AttributionRow]
    conversions: int
    attributed: int
    unattributed: int
    lookback: str
    half_life: str
    grouped: list[str]


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    rate: str
    n: int
    bucket: str


@dataclass(frozen=True)
class Series:
    arm: str
    colour: str
    control: bool
    path: str  #: the SVG path's ``d``: a line through the points, gaps left open
    points: list[Point]
    overall: str  #: the rate over all the buckets, for the legend
    decisions: int  #: the arm's decisions over all the buckets


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Curves:
    experiment: str
    series: list[Series]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    width: int = PLOT_W
    height: int = PLOT_H
    left: int = PAD_L
    right: int = PLOT_W - PAD_R
    top: int = PAD_T
    bottom: int = PLOT_H - PAD_B


@dataclass(frozen=True)
class CurvesView:
    curves: list[Curves]
    buckets: int
    kind: str  #: "day" or "equal"
    span: str  #: from the first bucket's start to the last one's end


@dataclass(frozen=True)
class ResultsView:
    range: Range
    empty: bool
    totals: list[Figure]
    funnel: list[FunnelRow]
    funnel_total: FunnelRow | None
    lift: list[LiftRow]
    attribution: Attribution | None
    query: str  #: the pinned range as a query string: the charts' and curves' URLs
    charts: dict[str, str] = field(default_factory=lambda: dict(CHARTS))  #: name -> alt


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}" if abs(x) >= 0.001 or x == 0 else f"{x:.3%}"


def _money(x) -> str:
    return "–" if x is None else f"{x:,.2f}"


def _rate(part: int, whole: int) -> str:
    return _pct(part / whole) if whole else "–"


def _duration(ms: int) -> str:
    if ms % DAY_MS == 0:
        return f"{ms // DAY_MS} d"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    return f"{ms / 1000:,.0f} s"


def _funnel_row(channel: str, f: dict) -> FunnelRow:
    decisions, impressions = int(f.get("decisions") or 0), int(f.get("impressions") or 0)
    clicks, conversions = int(f.get("clicks") or 0), int(f.get("conversions") or 0)
    return FunnelRow(channel, decisions, impressions, clicks, conversions,
                     float(f.get("revenue") or 0.0), _rate(clicks, impressions),
                     _rate(conversions, impressions))


def _lift_row(r: dict) -> LiftRow:
    rate = r.get("metric") == "response_rate"

    def value(x) -> str:
        return "–" if x is None else _pct(x) if rate else _money(x)

    def diff(x) -> str:
        if x is None:
            return "–"
        return f"{100 * x:+.2f} pp" if rate else f"{x:+,.2f}"

    lo, hi = (r.get("difference_ci") or [None, None])[:2]
    ci = "–" if lo is None or hi is None else (
        f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if rate else f"[{lo:+,.2f}, {hi:+,.2f}]")
    rel = r.get("relative")
    d = r.get("difference") or 0.0
    needed = r.get("needed_per_group")
    p = r.get("p_value")
    return LiftRow(
        experiment=str(r.get("experiment", "")), arm=str(r.get("arm", "")),
        metric="Response rate" if rate else "Revenue per decision" if r.get(
            "metric") == "revenue_per_decision" else str(r.get("metric", "")),
        arm_value=value(r.get("arm_value")), control_value=value(r.get("control_value")),
        difference=diff(r.get("difference")), ci=ci,
        relative="–" if rel is None else f"{rel:+.1%}",
        significant=bool(r.get("significant")),
        direction="up" if d > 0 else "down" if d < 0 else "flat",
        p_value="–" if p is None else f"{p:.3f}" if p >= 0.001 else "< 0.001",
        n_arm=int(r.get("n_arm") or 0), n_control=int(r.get("n_control") or 0),
        needed=f"{int(needed):,}" if needed else "–")


def _attribution(a: dict | None) -> Attribution | None:
    if not a:
        return None
    rows = []
    for r in a.get("rows", []):
        rows.append(AttributionRow(
            key=str(r.get("key", "")), touches=int(r.get("touches") or 0),
            conversions=[f"{(r.get(m) or {}).get('conversions', 0.0):,.2f}"
                         for m, _ in ATTRIBUTION_MODELS],
            revenue=[_money((r.get(m) or {}).get("revenue", 0.0))
                     for m, _ in ATTRIBUTION_MODELS]))
    return Attribution(rows, int(a.get("conversions") or 0), int(a.get("attributed") or 0),
                       int(a.get("unattributed") or 0),
                       _duration(int(a.get("lookback_ms") or 0)),
                       _duration(int(a.get("half_life_ms") or 0)),
                       [str(g) for g in a.get("grouped", [])])


def _arm_rates(report: dict) -> dict[str, tuple[float, int]]:
    """One bucket's report: ``experiment/arm`` -> (response rate, decisions)."""
    out: dict[str, tuple[float, int]] = {}
    for r in report.get("lift", []):
        if r.get("metric") != "response_rate" or not r.get("experiment"):
            continue
        e = r["experiment"]
        if r.get("arm_value") is not None:
            out[f"{e}/{r['arm']}"] = (float(r["arm_value"]), int(r.get("n_arm") or 0))
        if r.get("control_value") is not None:
            out[f"{e}/control"] = (float(r["control_value"]), int(r.get("n_control") or 0))
    response = "conversions" if report.get("label") == "conversion" else "clicks"
    for row in (report.get("by") or {}).get("arm", []):
        key, n = str(row.get("key", "")), int(row.get("decisions") or 0)
        if "/" in key and key not in out and n:
            out[key] = (min(1.0, int(row.get(response) or 0) / n), n)
    return out


def _nice_top(x: float) -> float:
    """The y axis's top: the next of 1, 2, 2.5, 5 x 10^k at or above ``x`` (at least 1%)."""
    x = max(x, 0.01)
    scale = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * scale >= x - 1e-12:
            return min(1.0, m * scale)
    return 1.0


def curves_view(buckets: list[Bucket], reports: list[dict]) -> list[Curves]:
    """Per experiment, each arm's response rate per bucket, as SVG geometry."""
    rates = [_arm_rates(r) for r in reports]
    experiments: dict[str, dict[str, int]] = {}
    for per in rates:
        for key, (_, n) in per.items():
            e, _, arm = key.partition("/")
            experiments.setdefault(e, {})
            experiments[e][arm] = experiments[e].get(arm, 0) + n
    out = []
    n_b = len(buckets)
    x0, x1 = PAD_L + 14, PLOT_W - PAD_R - 14
    y0, y1 = PLOT_H - PAD_B, PAD_T

    def x_at(i: int) -> float:
        return round(x0 + (x1 - x0) * (i / (n_b - 1) if n_b > 1 else 0.5), 1)

    for e in sorted(experiments):
        arms = sorted(experiments[e], key=lambda a: (a == "control", -experiments[e][a], a))
        top = _nice_top(max((per[f"{e}/{a}"][0] for per in rates for a in arms
                             if f"{e}/{a}" in per), default=0.0))

        def y_at(rate: float, top: float = top) -> float:
            return round(y0 - (y0 - y1) * rate / top, 1)

        series, colour = [], 0
        for arm in arms:
            key = f"{e}/{arm}"
            points, path, pen_down = [], [], False
            for i, (b, per) in enumerate(zip(buckets, rates)):
                if key not in per:
                    pen_down = False
                    continue
                rate, n = per[key]
                p = Point(x_at(i), y_at(rate), _pct(rate), n, b.title)
                points.append(p)
                path.append(f"{'L' if pen_down else 'M'}{p.x},{p.y}")
                pen_down = True
            control = arm == "control"
            n_all = sum(p.n for p in points)
            responses = sum(per[key][0] * per[key][1] for per in rates if key in per)
            series.append(Series(
                arm, CONTROL_COLOUR if control else PALETTE[colour % len(PALETTE)], control,
                " ".join(path), points, _pct(responses / n_all) if n_all else "–", n_all))
            colour += 0 if control else 1
        y_ticks = [Tick(y_at(top * k / 4), _pct(top * k / 4)) for k in range(5)]
        every = max(1, math.ceil(n_b / 8))
        x_ticks = [Tick(x_at(i), b.label) for i, b in enumerate(buckets) if i % every == 0]
        out.append(Curves(e, series, x_ticks, y_ticks))
    return out


def results_view(rng: Range, report: dict) -> ResultsView:
    totals = report.get("totals") or {}
    decisions = int(totals.get("decisions") or 0)
    impressions = int(totals.get("impressions") or 0)
    clicks, conversions = int(totals.get("clicks") or 0), int(totals.get("conversions") or 0)
    revenue = float(totals.get("revenue") or 0.0)
    funnel = report.get("funnel") or {}
    figures = [
        Figure("Decisions", format_number(decisions),
               f"on {len(funnel)} channel{'s' if len(funnel) != 1 else ''}" if funnel else ""),
        Figure("Impressions", format_number(impressions),
               f"{_rate(impressions, decisions)} of decisions" if decisions else ""),
        Figure("Clicks", format_number(clicks), f"CTR {_rate(clicks, impressions)}"),
        Figure("Conversions", format_number(conversions),
               f"{_rate(conversions, impressions)} of impressions"),
        Figure("Revenue", _money(revenue),
               f"{_money(revenue / decisions)} per decision" if decisions else ""),
    ]
    rows = sorted((_funnel_row(str(c), f) for c, f in funnel.items()),
                  key=lambda r: (-r.decisions, r.channel))
    total = _funnel_row("All channels", {k: totals.get(k) for k in (
        "decisions", "impressions", "clicks", "conversions", "revenue")}) if rows else None
    return ResultsView(
        range=rng, empty=decisions == 0, totals=figures, funnel=rows, funnel_total=total,
        lift=[_lift_row(r) for r in report.get("lift", [])],
        attribution=_attribution((report.get("attribution") or {}).get("channel")),
        query=pinned_query(rng))


def curves_page(buckets: list[Bucket], kind: str, reports: list[dict]) -> CurvesView:
    return CurvesView(
        curves=curves_view(buckets, reports), buckets=len(buckets), kind=kind,
        span=(f"{format_instant(buckets[0].from_ms)} – {format_instant(buckets[-1].to_ms)}"
              if buckets else ""))


def pinned_query(rng: Range) -> str:
    """The range as exact milliseconds: what the page's charts and curves ask for, so
    that they show the decisions its tables show."""
    return urlencode({"from_ms": rng.from_ms, "to_ms": rng.to_ms, "label": rng.label})


def parse_pinned(params) -> Range:
    """A range given in exact milliseconds (``pinned_query``); ``RangeError`` else."""
    try:
        from_ms, to_ms = int(params.get("from_ms", "")), int(params.get("to_ms", ""))
    except ValueError:
        raise RangeError("from_ms and to_ms: whole milliseconds since 1970") from None
    label = params.get("label") or "click"
    if label not in LABELS:
        raise RangeError(f"label: one of {', '.join(LABELS)}")
    if from_ms < 0 or to_ms <= from_ms:
        raise RangeError("from_ms must be at least 0 and before to_ms")
    return Range(from_ms, to_ms, "custom", label, input_value(from_ms), input_value(to_ms))


def parse_report(text: str) -> dict:
    """ReportReply.json as a dict ({} when it is not an object)."""
    data = json.loads(text or "{}")
    return data if isinstance(data, dict) else {}
