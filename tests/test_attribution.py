"""Multi-touch attribution (decision.analytics.attribution), checked against hand arithmetic.

Every expected figure is worked out in the comment beside it, from the definitions in the
module's docstring. Touches and conversions are small in-memory DuckDB tables; the last test
times one million touches.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from decision.analytics.attribution import MODELS, attribute

DAY_MS = 86_400_000


def make_con(touches: list[tuple], conversions: list[tuple]) -> duckdb.DuckDBPyConnection:
    """A connection with tables ``t`` (customer, at_ms, channel, offer) and ``c``
    (customer, at_ms, revenue) holding the given rows."""
    con = duckdb.connect()
    con.register("touch_rows", pa.table(
        [pa.array(column, type=kind) for column, kind in zip(
            zip(*touches) if touches else [[]] * 4,
            (pa.uint64(), pa.int64(), pa.string(), pa.string()))],
        names=["customer", "at_ms", "channel", "offer"]))
    con.register("conversion_rows", pa.table(
        [pa.array(column, type=kind) for column, kind in zip(
            zip(*conversions) if conversions else [[]] * 3,
            (pa.uint64(), pa.int64(), pa.float64()))],
        names=["customer", "at_ms", "revenue"]))
    con.execute("CREATE TABLE t AS SELECT * FROM touch_rows")
    con.execute("CREATE TABLE c AS SELECT * FROM conversion_rows")
    return con


def rows_by_key(result: dict) -> dict[str, dict]:
    return {row["key"]: row for row in result["rows"]}


def credits(result: dict, model: str, what: str = "conversions") -> dict[str, float]:
    return {row["key"]: row[model][what] for row in result["rows"]}


def assert_credits(result: dict, model: str, expected: dict[str, float],
                   what: str = "conversions") -> None:
    got = credits(result, model, what)
    assert got == pytest.approx(expected, abs=1e-9), f"{model} {what}"


# --- the rule-based models on one three-touch path -------------------------------------------

@pytest.fixture
def three_touches() -> dict:
    """web (t=0) -> email (t=10) -> app (t=20), then a conversion at t=30 worth 100."""
    con = make_con([(1, 0, "web", "o1"), (1, 10, "email", "o2"), (1, 20, "app", "o3")],
                   [(1, 30, 100.0)])
    return attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)


def test_three_touch_path_totals(three_touches):
    r = three_touches
    assert (r["conversions"], r["revenue"], r["attributed"], r["unattributed"]) == (1, 100.0, 1, 0)
    assert (r["converting_paths"], r["non_converting_paths"], r["grouped"]) == (1, 0, [])
    # one touch each; sorted by last-touch conversions (app 1, then email 0 and web 0 by key)
    assert [(row["key"], row["touches"]) for row in r["rows"]] == [
        ("app", 1), ("email", 1), ("web", 1)]
    assert all(set(MODELS) <= set(row) for row in r["rows"])
    assert json.loads(json.dumps(r)) == r


def test_three_touch_path_rule_based(three_touches):
    r = three_touches
    assert_credits(r, "last_touch", {"web": 0, "email": 0, "app": 1})
    assert_credits(r, "first_touch", {"web": 1, "email": 0, "app": 0})
    assert_credits(r, "linear", {"web": 1 / 3, "email": 1 / 3, "app": 1 / 3})
    # half-life 10, ages 30, 20, 10: weights 2^-3, 2^-2, 2^-1 = 1/8, 1/4, 1/2 (sum 7/8),
    # normalised: 1/7, 2/7, 4/7
    assert_credits(r, "time_decay", {"web": 1 / 7, "email": 2 / 7, "app": 4 / 7})
    assert_credits(r, "time_decay", {"web": 100 / 7, "email": 200 / 7, "app": 400 / 7},
                   "revenue")
    # three touches: 40% first, 20% to the middle one, 40% last
    assert_credits(r, "position", {"web": 0.4, "email": 0.2, "app": 0.4})
    assert_credits(r, "position", {"web": 40, "email": 20, "app": 40}, "revenue")


def test_position_with_two_touches_and_with_four():
    con = make_con(
        # customer 1: two touches, 50/50
        [(1, 0, "web", "o"), (1, 1, "email", "o"),
         # customer 2: four touches: 40% web, 20% split over sms and push (10% each), 40% app
         (2, 0, "web", "o"), (2, 1, "sms", "o"), (2, 2, "push", "o"), (2, 3, "app", "o")],
        [(1, 5, 10.0), (2, 5, 10.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    # web: 0.5 (customer 1) + 0.4 (customer 2)
    assert_credits(r, "position", {"web": 0.9, "email": 0.5, "sms": 0.1, "push": 0.1,
                                   "app": 0.4})


# --- paths: the window, one conversion per touch, ties, unattributed --------------------------

def test_lookback_excludes_an_older_touch():
    # the conversion at t=100 looks back 50 ms: [50, 100]; the web touch at t=49 is outside,
    # email at t=50 is on the boundary (inside), app at t=100 coincides with it (inside)
    con = make_con([(1, 49, "web", "o"), (1, 50, "email", "o"), (1, 100, "app", "o")],
                   [(1, 100, 80.0)])
    r = attribute(con, "t", "c", lookback_ms=50, half_life_ms=10)
    assert "web" not in rows_by_key(r)
    assert_credits(r, "first_touch", {"email": 1, "app": 0})
    assert_credits(r, "linear", {"email": 40, "app": 40}, "revenue")
    # web is before the (only) conversion, so it is on no path at all, not a non-converting one
    assert (r["attributed"], r["non_converting_paths"]) == (1, 0)


def test_a_touch_serves_one_conversion_only():
    # web (t=0) and email (t=10) precede the first conversion (t=10); sms (t=20) only the
    # second (t=30). Without the rule, the second conversion's 100 ms window would take all.
    con = make_con([(1, 0, "web", "o"), (1, 10, "email", "o"), (1, 20, "sms", "o")],
                   [(1, 10, 5.0), (1, 30, 7.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert (r["conversions"], r["attributed"], r["revenue"]) == (2, 2, 12.0)
    assert_credits(r, "last_touch", {"web": 0, "email": 1, "sms": 1})
    assert_credits(r, "linear", {"web": 0.5, "email": 0.5, "sms": 1})
    assert_credits(r, "linear", {"web": 2.5, "email": 2.5, "sms": 7}, "revenue")


def test_a_touch_without_a_key_is_ignored():
    con = make_con([(1, 0, "web", "o"), (1, 1, None, "o")], [(1, 5, 1.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert [(row["key"], row["touches"]) for row in r["rows"]] == [("web", 1)]
    assert_credits(r, "last_touch", {"web": 1})


def test_touches_at_the_same_time_are_ordered_by_key():
    # web and app both at t=5: the path is app, web (key order), so app is first, web last
    con = make_con([(1, 5, "web", "o"), (1, 5, "app", "o")], [(1, 9, 1.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert_credits(r, "first_touch", {"app": 1, "web": 0})
    assert_credits(r, "last_touch", {"app": 0, "web": 1})


def test_conversion_without_touches_is_unattributed():
    con = make_con([(1, 0, "web", "o")],
                   # customer 1 converts (web's conversion); customer 2 has no touches;
                   # customer 1's second conversion has no touch left after the first
                   [(1, 10, 10.0), (2, 10, 20.0), (1, 20, 40.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert (r["conversions"], r["revenue"]) == (3, 70.0)
    assert (r["attributed"], r["unattributed"], r["converting_paths"]) == (1, 2, 1)
    for model in MODELS:  # only the attributed 1 conversion worth 10 is credited
        assert_credits(r, model, {"web": 1})
        assert_credits(r, model, {"web": 10}, "revenue")


def test_non_converting_paths_are_counted():
    # customer 1: web -> conversion, then email after it (non-converting path);
    # customer 2: never converts (non-converting path); customer 3: nothing
    con = make_con([(1, 0, "web", "o"), (1, 20, "email", "o"), (2, 0, "web", "o")],
                   [(1, 10, 1.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert (r["converting_paths"], r["non_converting_paths"]) == (1, 2)
    # email is on no converting path: a row with 0 touches and no rule-based credit
    assert [(row["key"], row["touches"]) for row in r["rows"]] == [("web", 1), ("email", 0)]
    assert r["grouped"] == []
    assert rows_by_key(r)["email"]["linear"] == {"conversions": 0.0, "revenue": 0.0}


# --- markov ---------------------------------------------------------------------------------

def test_markov_removal_effects_by_hand():
    # paths: web -> email -> conv (revenue 30), web -> null, email -> conv (revenue 60)
    # transitions: start->web 2, start->email 1; web->email 1, web->null 1; email->conv 2
    # P(start->web) = 2/3, P(start->email) = 1/3, P(web->email) = 1/2, P(email->conv) = 1
    # P = 2/3 * 1/2 * 1 + 1/3 * 1 = 2/3
    # without web (start->web goes to null): P = 1/3 -> removal effect 1 - (1/3)/(2/3) = 1/2
    # without email (every way into email goes to null): P = 0 -> removal effect 1
    # shares: 1/2 / (3/2) = 1/3 web, 2/3 email; times 2 conversions and 90 revenue
    con = make_con([(1, 0, "web", "o"), (1, 1, "email", "o"),
                    (2, 0, "web", "o"),
                    (3, 0, "email", "o")],
                   [(1, 5, 30.0), (3, 5, 60.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert (r["converting_paths"], r["non_converting_paths"]) == (2, 1)
    assert_credits(r, "markov", {"web": 2 / 3, "email": 4 / 3})
    assert_credits(r, "markov", {"web": 30, "email": 60}, "revenue")


def test_markov_self_loops_are_kept():
    # web -> web -> conv and email -> null: start->web 1/2, web->web 1/2, web->conv 1/2,
    # start->email 1/2, email->null 1. P = 1/2 * (web converts eventually: 1) = 1/2.
    # Without web: P = 0 (effect 1); without email: P = 1/2 (effect 0). web takes all.
    con = make_con([(1, 0, "web", "o"), (1, 1, "web", "o"), (2, 0, "email", "o")],
                   [(1, 5, 8.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert_credits(r, "markov", {"web": 1, "email": 0})
    assert rows_by_key(r)["web"]["touches"] == 2


# --- shapley --------------------------------------------------------------------------------

def test_shapley_two_players_by_hand():
    # paths by set of keys (v(S): the conversions of the paths within S):
    #   {web}:        2 paths (customers 1, 2), 1 converts with revenue 40
    #   {email}:      4 paths (customers 3..6), 1 converts with revenue 40
    #   {web, email}: 2 paths (7, 8), both convert, revenue 30 each
    # v(web) = 1, v(email) = 1, v(web, email) = 1 + 1 + 2 = 4
    # phi(web)   = 1/2 (v(web) - 0) + 1/2 (v(web,email) - v(email)) = 1/2 + 3/2 = 2
    # phi(email) = 1/2 (v(email) - 0) + 1/2 (v(web,email) - v(web)) = 1/2 + 3/2 = 2
    # revenue: v(web) = 40, v(email) = 40, v(both) = 140: 1/2 * 40 + 1/2 * 100 = 70 each
    touches = [(1, 0, "web", "o"), (2, 0, "web", "o"),
               *[(customer, 0, "email", "o") for customer in (3, 4, 5, 6)],
               (7, 0, "web", "o"), (7, 1, "email", "o"),
               (8, 0, "email", "o"), (8, 1, "web", "o")]
    con = make_con(touches, [(1, 5, 40.0), (3, 5, 40.0), (7, 5, 30.0), (8, 5, 30.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert (r["attributed"], r["converting_paths"], r["non_converting_paths"]) == (4, 4, 4)
    assert_credits(r, "shapley", {"web": 2, "email": 2})
    assert_credits(r, "shapley", {"web": 70, "email": 70}, "revenue")


def test_shapley_credits_nothing_to_a_key_that_never_converts():
    # {web}: 1 path, converts; {email}: 1 path, no; {web, email}: 1 path, no
    # v(web) = 1, v(email) = 0, v(web, email) = 1
    # phi(web) = 1/2 * 1 + 1/2 * (1 - 0) = 1; phi(email) = 1/2 * 0 + 1/2 * (1 - 1) = 0
    con = make_con([(1, 0, "web", "o"), (2, 0, "email", "o"),
                    (3, 0, "web", "o"), (3, 1, "email", "o")],
                   [(1, 5, 1.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert_credits(r, "shapley", {"web": 1, "email": 0})


# --- by offer, folding into "(other)" --------------------------------------------------------

def test_by_offer_credits_offers():
    con = make_con([(1, 0, "web", "gold"), (1, 10, "web", "silver")], [(1, 20, 10.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10, by="offer")
    assert r["by"] == "offer"
    assert_credits(r, "first_touch", {"gold": 1, "silver": 0})
    assert_credits(r, "last_touch", {"gold": 0, "silver": 1})


def test_top_folds_the_rest_into_other():
    # paths (all converting, 1 each): web; web -> email; web -> email -> sms.
    # Touches on converting paths: web 3, email 2, sms 1; with top=2 the data-driven models
    # see web, email and "(other)" = {sms}.
    con = make_con([(1, 0, "web", "o"), (2, 0, "web", "o"), (3, 0, "web", "o"),
                    (2, 1, "email", "o"), (3, 1, "email", "o"),
                    (3, 2, "sms", "o")],
                   [(1, 5, 1.0), (2, 5, 1.0), (3, 5, 1.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10, top=2)
    assert r["grouped"] == ["sms"]
    assert r["kept"] == {"markov": 2, "shapley": 2}
    rows = rows_by_key(r)
    assert set(rows) == {"web", "email", "sms", "(other)"}
    assert [rows[k]["touches"] for k in ("web", "email", "sms", "(other)")] == [3, 2, 1, 0]
    # the rule-based models credit the real keys: last touch web (1), email (2), sms (3)
    assert_credits(r, "last_touch", {"web": 1, "email": 1, "sms": 1, "(other)": 0})
    # markov: start->web 1; web->conv 1/3, web->email 2/3; email->conv 1/2, email->other 1/2;
    # other->conv 1. P = 1. Without web: P = 0 (effect 1). Without email: P = 1/3 (effect
    # 2/3). Without other: P = 1/3 + 2/3 * 1/2 = 2/3 (effect 1/3). Effects sum to 2: shares
    # 1/2, 1/3, 1/6 of 3 conversions
    assert_credits(r, "markov", {"web": 1.5, "email": 1, "sms": 0, "(other)": 0.5})
    # shapley: each converting path's conversion shared among its distinct keys:
    # web: 1 + 1/2 + 1/3 = 11/6; email: 1/2 + 1/3 = 5/6; other (sms): 1/3
    assert_credits(r, "shapley", {"web": 11 / 6, "email": 5 / 6, "sms": 0, "(other)": 1 / 3})


def test_default_limits_fold_shapley_beyond_ten_keys():
    # twelve channels, ch00 .. ch11, each on one converting path: markov keeps all twelve,
    # shapley keeps ten (ranked by touches: all 1, then by key) and folds ch10 and ch11
    con = make_con([(i, 0, f"ch{i:02d}", "o") for i in range(12)],
                   [(i, 5, 1.0) for i in range(12)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert r["kept"] == {"markov": 12, "shapley": 10}
    assert r["grouped"] == ["ch10", "ch11"]
    rows = rows_by_key(r)
    # every path is one key that always converts: markov removal effects all 1 -> 1/12 each
    assert_credits(r, "markov", {**{f"ch{i:02d}": 1.0 for i in range(12)}, "(other)": 0})
    # shapley: every path one key that converts: 1 to each of ten keys, 2 to "(other)"
    assert rows["ch11"]["shapley"]["conversions"] == 0
    assert rows["(other)"]["shapley"]["conversions"] == pytest.approx(2)
    assert rows["ch00"]["shapley"]["conversions"] == pytest.approx(1)


def test_a_key_only_on_non_converting_paths_earns_no_removal_effect():
    # web -> conv, email -> null: start->web 1/2 -> conv, start->email 1/2 -> null. P = 1/2;
    # without email P is still 1/2 (effect 0); without web P = 0 (effect 1)
    con = make_con([(1, 0, "web", "o"), (2, 0, "email", "o")], [(1, 5, 1.0)])
    r = attribute(con, "t", "c", lookback_ms=100, half_life_ms=10)
    assert_credits(r, "markov", {"web": 1, "email": 0})


def test_inputs_may_be_subqueries_and_leave_no_table_behind():
    con = make_con([(1, 0, "web", "o"), (1, 1, "email", "o")], [(1, 5, 1.0)])
    r = attribute(con, "(SELECT * FROM t WHERE channel = 'web')", "(SELECT * FROM c)",
                  lookback_ms=100, half_life_ms=10)
    assert [row["key"] for row in r["rows"]] == ["web"]
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE "
                       "'_attribution_%'").fetchone() == (0,)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"by": "customer"}, "by must be one of 'channel', 'offer'"),
    ({"lookback_ms": 0}, "lookback_ms"),
    ({"lookback_ms": -5}, "lookback_ms"),
    ({"half_life_ms": 0}, "half_life_ms"),
    ({"top": 0}, "top"),
])
def test_bad_arguments_are_refused(kwargs, message):
    con = make_con([], [])
    arguments = {"lookback_ms": 100, "half_life_ms": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        attribute(con, "t", "c", **arguments)


def test_empty_input():
    r = attribute(make_con([], []), "t", "c", lookback_ms=100, half_life_ms=10)
    assert (r["conversions"], r["attributed"], r["rows"], r["grouped"]) == (0, 0, [], [])


# --- a random data set against a plain-Python reference ----------------------------------------

def random_data(seed: int, customers: int = 60, n_touches: int = 1500,
                n_conversions: int = 200, keys: int = 13) -> tuple[list, list]:
    """Touches and conversions over a short time range, so that windows, ties (same at_ms)
    and several conversions per customer are all common."""
    rng = np.random.default_rng(seed)
    touches = [(int(c), int(at), f"ch{int(k):02d}", f"of{int(k) % 4}")
               for c, at, k in zip(rng.integers(0, customers, n_touches),
                                   rng.integers(0, 500, n_touches),
                                   rng.integers(0, keys, n_touches))]
    conversions = [(int(c), int(at), float(rev))
                   for c, at, rev in zip(rng.integers(0, customers + 10, n_conversions),
                                         rng.integers(0, 500, n_conversions),
                                         rng.integers(1, 100, n_conversions))]
    return touches, conversions


def reference_paths(touches: list, conversions: list, lookback_ms: int) -> list[tuple]:
    """(ordered channels, revenue) per conversion, straight from the definition, by loops."""
    paths = []
    by_customer = defaultdict(list)
    for conversion in sorted(conversions, key=lambda c: (c[0], c[1], c[2])):
        by_customer[conversion[0]].append(conversion)
    for customer, convs in by_customer.items():
        previous = None
        for _, at, revenue in convs:
            path = sorted((t_at, channel) for c, t_at, channel, _ in touches
                          if c == customer and at - lookback_ms <= t_at <= at
                          and (previous is None or t_at > previous))
            paths.append(([channel for _, channel in path], revenue))
            previous = at
    return paths


def test_rule_based_credits_match_a_reference_on_random_data():
    touches, conversions = random_data(seed=11)
    r = attribute(make_con(touches, conversions), "t", "c", lookback_ms=60, half_life_ms=20)
    expected = {m: defaultdict(float) for m in ("last_touch", "first_touch", "linear",
                                                "position")}
    attributed = 0
    for path, revenue in reference_paths(touches, conversions, 60):
        if not path:
            continue
        attributed += 1
        n = len(path)
        expected["last_touch"][path[-1]] += revenue
        expected["first_touch"][path[0]] += revenue
        for i, key in enumerate(path):
            expected["linear"][key] += revenue / n
            middle = 0.2 / (n - 2) if n > 2 else 0.0
            share = 1.0 if n == 1 else 0.5 if n == 2 else 0.4 if i in (0, n - 1) else middle
            expected["position"][key] += revenue * share
    assert r["attributed"] == attributed
    assert r["unattributed"] == len(conversions) - attributed
    for model, want in expected.items():
        got = {k: v for k, v in credits(r, model, "revenue").items() if v}
        assert got == pytest.approx({k: v for k, v in want.items() if v}), model


@pytest.mark.parametrize("top", [None, 3, 20])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("by", ["channel", "offer"])
def test_every_model_credits_exactly_the_attributed(by, seed, top):
    touches, conversions = random_data(seed)
    r = attribute(make_con(touches, conversions), "t", "c", lookback_ms=80, half_life_ms=30,
                  by=by, top=top)
    attributed_revenue = sum(credits(r, "last_touch", "revenue").values())
    assert 0 < r["attributed"] < r["conversions"]
    assert attributed_revenue < r["revenue"]
    for model in MODELS:
        assert sum(credits(r, model).values()) == pytest.approx(r["attributed"]), model
        assert sum(credits(r, model, "revenue").values()) == pytest.approx(
            attributed_revenue), model
        assert all(row[model]["conversions"] >= 0 for row in r["rows"]), model
    # 13 channels: shapley keeps 10 by default (3 folded), markov all 13
    if by == "channel" and top is None:
        assert r["kept"] == {"markov": 13, "shapley": 10}
        assert len(r["grouped"]) == 3 and "(other)" in rows_by_key(r)
    keys = [row["key"] for row in r["rows"]]
    lasts = [-row["last_touch"]["conversions"] for row in r["rows"]]
    assert sorted(zip(lasts, keys)) == list(zip(lasts, keys))


# --- speed ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def million_touches() -> duckdb.DuckDBPyConnection:
    """1,000,000 touches and 100,000 conversions of 200,000 customers over 30 days;
    5 channels, 50 offers."""
    rng = np.random.default_rng(7)
    n, n_conv, customers = 1_000_000, 100_000, 200_000
    channels = np.array(["web", "email", "app", "sms", "push"])
    offers = np.array([f"offer-{i:02d}" for i in range(50)])
    touches = pa.table({
        "customer": pa.array(rng.integers(0, customers, n).astype(np.uint64)),
        "at_ms": rng.integers(0, 30 * DAY_MS, n),
        "channel": channels[rng.integers(0, channels.size, n)],
        "offer": offers[rng.integers(0, offers.size, n)]})
    conversions = pa.table({
        "customer": pa.array(rng.integers(0, customers, n_conv).astype(np.uint64)),
        "at_ms": rng.integers(0, 30 * DAY_MS, n_conv),
        "revenue": rng.gamma(2.0, 20.0, n_conv)})
    con = duckdb.connect()
    con.register("touch_rows", touches)
    con.register("conversion_rows", conversions)
    con.execute("CREATE TABLE touches AS SELECT * FROM touch_rows")
    con.execute("CREATE TABLE conversions AS SELECT * FROM conversion_rows")
    return con


@pytest.mark.parametrize("by", ["channel", "offer"])
def test_a_million_touches_in_seconds(million_touches, by):
    start = time.perf_counter()
    r = attribute(million_touches, "touches", "conversions", lookback_ms=7 * DAY_MS,
                  half_life_ms=DAY_MS, by=by)
    elapsed = time.perf_counter() - start
    print(f"attribute(by={by!r}): {elapsed:.2f} s")
    assert elapsed < 15, f"{elapsed:.1f} s"
    assert r["conversions"] == 100_000 and r["attributed"] > 50_000
    assert sum(credits(r, "markov").values()) == pytest.approx(r["attributed"])
