"""Multi-touch attribution: which channels (or offers) earned the conversions.

``attribute`` credits each conversion across the touches that led to it, by seven models
side by side, per channel or per offer (``by``). The touches and conversions are read from
DuckDB; the path extraction and the rule-based models run there as SQL (an ASOF join and
window functions), and only the distinct paths, aggregated, come to Python for the two
data-driven models (numpy linear algebra for the Markov chain, exact sums for Shapley).

Definitions
-----------
Path of a conversion
    The customer's touches (any channel) with ``conv.at_ms - lookback_ms <= touch.at_ms <=
    conv.at_ms`` and strictly after the customer's previous conversion: a touch serves one
    conversion only, the first one at or after it. Touches are ordered by ``at_ms``, ties by
    the key string, so first, last and position credits are deterministic. Two conversions of
    one customer at the same ``at_ms``: the one with the lower revenue comes first and takes
    the touches; the other has an empty path. A conversion with an empty path is
    *unattributed* (credited to nobody); the others are *attributed*, and every model's
    credits add up to the attributed conversions and the attributed revenue.
Non-converting path
    A customer's touches after their last conversion (all their touches if they never
    converted). Only the data-driven models (markov, shapley) use them. Touches before a
    conversion but outside its look-back window belong to no path, nor do touches whose key
    (channel or offer) is NULL.

Rule-based models (every key on a converting path is credited):

- ``last_touch`` / ``first_touch``: 100% to the last / first touch of the path.
- ``linear``: an equal share per touch (a key touched twice gets two shares).
- ``time_decay``: touch weight ``2 ** (-(conv.at_ms - touch.at_ms) / half_life_ms)``,
  normalised per conversion.
- ``position`` (40/20/40): one touch 100%; two touches 50/50; three or more: 40% to the
  first, 40% to the last, 20% split equally among the ones between.

Data-driven models (conversions: the model's shares times the attributed conversions;
revenue: the revenue shares times the attributed revenue):

- ``markov``: a first-order Markov chain over the states start, the keys, conversion and
  null, with transition probabilities counted from all paths: a converting path is
  start -> k1 -> ... -> kn -> conversion, a non-converting one start -> ... -> null
  (consecutive repeats of a key are self-loops). P = P(conversion | start), solved as an
  absorbing chain. The removal effect of key k is ``1 - P_without_k / P``, where removing k
  sends every transition into k to null. The shares are the removal effects normalised to
  sum to 1 (conversions and revenue alike).
- ``shapley``: the players are the keys; the value of a coalition S is the conversions of
  the paths whose set of distinct keys lies within S (what those keys bring about on their
  own; Zhao et al. 2018, "Shapley value methods for attribution modeling"), v(empty) = 0;
  revenue likewise. Exact Shapley values over all coalitions: each converting path's
  conversion is shared equally among its distinct keys (a key repeated on a path counts
  once, unlike ``linear``), never negative, and they add up to the attributed
  conversions. (A coalition worth the conversion *rate* of the paths of exactly that set
  gives negative or zero values whenever sets are sparse: twelve channels that each
  convert on their own paths would all be worth 0.)

Rows: one per key on any path, converting or not (``touches`` counts its touches on
converting paths; a key seen only on non-converting paths has 0 touches and no rule-based
credit, but is a state and a player of the data-driven models).

Folding, for the data-driven models only: exact Shapley sums over 2^n coalitions, so each
data-driven model keeps its ``top`` keys, ranked by touches on converting paths (then by
key), and folds the others into one player ``"(other)"``. Without ``top`` markov keeps up to
24 keys and shapley up to 10; shapley never keeps more than 15. When anything is folded, the
rows are the real keys plus a row ``"(other)"``: the rule-based models credit the real keys
and give "(other)" 0; a data-driven model credits its kept keys and "(other)", and gives 0
to a key it folded. ``grouped`` lists every key folded by at least one of the two models
(markov keeps at least as many as shapley), ``kept`` how many keys each model kept. The
"(other)" row's ``touches`` is 0: its keys' touches are counted on their own rows.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import duckdb

MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position", "markov", "shapley")
RULE_MODELS = MODELS[:5]
BY = ("channel", "offer")
OTHER = "(other)"
#: keys each data-driven model keeps when the caller gives no ``top``
DEFAULT_KEEP = {"markov": 24, "shapley": 10}
#: exact Shapley values cost n * 2^(n-1) terms: the most keys it keeps ("(other)" aside)
SHAPLEY_MAX_KEEP = 15


class Paths(NamedTuple):
    """The distinct paths, flattened: path i is ``codes[offsets[i]:offsets[i + 1]]``.

    ``codes`` are key codes (0 = the key with the most touches on converting paths);
    ``paths`` counts the paths with that sequence, ``conversions`` the converting ones among
    them, ``revenue`` their revenue.
    """

    codes: np.ndarray
    offsets: np.ndarray
    paths: np.ndarray
    conversions: np.ndarray
    revenue: np.ndarray


def attribute(con: duckdb.DuckDBPyConnection, touches: str, conversions: str, *,
              lookback_ms: int, half_life_ms: int, by: str = "channel",
              top: int | None = None) -> dict:
    """Credit the conversions to the keys of their touches by every model in ``MODELS``.

    touches / conversions: names of tables or views in ``con`` (or SQL subqueries in
    parentheses). touches columns: customer UBIGINT, at_ms BIGINT, channel VARCHAR,
    offer VARCHAR. conversions columns: customer UBIGINT, at_ms BIGINT, revenue DOUBLE.
    by: "channel" or "offer" (the touch column credited). top: the keys each data-driven
    model keeps (see the module's docstring). Returns a JSON-serialisable dict: the totals,
    and one row per key with its touches on converting paths and each model's
    ``{"conversions", "revenue"}``, sorted by last-touch conversions (descending), then key.
    """
    _check_arguments(by, lookback_ms, half_life_ms, top)
    table = f"_attribution_{uuid.uuid4().hex}"
    try:
        _assign_touches(con, table, touches, conversions, by, lookback_ms)
        total, total_revenue = _conversion_totals(con, conversions)
        keys = _ranked_keys(con, table)
        rule = _rule_credits(con, table, half_life_ms)
        paths = _distinct_paths(con, table)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    attributed = int(paths.conversions.sum())
    attributed_revenue = float(paths.revenue.sum())
    kept = _kept(top, len(keys))
    shares = {
        "markov": _markov_shares(_fold(paths.codes, kept["markov"]), paths,
                                 _players(len(keys), kept["markov"])),
        "shapley": _shapley_shares(_fold(paths.codes, kept["shapley"]), paths,
                                   _players(len(keys), kept["shapley"])),
    }
    rows = _rows(keys, rule, shares, kept, attributed, attributed_revenue)
    return {
        "by": by, "lookback_ms": lookback_ms, "half_life_ms": half_life_ms,
        "conversions": total, "revenue": total_revenue,
        "attributed": attributed, "unattributed": total - attributed,
        "converting_paths": attributed,
        "non_converting_paths": int(paths.paths.sum()) - attributed,
        "grouped": [key for key, _ in keys[min(kept.values()):]],
        "kept": kept,
        "rows": rows,
    }


def _check_arguments(by: str, lookback_ms: int, half_life_ms: int, top: int | None) -> None:
    """Refuse arguments that have no meaning, before any SQL runs (ValueError)."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(map(repr, BY))} (got {by!r})")
    if int(lookback_ms) <= 0:
        raise ValueError(f"lookback_ms must be positive (got {lookback_ms})")
    if int(half_life_ms) <= 0:
        raise ValueError(f"half_life_ms must be positive (got {half_life_ms})")
    if top is not None and int(top) < 1:
        raise ValueError(f"top must be at least 1 (got {top})")


def _assign_touches(con: duckdb.DuckDBPyConnection, table: str, touches: str,
                    conversions: str, by: str, lookback_ms: int) -> None:
    """Create temp table ``table``: every touch that lies on a path, with its path.

    Columns: customer, at_ms, key, conv_id (the conversion it serves; NULL on a
    non-converting path), revenue (that conversion's), code (the key's rank by touches on
    converting paths, then key, from 0). The ASOF join gives each touch the customer's first
    conversion at or after it (the first of ties); a touch outside that conversion's
    look-back window is dropped, and so is a touch without a key.
    """
    con.execute(f"""
        CREATE TEMP TABLE {table} AS
        WITH conv AS MATERIALIZED (
            SELECT customer, at_ms, coalesce(revenue, 0)::DOUBLE AS revenue,
                   row_number() OVER (ORDER BY customer, at_ms, revenue) AS conv_id,
                   row_number() OVER (PARTITION BY customer, at_ms ORDER BY revenue) AS tie
            FROM {conversions}
        ), assigned AS (
            SELECT t.customer, t.at_ms, t.{by} AS key, c.conv_id, c.revenue, c.at_ms AS conv_at
            FROM (SELECT * FROM {touches} WHERE {by} IS NOT NULL) AS t
            ASOF LEFT JOIN (SELECT * FROM conv WHERE tie = 1) AS c
              ON t.customer = c.customer AND t.at_ms <= c.at_ms
        ), on_path AS MATERIALIZED (
            SELECT customer, at_ms, key, conv_id, revenue FROM assigned
            WHERE conv_id IS NULL OR at_ms >= conv_at - {int(lookback_ms)}
        ), ranked AS (
            SELECT key,
                   (row_number() OVER (ORDER BY count(conv_id) DESC, key) - 1)::INTEGER AS code
            FROM on_path GROUP BY key
        )
        SELECT p.customer, p.at_ms, p.key, p.conv_id, p.revenue, r.code
        FROM on_path AS p JOIN ranked AS r USING (key)
    """)


def _conversion_totals(con: duckdb.DuckDBPyConnection, conversions: str) -> tuple[int, float]:
    """All conversions in the input and their revenue, attributed or not."""
    n, revenue = con.execute(
        f"SELECT count(*), coalesce(sum(revenue), 0)::DOUBLE FROM {conversions}").fetchone()
    return int(n), float(revenue)


def _ranked_keys(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, int]]:
    """(key, touches on converting paths) for every key on a path, in code order."""
    return con.execute(f"""
        SELECT key, count(conv_id) FROM {table} GROUP BY key, code ORDER BY code
    """).fetchall()


def _rule_credits(con: duckdb.DuckDBPyConnection, table: str,
                  half_life_ms: int) -> dict[str, dict]:
    """Per key on a converting path: each rule-based model's credits.

    Each touch gets a weight per model (summing to 1 over its path); the credits are the
    weights summed per key, and the weights times the conversion's revenue. The time-decay
    weight is taken relative to the path's latest touch, which normalisation cancels, so
    that a long look-back over a short half-life cannot underflow every weight to 0.
    """
    weights = con.execute(f"""
        WITH ordered AS (
            SELECT conv_id, key, revenue,
                   row_number() OVER (PARTITION BY conv_id ORDER BY at_ms, key) AS pos,
                   count(*) OVER (PARTITION BY conv_id) AS n,
                   pow(2.0, (at_ms - max(at_ms) OVER (PARTITION BY conv_id))::DOUBLE
                            / {int(half_life_ms)}) AS decay
            FROM {table} WHERE conv_id IS NOT NULL
        ), weighted AS (
            SELECT key, revenue,
                   (pos = n)::DOUBLE AS last_touch,
                   (pos = 1)::DOUBLE AS first_touch,
                   1.0 / n AS linear,
                   decay / sum(decay) OVER (PARTITION BY conv_id) AS time_decay,
                   CASE WHEN n = 1 THEN 1.0 WHEN n = 2 THEN 0.5
                        WHEN pos = 1 OR pos = n THEN 0.4 ELSE 0.2 / (n - 2) END AS position
            FROM ordered
        )
        SELECT key, {", ".join(f"sum({m}), sum({m} * revenue)" for m in RULE_MODELS)}
        FROM weighted GROUP BY key
    """).fetchall()
    return {
        key: {m: {"conversions": float(sums[2 * i]), "revenue": float(sums[2 * i + 1])}
              for i, m in enumerate(RULE_MODELS)}
        for key, *sums in weights
    }


def _distinct_paths(con: duckdb.DuckDBPyConnection, table: str) -> Paths:
    """The distinct key-code sequences of all paths, converting or not, with their counts."""
    arrow = con.sql(f"""
        WITH per_path AS (
            SELECT list(code ORDER BY at_ms, key) AS path, conv_id IS NOT NULL AS converted,
                   any_value(revenue) AS revenue
            FROM {table} GROUP BY customer, conv_id
        )
        SELECT path, count(*) AS paths, count(*) FILTER (WHERE converted) AS conversions,
               coalesce(sum(revenue), 0)::DOUBLE AS revenue
        FROM per_path GROUP BY path
    """).to_arrow_table()
    path = arrow.column("path").combine_chunks()
    lengths = path.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    return Paths(
        codes=path.flatten().to_numpy(zero_copy_only=False).astype(np.int64),
        offsets=np.concatenate(([0], np.cumsum(lengths))),
        paths=arrow.column("paths").to_numpy().astype(np.float64),
        conversions=arrow.column("conversions").to_numpy().astype(np.float64),
        revenue=arrow.column("revenue").to_numpy().astype(np.float64),
    )


def _kept(top: int | None, n_keys: int) -> dict[str, int]:
    """How many of the top-ranked keys each data-driven model keeps unfolded."""
    wanted = ({m: int(top) for m in DEFAULT_KEEP} if top is not None else dict(DEFAULT_KEEP))
    wanted["shapley"] = min(wanted["shapley"], SHAPLEY_MAX_KEEP)
    return {m: min(n, n_keys) for m, n in wanted.items()}


def _fold(codes: np.ndarray, keep: int) -> np.ndarray:
    """Key codes with every code from ``keep`` on folded into one, ``keep`` ("(other)")."""
    return np.minimum(codes, keep)


def _players(n_keys: int, keep: int) -> int:
    """The number of keys a folded model sees: the kept ones, and "(other)" if any is left."""
    return keep + (1 if n_keys > keep else 0)


def _normalise(values: np.ndarray, fallback: np.ndarray, scale: float) -> np.ndarray:
    """``values`` clipped at 0 and scaled to sum to 1; equal shares over ``fallback`` (a
    mask) when none is positive; all 0 when the fallback is empty too (nothing converted).

    A value within rounding of 0 (1e-12 of ``scale``, the size of the values it was computed
    from) counts as 0, so that float noise cannot take all the credit.
    """
    positive = np.where(values > 1e-12 * scale, values, 0.0)
    if positive.sum() > 0:
        return positive / positive.sum()
    if fallback.any():
        return fallback / fallback.sum()
    return np.zeros_like(values)


def _on_converting_paths(codes: np.ndarray, paths: Paths, n: int) -> np.ndarray:
    """Mask of the ``n`` players seen on at least one converting path."""
    converting = np.repeat(paths.conversions > 0, np.diff(paths.offsets))
    return np.bincount(codes[converting], minlength=n) > 0


def _transition_counts(codes: np.ndarray, paths: Paths, n: int) -> np.ndarray:
    """Counted transitions between the states start (0), the keys (1..n), conversion (n+1)
    and null (n+2), from every path weighted by how often it occurs."""
    size = n + 3
    lengths = np.diff(paths.offsets)
    states = codes + 1
    first, last = states[paths.offsets[:-1]], states[paths.offsets[1:] - 1]
    within = np.ones(states.size, dtype=bool)
    within[paths.offsets[1:] - 1] = False  # the last step of a path leaves the keys
    step_weight = np.repeat(paths.paths, lengths)[within]
    sources = np.concatenate((np.zeros_like(first), states[within], last, last))
    targets = np.concatenate((first, states[1:][within[:-1]], np.full_like(last, n + 1),
                              np.full_like(last, n + 2)))
    weight = np.concatenate((paths.paths, step_weight, paths.conversions,
                             paths.paths - paths.conversions))
    return _weighted_counts(sources * size + targets, weight, size * size).reshape(size, size)


def _weighted_counts(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """``weights`` summed per ``index`` in ``range(size)``, as floats even when empty (an
    empty ``np.bincount`` is integer)."""
    return np.bincount(index, weights=weights, minlength=size).astype(np.float64)


def _conversion_probability(transient: np.ndarray, to_conversion: np.ndarray) -> float:
    """P(absorbed in conversion | start) of an absorbing chain: x = Q x + r, x[start]."""
    identity = np.eye(transient.shape[0])
    return float(np.linalg.solve(identity - transient, to_conversion)[0])


def _markov_shares(codes: np.ndarray, paths: Paths, n: int) -> dict[str, np.ndarray]:
    """Each of the ``n`` keys' normalised removal effect in the first-order chain: its
    share of the conversions and, the same, of the revenue."""
    counts = _transition_counts(codes, paths, n)[: n + 1]
    totals = counts.sum(axis=1, keepdims=True)
    probabilities = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    transient, to_conversion = probabilities[:, : n + 1], probabilities[:, n + 1]
    base = _conversion_probability(transient, to_conversion)
    effects = np.zeros(n)
    if base > 0:
        for key in range(n):
            removed = transient.copy()
            removed[:, key + 1] = 0.0  # transitions into the key now go to null
            effects[key] = 1.0 - _conversion_probability(removed, to_conversion) / base
    share = _normalise(effects, _on_converting_paths(codes, paths, n), scale=1.0)
    return {"conversions": share, "revenue": share}


def _coalitions(codes: np.ndarray, paths: Paths) -> np.ndarray:
    """Each distinct path's set of distinct keys, as a bit mask over the key codes."""
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.bitwise_or.reduceat(np.left_shift(1, codes), paths.offsets[:-1])


def _shapley_values(value: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values of ``n`` players for the characteristic function ``value``
    (indexed by coalition bit mask; one column per measure)."""
    masks = np.arange(1 << n)
    sizes = np.zeros(masks.size, dtype=np.int64)
    for bit in range(n):
        sizes += (masks >> bit) & 1
    weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                       for s in range(n)])
    phi = np.zeros((n, value.shape[1]))
    for player in range(n):
        bit = 1 << player
        without = masks[(masks & bit) == 0]
        phi[player] = weight[sizes[without]] @ (value[without | bit] - value[without])
    return phi


def _shapley_shares(codes: np.ndarray, paths: Paths, n: int) -> dict[str, np.ndarray]:
    """The ``n`` keys' normalised Shapley values, for conversions and for revenue."""
    masks = _coalitions(codes, paths)
    size = 1 << n
    value = np.stack((_weighted_counts(masks, paths.conversions, size),
                      _weighted_counts(masks, paths.revenue, size)), axis=1)
    every = np.arange(size)
    for bit in range(n):  # subset sums: v(S) = what the paths within S brought
        has = every[(every >> bit) & 1 == 1]
        value[has] += value[has ^ (1 << bit)]
    phi = _shapley_values(value, n)
    fallback = _on_converting_paths(codes, paths, n)
    return {measure: _normalise(phi[:, i], fallback, scale=float(np.abs(value[:, i]).max()))
            for i, measure in enumerate(("conversions", "revenue"))}


def _rows(keys: list[tuple[str, int]], rule: dict[str, dict],
          shares: dict[str, dict[str, np.ndarray]], kept: dict[str, int],
          attributed: int, attributed_revenue: float) -> list[dict]:
    """One row per key on a path, plus "(other)" when a model folded keys,
    sorted by last-touch conversions (descending), then key. ``shares``: per data-driven
    model, the players' shares (kept keys in code order, then "(other)")."""
    zero = {"conversions": 0.0, "revenue": 0.0}

    def credit(model: str, player: int) -> dict[str, float]:
        """The data-driven ``model``'s credit to one of its players."""
        return {"conversions": float(shares[model]["conversions"][player] * attributed),
                "revenue": float(shares[model]["revenue"][player] * attributed_revenue)}

    rows = []
    for code, (key, touches) in enumerate(keys):
        rows.append({"key": key, "touches": touches,
                     **{m: rule[key][m] if key in rule else dict(zero) for m in RULE_MODELS},
                     **{m: credit(m, code) if code < kept[m] else dict(zero)
                        for m in shares}})
    if len(keys) > min(kept.values()):
        rows.append({"key": OTHER, "touches": 0, **{m: dict(zero) for m in RULE_MODELS},
                     **{m: credit(m, kept[m]) if len(keys) > kept[m] else dict(zero)
                        for m in shares}})
    return sorted(rows, key=lambda row: (-row["last_touch"]["conversions"], row["key"]))
