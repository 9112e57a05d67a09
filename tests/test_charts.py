"""decision.analytics.charts: a small report and an empty one both render as valid PNGs."""

from __future__ import annotations

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pytest

from decision.analytics import charts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL = {"funnel.png", "lift.png", "revenue_by_channel.png", "attribution_channel.png",
       "attribution_offer.png"}


def _channel(key: str, decisions: int, impressions: int, clicks: int, conversions: int,
             revenue: float) -> dict:
    return {"key": key, "decisions": decisions, "impressions": impressions, "clicks": clicks,
            "conversions": conversions, "revenue": revenue,
            "ctr": clicks / impressions if impressions else None,
            "conversion_rate": conversions / decisions if decisions else None,
            "revenue_per_decision": revenue / decisions if decisions else None}


def _credit(conversions: float) -> dict:
    return {"conversions": conversions, "revenue": conversions * 40.0}


def _attribution_row(key: str, *conversions: float) -> dict:
    models = ("last_touch", "first_touch", "linear", "time_decay", "position", "markov",
              "shapley")
    credit = {m: _credit(c) for m, c in zip(models, conversions, strict=True)}
    return {"key": key, "touches": 100, **credit}


def _lift_row(arm: str, metric: str, difference: float, half: float, significant: bool,
              control: float) -> dict:
    return {"experiment": "nba", "arm": arm, "metric": metric,
            "arm_value": control + difference, "control_value": control,
            "difference": difference, "difference_ci": [difference - half, difference + half],
            "relative": difference / control, "relative_ci": [-0.1, 0.5],
            "p_value": 0.01 if significant else 0.4, "significant": significant,
            "n_arm": 4000, "n_control": 1000, "needed_per_group": 2500}


REPORT = {
    "range": {"from": "2026-12-01T00:00:00Z", "to": "2026-12-04T00:00:00Z",
              "from_ms": 1796083200000, "to_ms": 1796342400000},
    "by": {
        "channel": [_channel("web", 5000, 4200, 310, 42, 1680.0),
                    _channel("app", 3000, 2900, 150, 0, 0.0),  # no conversions: no bar
                    _channel("email", 800, 800, 25, 3, 95.5)],
        "day": [], "offer": [], "placement": [], "segment": [], "arm": [],
    },
    "revenue_by_channel_day": [
        {"day": "2026-12-01", "channel": "web", "revenue": 500.0},
        {"day": "2026-12-02", "channel": "web", "revenue": 610.0},
        {"day": "2026-12-03", "channel": "web", "revenue": 570.0},
        {"day": "2026-12-01", "channel": "email", "revenue": 40.0},
        {"day": "2026-12-03", "channel": "email", "revenue": 55.5},  # no revenue on the 2nd
    ],
    "lift": [
        _lift_row("learning", "response_rate", 0.02, 0.008, True, 0.10),
        _lift_row("rules", "response_rate", -0.004, 0.009, False, 0.10),
        _lift_row("learning", "revenue_per_decision", 0.05, 0.04, True, 0.30),
        {**_lift_row("rules", "revenue_per_decision", -0.01, 0.0, False, 0.30),
         "difference_ci": None, "p_value": None},  # no interval: a hollow point
    ],
    "attribution": {
        "channel": {"rows": [_attribution_row("web", 30, 20, 25, 27, 24, 26, 25),
                             _attribution_row("email", 15, 25, 20, 18, 21, 19, 20)]},
        "offer": {"rows": [_attribution_row("card", 20, 18, 19, 20, 19, 19, 19),
                           _attribution_row("loan", 25, 27, 26, 25, 26, 26, 26)]},
    },
}

EMPTY = {
    "range": {"from": "2026-12-01T00:00:00Z", "to": "2026-12-02T00:00:00Z",
              "from_ms": 1796083200000, "to_ms": 1796169600000},
    "by": {"channel": [], "day": [], "offer": [], "placement": [], "segment": [], "arm": []},
    "revenue_by_channel_day": [],
    "lift": [],
    "attribution": {"channel": {"rows": []}, "offer": {"rows": []}},
}


def _check_png(path) -> None:
    """A PNG by its signature, that matplotlib reads back at a readable size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    height, width, _ = mpimg.imread(path).shape
    assert 600 <= width <= 2000 and 300 <= height <= 2000, (path.name, width, height)


@pytest.mark.parametrize("report", [REPORT, EMPTY], ids=["small", "empty"])
def test_write_all_writes_readable_pngs(tmp_path, report):
    before = plt.get_fignums()
    paths = charts.write_all(report, tmp_path / "charts")
    assert set(paths) == ALL
    for name, path in paths.items():
        assert path == tmp_path / "charts" / name
        _check_png(path)
    assert plt.get_fignums() == before  # every figure closed after saving


def test_offer_attribution_only_when_the_report_has_it(tmp_path):
    report = {**REPORT, "attribution": {"channel": REPORT["attribution"]["channel"]}}
    paths = charts.write_all(report, tmp_path)
    assert set(paths) == ALL - {"attribution_offer.png"}
    assert not (tmp_path / "attribution_offer.png").exists()


def test_a_report_without_its_parts_still_renders(tmp_path):
    # only a range: no "by", no "lift", no "attribution" at all
    paths = charts.write_all({"range": EMPTY["range"]}, tmp_path)
    assert set(paths) == ALL - {"attribution_offer.png"}
    for path in paths.values():
        _check_png(path)


def test_many_offers_and_days(tmp_path):
    # 40 offers (the chart keeps the 15 most credited) and 60 days (thinned date labels)
    days = [f"2026-{10 + d // 30:02d}-{1 + d % 30:02d}" for d in range(60)]
    report = {
        "revenue_by_channel_day": [{"day": day, "channel": ch, "revenue": 10.0 + i}
                                   for i, day in enumerate(days) for ch in ("web", "app")],
        "attribution": {"offer": {"rows": [_attribution_row(f"offer-{i}", *[i] * 7)
                                           for i in range(40)]}},
    }
    _check_png(charts.revenue_by_channel(report, tmp_path / "revenue.png"))
    _check_png(charts.attribution(report, tmp_path / "offers.png", by="offer"))


def test_each_chart_returns_its_path_and_creates_the_directory(tmp_path):
    path = tmp_path / "deep" / "funnel.png"
    assert charts.funnel(REPORT, path) == path
    _check_png(path)
    assert charts.lift(EMPTY, str(tmp_path / "lift.png")) == tmp_path / "lift.png"
