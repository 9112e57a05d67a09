"""PNG charts of an ROI report: the funnel, the lift against control, revenue over time, and
attribution by model.

Each chart function reads the report dict (the JSON ``decision report`` writes), draws one
figure, writes it as a PNG and returns its path. A part of the report that is empty (no
control group, no days, no conversions) gives a chart that says so rather than an error, so
a report over a quiet range still renders. matplotlib (Agg backend, no display needed) is
imported only when a chart is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
#: figure widths grow with what they show, within these bounds (inches)
MIN_WIDTH, MAX_WIDTH = 8.0, 15.0
#: the funnel's stages, in order, as the report's per-channel counts
FUNNEL_STAGES = ("decisions", "impressions", "clicks", "conversions")
#: the lift chart's panels: the report's metric name -> its axis title
LIFT_METRICS = {"response_rate": "Response rate", "revenue_per_decision": "Revenue per decision"}
#: the attribution models, in the report's keys -> their legend labels
ATTRIBUTION_MODELS = {"last_touch": "last touch", "first_touch": "first touch",
                      "linear": "linear", "time_decay": "time decay", "position": "position",
                      "markov": "Markov", "shapley": "Shapley"}
#: the attribution chart shows at most this many keys (the most credited)
ATTRIBUTION_TOP = 15
SIGNIFICANT_UP, SIGNIFICANT_DOWN, NOT_SIGNIFICANT = "tab:green", "tab:red", "0.45"


def _pyplot() -> ModuleType:
    """pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _figure(path: Path, width: float, height: float) -> Iterator[Figure]:
    """A figure that is saved to ``path`` when the block ends, and closed in any case."""
    plt = _pyplot()
    fig = plt.figure(figsize=(width, height), layout="constrained")
    try:
        yield fig
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def _width(per_item: float, items: int, fixed: float = 2.0) -> float:
    """A figure width for ``items`` groups along x, kept between MIN_WIDTH and MAX_WIDTH."""
    return min(MAX_WIDTH, max(MIN_WIDTH, fixed + per_item * items))


def _when(timestamp: str) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC' (as given when it is not ISO)."""
    try:
        moment = datetime.fromisoformat(timestamp).astimezone(UTC)
    except ValueError:
        return timestamp
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _range_label(report: dict) -> str:
    """The report's time range as a subtitle ('' when the report has none)."""
    span = report.get("range") or {}
    start, end = span.get("from"), span.get("to")
    return f"{_when(start)} to {_when(end)}" if start and end else ""


def _title(fig: Figure, title: str, report: dict) -> None:
    """The figure's title, with the report's range under it."""
    subtitle = _range_label(report)
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=13)


def _say_empty(ax: Axes, message: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="0.35",
            wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _count(row: dict, key: str) -> float:
    """A numeric field of a report row; 0 when missing or None."""
    return float(row.get(key) or 0)


def funnel(report: dict, path: Path) -> Path:
    """Per channel, grouped bars of decisions, impressions, clicks and conversions.

    A log scale, since each stage is often an order of magnitude below the one before;
    each bar is labelled with its count.
    """
    path = Path(path)
    rows = (report.get("by") or {}).get("channel") or []
    counts = np.array([[_count(row, stage) for stage in FUNNEL_STAGES] for row in rows])
    with _figure(path, _width(2.2, len(rows)), 5.5) as fig:
        ax = fig.subplots()
        _title(fig, "Funnel by channel", report)
        if not rows or not counts.any():
            _say_empty(ax, "No decisions in this range")
            return path
        _funnel_bars(ax, [str(row.get("key")) for row in rows], counts)
    return path


def _funnel_bars(ax: Axes, channels: list[str], counts: np.ndarray) -> None:
    """The funnel's grouped bars on a log scale; stages at 0 are left out (no log of 0)."""
    x = np.arange(len(channels))
    width = 0.8 / len(FUNNEL_STAGES)
    for j, stage in enumerate(FUNNEL_STAGES):
        shown = counts[:, j] > 0
        bars = ax.bar(x[shown] + (j - 1.5) * width, counts[shown, j], width, label=stage)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in counts[shown, j]], fontsize=8,
                     padding=2)
    ax.set_yscale("log")
    ax.set_ylim(0.8, counts.max() * 4)  # room above the tallest bar for its label
    ax.set_xticks(x, channels)
    ax.set_xlabel("channel")
    ax.set_ylabel("count (log scale)")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(True, axis="y", which="major", alpha=0.3)


def lift(report: dict, path: Path) -> Path:
    """For each metric (response rate, revenue per decision), each arm's difference from the
    control as a point with its interval, a zero line, the significant ones in colour.

    Without a control group there is no lift: the chart says so in its title and panels.
    """
    path = Path(path)
    rows = report.get("lift") or []
    arms = max((sum(r.get("metric") == m for r in rows) for m in LIFT_METRICS), default=0)
    with _figure(path, 12.0, max(4.0, 2.0 + 0.7 * arms)) as fig:
        axes = fig.subplots(1, len(LIFT_METRICS))
        if rows:
            _title(fig, "Lift against the control group (green/red: significant)", report)
        else:
            _title(fig, "Lift: no control group in this range", report)
        for ax, (metric, label) in zip(axes, LIFT_METRICS.items(), strict=True):
            ax.set_title(label, fontsize=12)
            metric_rows = [r for r in rows if r.get("metric") == metric]
            if metric_rows:
                _lift_panel(ax, metric_rows)
            else:
                _say_empty(ax, "No control group to compare with:\n"
                               "lift needs decisions held out as control")
    return path


def _lift_colour(row: dict) -> str:
    """Green for a significant gain, red for a significant loss, grey otherwise."""
    if not row.get("significant"):
        return NOT_SIGNIFICANT
    return SIGNIFICANT_UP if row["difference"] > 0 else SIGNIFICANT_DOWN


def _lift_label(row: dict) -> str:
    """An arm's axis label: experiment, arm, and the decisions behind the comparison."""
    experiment, arm = row.get("experiment", ""), row.get("arm", "")
    name = f"{experiment}: {arm}" if experiment else f"{arm} (no experiment)"
    return (f"{name}\n"
            f"n = {int(row.get('n_arm') or 0):,} vs {int(row.get('n_control') or 0):,}")


def _lift_note(row: dict) -> str:
    """The relative lift and p-value beside a point, where the report has them, or that
    the report has no interval (too few decisions, or no spread, to estimate one)."""
    parts = []
    if row.get("relative") is not None:
        parts.append(f"{row['relative']:+.1%}")
    if row.get("p_value") is not None:
        parts.append(f"p = {row['p_value']:.3g}")
    if row.get("difference_ci") is None:
        parts.append("no interval")
    return ", ".join(parts)


def _lift_panel(ax: Axes, rows: list[dict]) -> None:
    """One metric's arms: the difference with its interval as an error bar (a hollow point
    where the report has no interval), and a line at zero (no difference)."""
    for y, row in enumerate(rows):
        difference, ci = row["difference"], row.get("difference_ci")
        colour = _lift_colour(row)
        if ci is None:
            ax.plot([difference], [y], "o", color=colour, mfc="none", ms=8)
        else:
            ax.errorbar([difference], [y], xerr=[[difference - ci[0]], [ci[1] - difference]],
                        fmt="o", color=colour, ms=8, capsize=5, lw=2)
        ax.annotate(_lift_note(row), (difference, y), xytext=(0, 9),
                    textcoords="offset points", ha="center", fontsize=9, color=colour,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.axvline(0.0, color="black", lw=1)
    ax.margins(x=0.25)  # room at the sides for the notes above the outermost points
    ax.set_yticks(range(len(rows)), [_lift_label(row) for row in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # first arm on top, room for its note
    ax.set_xlabel("difference from control (arm - control), with interval")
    ax.grid(True, axis="x", alpha=0.3)


def revenue_by_channel(report: dict, path: Path) -> Path:
    """Revenue per day, one line (with markers) per channel."""
    path = Path(path)
    rows = report.get("revenue_by_channel_day") or []
    days = sorted({str(r["day"]) for r in rows})
    channels = sorted({str(r["channel"]) for r in rows})
    with _figure(path, _width(0.45, len(days)), 5.0) as fig:
        ax = fig.subplots()
        _title(fig, "Revenue per day by channel", report)
        if not rows:
            _say_empty(ax, "No revenue in this range")
            return path
        revenue = np.zeros((len(channels), len(days)))  # a day without a row earned 0
        for r in rows:
            revenue[channels.index(str(r["channel"])), days.index(str(r["day"]))] += \
                _count(r, "revenue")
        x = np.arange(len(days))
        for channel, values in zip(channels, revenue, strict=True):
            ax.plot(x, values, marker="o", label=channel)
        step = max(1, len(days) // 20)  # at most about 20 date labels
        ax.set_xticks(x[::step], days[::step], rotation=45, ha="right")
        ax.set_xlabel("day (UTC)")
        ax.set_ylabel("revenue")
        ax.set_ylim(bottom=0)
        ax.legend(title="channel", fontsize=9)
        ax.grid(True, alpha=0.3)
    return path


def attribution(report: dict, path: Path, by: str = "channel") -> Path:
    """Conversions credited to each key (channel, offer, ...) by each attribution model:
    one group of bars per key, one bar per model, for the most credited keys."""
    path = Path(path)
    rows = ((report.get("attribution") or {}).get(by) or {}).get("rows") or []
    credit = np.array([[_count(row.get(m) or {}, "conversions") for m in ATTRIBUTION_MODELS]
                       for row in rows]).reshape(len(rows), len(ATTRIBUTION_MODELS))
    top = np.argsort(-credit.max(axis=1), kind="stable")[:ATTRIBUTION_TOP]
    title = f"Conversions credited by {by}, per attribution model"
    if len(rows) > ATTRIBUTION_TOP:
        title += f" (top {ATTRIBUTION_TOP} of {len(rows)})"
    with _figure(path, _width(1.3, len(top)), 5.5) as fig:
        ax = fig.subplots()
        _title(fig, title, report)
        if not credit.any():
            _say_empty(ax, "No conversions to attribute in this range")
            return path
        _attribution_bars(ax, [str(rows[i].get("key")) for i in top], credit[top], by)
    return path


def _attribution_bars(ax: Axes, keys: list[str], credit: np.ndarray, by: str) -> None:
    """Grouped bars: per key, one bar per attribution model."""
    x = np.arange(len(keys))
    width = 0.85 / len(ATTRIBUTION_MODELS)
    for j, label in enumerate(ATTRIBUTION_MODELS.values()):
        offset = (j - (len(ATTRIBUTION_MODELS) - 1) / 2) * width
        ax.bar(x + offset, credit[:, j], width, label=label)
    ax.set_xticks(x, keys, rotation=30 if len(keys) > 6 else 0,
                  ha="right" if len(keys) > 6 else "center")
    ax.set_xlabel(by)
    ax.set_ylabel("conversions credited")
    ax.legend(title="model", fontsize=9, ncols=2)
    ax.grid(True, axis="y", alpha=0.3)


def write_all(report: dict, directory: Path) -> dict[str, Path]:
    """All the report's charts into ``directory``, by file name: ``funnel.png``, ``lift.png``,
    ``revenue_by_channel.png``, ``attribution_channel.png``, and ``attribution_offer.png``
    when the report attributes by offer."""
    directory = Path(directory)
    charts = {
        "funnel.png": funnel(report, directory / "funnel.png"),
        "lift.png": lift(report, directory / "lift.png"),
        "revenue_by_channel.png": revenue_by_channel(report,
                                                     directory / "revenue_by_channel.png"),
        "attribution_channel.png": attribution(report, directory / "attribution_channel.png",
                                               by="channel"),
    }
    if "offer" in (report.get("attribution") or {}):
        charts["attribution_offer.png"] = attribution(
            report, directory / "attribution_offer.png", by="offer")
    return charts
