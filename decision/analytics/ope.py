"""Off-policy evaluation: what a candidate policy would have earned on the logged decisions.

Each logged decision carries the reward it got, the probability the logging policy gave the
action it took, and the probability the candidate gives that same action; the importance
weight ``w = target_p / logged_p`` re-weights the logs as if the candidate had chosen. Three
estimators:

- IPS (inverse propensity scoring), ``mean(w r)``: unbiased when the logs cover every action
  the candidate takes, but noisy when weights are large;
- SNIPS (self-normalised IPS), ``sum(w r) / sum(w)``: slightly biased, much steadier;
- DR (doubly robust), ``mean(q_target + w (r - q_logged))``: a reward model's prediction
  corrected by the weighted residual; unbiased if either the weights or the model are right.

Intervals are bootstrap percentiles over resampled decisions. Each resample is a vector of
counts (how often each decision was drawn), so every estimator on it is a dot product:
a million decisions and 200 resamples take a few seconds, with no per-decision Python loop.
The diagnostics say how far the logs support the candidate (effective sample size, weights).
"""

from __future__ import annotations

import numpy as np

#: support diagnostics: below this share of effective decisions, the estimate is fragile
MIN_ESS_SHARE = 0.05
#: the mean weight should be near 1 when the logs cover the candidate's choices ...
MEAN_WEIGHT_RANGE = (0.8, 1.2)
#: ... judged only on enough decisions for the mean weight to settle
MEAN_WEIGHT_MIN_N = 1000
#: a single decision weighing more than this many decisions dominates the estimate
MAX_WEIGHT_WARN = 100.0


def estimate(reward: np.ndarray, logged_p: np.ndarray, target_p: np.ndarray,
             q_logged: np.ndarray | None = None, q_target: np.ndarray | None = None, *,
             level: float = 0.95, replicates: int = 200, seed: int = 0,
             max_weight: float | None = None) -> dict:
    """The candidate policy's value per decision by IPS, SNIPS and (given a reward model) DR,
    each with a bootstrap percentile interval, and the diagnostics of the weights.

    ``max_weight`` clips the weights (trading a little bias for less variance); ``clipped``
    counts the decisions it touched. The diagnostics (``ess``, ``max_weight``, ...) describe
    the unclipped weights, since they say how well the logs support the candidate. Returns a
    JSON-serialisable dict; raises ValueError on input it cannot estimate from.
    """
    r, mu, pi = _validated(reward, logged_p, target_p)
    dr_terms = _dr_terms(r, q_logged, q_target)
    _check_options(level, replicates, max_weight)
    raw_w = pi / mu
    w = raw_w if max_weight is None else np.minimum(raw_w, max_weight)
    rows = _estimator_rows(r, w, dr_terms)
    values = _from_sums(rows.sum(axis=1), r.size)
    lo, hi = _bootstrap_intervals(rows, level, replicates, seed)
    names = ("ips", "snips", "dr")[:len(values)]
    result: dict = {name: {"value": float(values[k]), "lo": float(lo[k]), "hi": float(hi[k])}
                    for k, name in enumerate(names)}
    result.setdefault("dr", None)
    result.update(level=float(level), replicates=int(replicates), seed=int(seed))
    result.update(_diagnostics(raw_w, pi))
    result["clipped"] = 0 if max_weight is None else int(np.count_nonzero(raw_w > max_weight))
    result["support_warning"] = support_warning(result)
    return result


def _as_vector(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as a finite 1-D float64 array, or a ValueError naming the input."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one value per logged decision (a 1-D array); "
                         f"got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} NaN or infinite value(s) (first at decision "
                         f"{int(bad[0])}); drop those decisions or fill them in")
    return v


def _validated(reward: np.ndarray, logged_p: np.ndarray,
               target_p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rewards and both probabilities, checked: same length, not empty, in range."""
    r = _as_vector("reward", reward)
    mu = _as_vector("logged_p", logged_p)
    pi = _as_vector("target_p", target_p)
    if not r.size == mu.size == pi.size:
        raise ValueError(f"reward, logged_p and target_p must have one value per decision; "
                         f"got lengths {r.size}, {mu.size}, {pi.size}")
    if r.size == 0:
        raise ValueError("no logged decisions: widen the range or check the export")
    if np.any((mu <= 0.0) | (mu > 1.0)):
        raise ValueError(f"logged_p must lie in (0, 1] (the logging policy's probability of "
                         f"the action it took; it took it, so it was above 0); got values from "
                         f"{mu.min()} to {mu.max()}")
    if np.any((pi < 0.0) | (pi > 1.0)):
        raise ValueError(f"target_p must lie in [0, 1] (the candidate's probability of the "
                         f"logged action); got values from {pi.min()} to {pi.max()}")
    return r, mu, pi


def _dr_terms(r: np.ndarray, q_logged: np.ndarray | None,
              q_target: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The reward model's two predictions (checked), or None when DR is not asked for."""
    if q_logged is None and q_target is None:
        return None
    if q_logged is None or q_target is None:
        raise ValueError("DR needs both q_logged (the model's prediction for the logged "
                         "action) and q_target (its expected reward under the candidate)")
    ql = _as_vector("q_logged", q_logged)
    qt = _as_vector("q_target", q_target)
    if not ql.size == qt.size == r.size:
        raise ValueError(f"q_logged and q_target must have one value per decision ({r.size}); "
                         f"got lengths {ql.size}, {qt.size}")
    return ql, qt


def _check_options(level: float, replicates: int, max_weight: float | None) -> None:
    """The estimation options, checked."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (got {level})")
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1 (got {replicates})")
    if max_weight is not None and not max_weight > 0.0:
        raise ValueError(f"max_weight must be above 0 (got {max_weight}); None for no clipping")


def _estimator_rows(r: np.ndarray, w: np.ndarray,
                    dr_terms: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The per-decision vectors the estimators sum: w r, w, and the DR term if asked for.

    Every estimator on a (re)sample is then these rows dotted with its per-decision counts.
    """
    rows = [w * r, w]
    if dr_terms is not None:
        ql, qt = dr_terms
        rows.append(qt + w * (r - ql))
    return np.vstack(rows)


def _from_sums(sums: np.ndarray, n: int) -> np.ndarray:
    """IPS, SNIPS (and DR) from the sums of the estimator rows over ``n`` decisions.

    SNIPS is 0 where the weights sum to 0 (the candidate chose no logged action), as IPS is.
    """
    wr, w = np.asarray(sums[0], dtype=np.float64), sums[1]
    snips = np.divide(wr, w, out=np.zeros_like(wr), where=w > 0)
    out = [wr / n, snips]
    if sums.shape[0] > 2:
        out.append(sums[2] / n)
    return np.array(out, dtype=np.float64)


def _bootstrap_intervals(rows: np.ndarray, level: float, replicates: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of each estimator over ``replicates`` bootstrap resamples.

    A resample draws n decisions with replacement; ``bincount`` turns the draw into counts
    per decision, and the estimator rows dotted with the counts give every estimator at once.
    """
    n = rows.shape[1]
    rng = np.random.default_rng(seed)
    sums = np.empty((rows.shape[0], replicates), dtype=np.float64)
    for b in range(replicates):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        sums[:, b] = rows @ counts
    estimates = _from_sums(sums, n)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(estimates, [tail, 1.0 - tail], axis=1)
    return lo, hi


def _diagnostics(w: np.ndarray, pi: np.ndarray) -> dict:
    """How far the logs support the candidate: effective sample size and the weights."""
    n = w.size
    sum_w, sum_w2 = float(w.sum()), float(np.dot(w, w))
    ess = sum_w * sum_w / sum_w2 if sum_w2 > 0.0 else 0.0
    return {
        "n": int(n),
        "ess": ess,
        "ess_share": ess / n,
        "max_weight": float(w.max()),
        "mean_weight": sum_w / n,
        "zero_share": float(np.count_nonzero(pi == 0.0)) / n,
    }


def support_warning(diagnostics: dict) -> str | None:
    """A plain-words warning when the logs barely support the candidate, else None.

    Fires when the effective sample size is under 5% of the decisions, when the mean weight
    strays outside [0.8, 1.2] on 1,000 or more decisions (the candidate picks offers the
    logging policy never or seldom showed), or when one decision weighs over 100.
    """
    n, ess = diagnostics["n"], diagnostics["ess"]
    reasons = []
    if diagnostics["ess_share"] < MIN_ESS_SHARE:
        reasons.append(f"it rests on about {ess:,.0f} effective decisions of {n:,} "
                       f"({diagnostics['ess_share']:.1%})")
    low, high = MEAN_WEIGHT_RANGE
    if n >= MEAN_WEIGHT_MIN_N and not low <= diagnostics["mean_weight"] <= high:
        reasons.append(f"the mean weight is {diagnostics['mean_weight']:.2f} where full "
                       f"coverage gives about 1 (below 1: the records never show some offers "
                       f"the candidate picks; above: a few rare decisions dominate)")
    if diagnostics["max_weight"] > MAX_WEIGHT_WARN:
        reasons.append(f"a single decision counts as {diagnostics['max_weight']:,.0f}")
    if not reasons:
        return None
    return ("The candidate chooses offers the records rarely show, so this estimate is "
            "fragile: " + "; ".join(reasons) + ". Treat it as a rough guide: log with more "
            "exploration, or evaluate a candidate closer to the current policy.")
