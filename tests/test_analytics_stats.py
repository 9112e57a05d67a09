"""decision.analytics.stats: lift against a control group, worked by hand, and the
coverage of its interval checked by simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from decision.analytics.stats import Sample, lift, rate_interval, sample_of

Z95 = 1.959963984540054  # the 97.5% normal quantile
Z80 = 0.841621233572914  # the 80% normal quantile (power 0.8)


def test_sample_mean_and_unbiased_variance():
    # values 1, 2, 3, 6: total 12, squares 1 + 4 + 9 + 36 = 50, mean 3,
    # variance (50 - 12^2/4) / 3 = (50 - 36) / 3 = 14/3
    s = sample_of(np.array([1.0, 2.0, 3.0, 6.0]))
    assert s == Sample(4, 12.0, 50.0)
    assert s.mean == 3.0
    assert s.variance == pytest.approx(14 / 3)


def test_sample_variance_is_zero_below_two_and_never_negative():
    assert Sample(0, 0.0, 0.0).mean == 0.0
    assert Sample(1, 5.0, 25.0).variance == 0.0
    assert Sample(0, 0.0, 0.0).variance == 0.0
    # a constant metric: floating point may leave total_sq - total^2/n a hair below 0
    assert sample_of(np.full(3, 0.1)).variance >= 0.0


def test_wilson_textbook_case():
    # 81 successes in 263 (a textbook example): p = 0.30798, z^2/n = 3.8415/263 = 0.014606
    # centre = (0.30798 + 0.007303) / 1.014606 = 0.31075
    # half = 1.96 / 1.014606 * sqrt(0.30798 * 0.69202 / 263 + 3.8415 / (4 * 263^2))
    #      = 1.93178 * sqrt(0.00081037 + 0.00001388) = 1.93178 * 0.028710 = 0.05546
    # -> [0.2553, 0.3662]
    lo, hi = rate_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-3)
    assert hi == pytest.approx(0.3662, abs=1e-3)


def test_wilson_edges():
    assert rate_interval(0, 0) == (0.0, 1.0)
    lo, hi = rate_interval(0, 50)
    assert lo == 0.0 and 0.0 < hi < 0.1  # no successes: still an upper bound above 0
    lo, hi = rate_interval(50, 50)
    assert hi == 1.0 and 0.9 < lo < 1.0
    # a higher level gives a wider interval
    lo99, hi99 = rate_interval(81, 263, level=0.99)
    assert lo99 < 0.2553 and hi99 > 0.3662
    with pytest.raises(ValueError):
        rate_interval(5, 3)


def test_lift_response_rate_by_hand():
    # arm 120 responses in 1000, control 100 in 1000 (0/1 metric: total_sq = total)
    # means 0.12 and 0.10, difference 0.02, relative 0.02 / 0.10 = 0.2
    # var_a = (120 - 1000 * 0.12^2) / 999 = 105.6 / 999 = 0.105706
    # var_c = (100 - 1000 * 0.10^2) / 999 =  90.0 / 999 = 0.090090
    # se = sqrt(0.105706 / 1000 + 0.090090 / 1000) = sqrt(0.000195796) = 0.0139927
    # CI = 0.02 -+ 1.959964 * 0.0139927 = 0.02 -+ 0.0274252 = [-0.0074252, 0.0474252]
    # z = 0.02 / 0.0139927 = 1.42932; p = 2 (1 - Phi(1.42932)) = 0.15291
    # se_rel = sqrt(0.105706 / (1000 * 0.01) + 0.0144 * 0.090090 / (1000 * 0.0001))
    #        = sqrt(0.0105706 + 0.0129730) = 0.153439; CI 0.2 -+ 0.300735
    # needed = (1.959964 + 0.841621)^2 * (0.105706 + 0.090090) / 0.02^2
    #        = 7.848878 * 0.195796 / 0.0004 = 3841.9 -> 3842
    r = lift(Sample(1000, 120, 120), Sample(1000, 100, 100))
    assert r["arm_value"] == pytest.approx(0.12)
    assert r["control_value"] == pytest.approx(0.10)
    assert r["difference"] == pytest.approx(0.02)
    se = math.sqrt((105.6 / 999) / 1000 + (90.0 / 999) / 1000)
    assert se == pytest.approx(0.0139927, rel=1e-5)
    assert r["difference_ci"] == pytest.approx([0.02 - Z95 * se, 0.02 + Z95 * se])
    assert r["difference_ci"] == pytest.approx([-0.0074252, 0.0474252], abs=1e-6)
    assert r["z"] == pytest.approx(1.42932, abs=1e-5)
    assert r["p_value"] == pytest.approx(0.15291, abs=1e-5)
    assert r["significant"] is False
    assert r["relative"] == pytest.approx(0.2)
    assert r["relative_ci"] == pytest.approx([0.2 - 0.300735, 0.2 + 0.300735], abs=1e-5)
    assert r["n_arm"] == 1000 and r["n_control"] == 1000
    assert r["needed_per_group"] == 3842
    assert r["needed_per_group"] == math.ceil((Z95 + Z80) ** 2 * (195.6 / 999) / 0.02**2)
    json.dumps(r, allow_nan=False)


def test_lift_significant_with_more_decisions():
    # the same rates on 10x the decisions: se shrinks by sqrt(10) to 0.004425,
    # CI 0.02 -+ 0.00867 excludes 0, z = 4.52, p ~ 6e-6
    r = lift(Sample(10_000, 1200, 1200), Sample(10_000, 1000, 1000))
    assert r["significant"] is True
    assert r["difference_ci"][0] > 0.0
    assert r["z"] == pytest.approx(4.52, abs=0.01)
    assert r["p_value"] < 1e-5


def test_lift_revenue_by_hand():
    # revenue per decision; arm 6 decisions, control 5
    # arm:     0, 0, 12.5, 0, 30, 5 -> total 47.5, squares 156.25 + 900 + 25 = 1081.25
    #          mean 7.916667, var (1081.25 - 47.5^2 / 6) / 5 = 705.2083 / 5 = 141.0417
    # control: 0, 10, 0, 0, 4       -> total 14, squares 100 + 16 = 116
    #          mean 2.8, var (116 - 14^2 / 5) / 4 = 76.8 / 4 = 19.2
    # difference 5.116667; se = sqrt(141.0417 / 6 + 19.2 / 5) = sqrt(27.34694) = 5.229430
    # CI 5.116667 -+ 1.959964 * 5.229430 = 5.116667 -+ 10.249495 = [-5.132829, 15.366162]
    # z = 0.978437, p = 0.327858; relative 5.116667 / 2.8 = 1.827381
    # needed = 7.848878 * (141.0417 + 19.2) / 5.116667^2 = 1257.72 / 26.1803 = 48.04 -> 49
    arm = sample_of(np.array([0.0, 0.0, 12.5, 0.0, 30.0, 5.0]))
    control = sample_of(np.array([0.0, 10.0, 0.0, 0.0, 4.0]))
    assert arm == Sample(6, 47.5, 1081.25)
    assert control == Sample(5, 14.0, 116.0)
    r = lift(arm, control)
    assert r["arm_value"] == pytest.approx(7.916667, abs=1e-6)
    assert r["control_value"] == pytest.approx(2.8)
    assert r["difference"] == pytest.approx(5.116667, abs=1e-6)
    assert r["difference_ci"] == pytest.approx([-5.132829, 15.366162], abs=1e-5)
    assert r["z"] == pytest.approx(0.978437, abs=1e-6)
    assert r["p_value"] == pytest.approx(0.327858, abs=1e-6)
    assert r["relative"] == pytest.approx(1.827381, abs=1e-6)
    assert r["significant"] is False
    assert r["needed_per_group"] == 49


def test_lift_zero_control_mean():
    # a control that never responded: no ratio, so no relative lift; the difference still has
    # its interval (the arm's spread alone): se = sqrt((30 - 1000 * 0.03^2) / 999 / 1000)
    r = lift(Sample(1000, 30, 30), Sample(1000, 0, 0))
    assert r["control_value"] == 0.0
    assert r["relative"] is None and r["relative_ci"] is None
    se = math.sqrt((30 - 0.9) / 999 / 1000)
    assert r["difference_ci"] == pytest.approx([0.03 - Z95 * se, 0.03 + Z95 * se])
    assert r["significant"] is True
    json.dumps(r, allow_nan=False)


def test_lift_fewer_than_two_decisions():
    # one control decision: no spread can be measured, so no interval, no test, no size
    r = lift(Sample(500, 60, 60), Sample(1, 1, 1))
    assert r["difference"] == pytest.approx(0.12 - 1.0)
    for key in ("difference_ci", "relative_ci", "z", "p_value", "needed_per_group"):
        assert r[key] is None, key
    assert r["significant"] is False
    assert r["n_control"] == 1
    # an empty arm: the same, and no division by zero
    r = lift(Sample(0, 0, 0), Sample(100, 10, 10))
    assert r["arm_value"] == 0.0 and r["difference_ci"] is None
    json.dumps(r, allow_nan=False)


def test_lift_zero_difference_needs_no_size():
    r = lift(Sample(1000, 100, 100), Sample(2000, 200, 200))
    assert r["difference"] == 0.0
    assert r["needed_per_group"] is None
    assert r["z"] == 0.0 and r["p_value"] == pytest.approx(1.0)
    assert r["significant"] is False


def test_lift_rejects_bad_level_and_power():
    with pytest.raises(ValueError, match="level"):
        lift(Sample(10, 1, 1), Sample(10, 2, 2), level=95)
    with pytest.raises(ValueError, match="power"):
        lift(Sample(10, 1, 1), Sample(10, 2, 2), power=1.0)


def test_difference_interval_covers_the_truth_about_95_percent():
    # 2,000 simulated experiments, true rates 0.12 (arm) and 0.10 (control), 2,000 decisions
    # each: the 95% interval of the difference should cover 0.02 in 93-97% of them
    rng = np.random.default_rng(20261201)
    n, experiments = 2000, 2000
    arm_hits = rng.binomial(n, 0.12, experiments)
    control_hits = rng.binomial(n, 0.10, experiments)
    covered = 0
    for a, c in zip(arm_hits, control_hits, strict=True):
        lo, hi = lift(Sample(n, int(a), int(a)), Sample(n, int(c), int(c)))["difference_ci"]
        covered += lo <= 0.02 <= hi
    assert 0.93 <= covered / experiments <= 0.97
