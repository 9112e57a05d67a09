"""Lift against a control group, with intervals: the statistics the report shares.

Each group (an experiment's arm, its control) is reduced to the sufficient statistics of a
per-decision metric (``Sample``: count, sum, sum of squares), which is what a SQL
aggregate returns; the arm is then compared with the control by a Welch normal
approximation (large-sample, unequal variances), which is sound for both a 0/1 response and
revenue per decision at the sizes a report sees. Pure ``math`` and numpy: no scipy.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

_NORMAL = NormalDist()


class Sample(NamedTuple):
    """One group's per-decision metric as sufficient statistics.

    For a 0/1 response ``total_sq == total``; for revenue ``total_sq`` is the sum of the
    squared per-decision revenue (decisions without revenue count as 0).
    """

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        """The metric's mean per decision; 0 for an empty group."""
        return self.total / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        """The unbiased sample variance; 0 when n < 2 (no spread can be measured).

        Clipped at 0: the sum-of-squares formula can come out a hair negative in floating
        point for a constant metric.
        """
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


def sample_of(values: np.ndarray) -> Sample:
    """The ``Sample`` of per-decision values (one value per decision)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return Sample(n=int(v.size), total=float(v.sum()), total_sq=float(np.dot(v, v)))


def _z(level: float) -> float:
    """The two-sided normal quantile for a confidence level (1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (got {level})")
    return _NORMAL.inv_cdf(0.5 + level / 2.0)


def rate_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a rate ``successes / n``; (0, 1) when n == 0.

    Wilson rather than the plain normal interval: it stays inside [0, 1] and keeps its
    coverage for rare events (click rates of a few percent) and small n.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n (got {successes} of {n})")
    z = _z(level)
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _p_value(z: float) -> float:
    """The two-sided normal p-value of a z statistic (erfc: exact far into the tail)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _needed_per_group(difference: float, var_sum: float, z_level: float, power: float) -> int:
    """Decisions per group to detect ``difference`` at this level and power (rounded up)."""
    z_power = _NORMAL.inv_cdf(power)
    return math.ceil((z_level + z_power) ** 2 * var_sum / difference**2)


def lift(arm: Sample, control: Sample, level: float = 0.95, power: float = 0.8) -> dict:
    """The arm's lift over the control: the difference of means and the relative lift, with
    intervals, a two-sided test, and the group size needed to detect the observed difference.

    Returns a JSON-serialisable dict (see the keys below). The interval fields (``difference_ci``,
    ``relative_ci``, ``z``, ``p_value``) are None when the spread cannot be measured: a group
    with fewer than 2 decisions, or a standard error of 0 (both groups constant); then
    ``significant`` is False. ``relative`` and ``relative_ci`` are None when the control's
    mean is 0 (no ratio), ``needed_per_group`` when the difference is 0 or the spread cannot
    be measured.
    """
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie strictly between 0 and 1 (got {power})")
    z_level = _z(level)
    m_a, m_c = arm.mean, control.mean
    var_a, var_c = arm.variance, control.variance
    difference = m_a - m_c
    se = math.sqrt(var_a / arm.n + var_c / control.n) if arm.n > 0 and control.n > 0 else 0.0
    measurable = arm.n >= 2 and control.n >= 2 and se > 0.0

    relative = difference / m_c if m_c != 0.0 else None
    difference_ci = z = p_value = relative_ci = needed = None
    if measurable:
        difference_ci = [difference - z_level * se, difference + z_level * se]
        z = difference / se
        p_value = _p_value(z)
        if relative is not None:
            se_rel = math.sqrt(var_a / (arm.n * m_c**2)
                               + m_a**2 * var_c / (control.n * m_c**4))
            relative_ci = [relative - z_level * se_rel, relative + z_level * se_rel]
        if difference != 0.0:
            needed = _needed_per_group(difference, var_a + var_c, z_level, power)
    significant = difference_ci is not None and (difference_ci[0] > 0.0 or difference_ci[1] < 0.0)
    return {
        "arm_value": m_a,
        "control_value": m_c,
        "difference": difference,
        "difference_ci": difference_ci,
        "relative": relative,
        "relative_ci": relative_ci,
        "z": z,
        "p_value": p_value,
        "significant": significant,
        "n_arm": int(arm.n),
        "n_control": int(control.n),
        "needed_per_group": needed,
    }
