"""decision.analytics.ope: off-policy estimators worked by hand, their bootstrap intervals'
coverage on a simulated bandit, the support diagnostics, bad input and speed."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from decision.analytics.ope import estimate


def _plain(value) -> None:
    """Every leaf is a plain Python scalar (no numpy types), so the result is JSON as is."""
    if isinstance(value, dict):
        for v in value.values():
            _plain(v)
    else:
        assert value is None or type(value) in (float, int, str, bool), type(value)


# four logged decisions, by hand
REWARD = np.array([1.0, 0.0, 1.0, 0.0])
LOGGED_P = np.array([0.5, 0.25, 0.8, 0.5])
TARGET_P = np.array([1.0, 0.5, 0.4, 0.0])
Q_LOGGED = np.array([0.6, 0.2, 0.5, 0.3])
Q_TARGET = np.array([0.7, 0.4, 0.3, 0.1])


def test_four_decisions_by_hand():
    # w = target_p / logged_p = [2, 2, 0.5, 0]; w r = [2, 0, 0.5, 0]
    # IPS   = (2 + 0 + 0.5 + 0) / 4 = 0.625
    # SNIPS = 2.5 / (2 + 2 + 0.5 + 0) = 2.5 / 4.5 = 0.5556
    # DR terms q_target + w (r - q_logged):
    #   0.7 + 2 (1 - 0.6)     = 1.5
    #   0.4 + 2 (0 - 0.2)     = 0.0
    #   0.3 + 0.5 (1 - 0.5)   = 0.55
    #   0.1 + 0 (0 - 0.3)     = 0.1      -> DR = 2.15 / 4 = 0.5375
    # ess = 4.5^2 / (4 + 4 + 0.25 + 0) = 20.25 / 8.25 = 2.4545; mean weight 4.5 / 4 = 1.125
    e = estimate(REWARD, LOGGED_P, TARGET_P, Q_LOGGED, Q_TARGET)
    assert e["ips"]["value"] == pytest.approx(0.625)
    assert e["snips"]["value"] == pytest.approx(2.5 / 4.5)
    assert e["dr"]["value"] == pytest.approx(0.5375)
    assert e["n"] == 4
    assert e["ess"] == pytest.approx(20.25 / 8.25)
    assert e["ess_share"] == pytest.approx(20.25 / 8.25 / 4)
    assert e["max_weight"] == 2.0
    assert e["mean_weight"] == pytest.approx(1.125)
    assert e["zero_share"] == 0.25
    assert e["clipped"] == 0
    assert e["support_warning"] is None  # n < 1000: the mean weight is not judged
    assert e["level"] == 0.95 and e["replicates"] == 200
    for name in ("ips", "snips", "dr"):
        assert e[name]["lo"] <= e[name]["value"] <= e[name]["hi"]
    _plain(e)
    json.dumps(e, allow_nan=False)


def test_without_a_reward_model_there_is_no_dr():
    e = estimate(REWARD, LOGGED_P, TARGET_P)
    assert e["dr"] is None
    assert e["ips"]["value"] == pytest.approx(0.625)


def test_clipping_by_hand():
    # max_weight 1.5: w = [1.5, 1.5, 0.5, 0]; IPS = (1.5 + 0.5) / 4 = 0.5,
    # SNIPS = 2 / 3.5 = 0.5714; two decisions clipped; the diagnostics keep the raw weights
    e = estimate(REWARD, LOGGED_P, TARGET_P, max_weight=1.5)
    assert e["ips"]["value"] == pytest.approx(0.5)
    assert e["snips"]["value"] == pytest.approx(2 / 3.5)
    assert e["clipped"] == 2
    assert e["max_weight"] == 2.0


def test_target_equal_to_logging_gives_the_mean_reward():
    rng = np.random.default_rng(7)
    n = 5000
    p = rng.uniform(0.1, 1.0, n)
    r = (rng.random(n) < 0.2).astype(float)
    e = estimate(r, p, p)
    assert e["ips"]["value"] == pytest.approx(r.mean())
    assert e["snips"]["value"] == pytest.approx(r.mean())
    assert e["ess"] == pytest.approx(n)
    assert e["ess_share"] == pytest.approx(1.0)
    assert e["mean_weight"] == pytest.approx(1.0) and e["max_weight"] == pytest.approx(1.0)
    assert e["support_warning"] is None
    # the bootstrap interval of a plain mean: about mean -+ 1.96 sd / sqrt(n)
    half = 1.96 * r.std() / np.sqrt(n)
    assert e["ips"]["lo"] == pytest.approx(r.mean() - half, abs=0.3 * half)
    assert e["ips"]["hi"] == pytest.approx(r.mean() + half, abs=0.3 * half)


def test_a_seed_gives_identical_intervals():
    rng = np.random.default_rng(3)
    n = 1000
    r, mu, pi = rng.random(n), rng.uniform(0.2, 1, n), rng.random(n)
    assert estimate(r, mu, pi, r, r, seed=11) == estimate(r, mu, pi, r, r, seed=11)
    other = estimate(r, mu, pi, seed=12)
    assert other["ips"]["value"] == estimate(r, mu, pi, seed=11)["ips"]["value"]
    assert other["ips"]["lo"] != estimate(r, mu, pi, seed=11)["ips"]["lo"]


# a simulated bandit: 3 equally likely contexts, 5 actions, known click probabilities
TRUE_RATES = np.array([[0.10, 0.05, 0.20, 0.08, 0.03],
                       [0.02, 0.15, 0.06, 0.12, 0.04],
                       [0.07, 0.03, 0.05, 0.25, 0.10]])


def _epsilon_greedy(best: list[int], epsilon: float) -> np.ndarray:
    """pi(a | x): epsilon spread over the 5 actions, the rest on ``best[x]``."""
    p = np.full(TRUE_RATES.shape, epsilon / TRUE_RATES.shape[1])
    p[np.arange(len(best)), best] += 1.0 - epsilon
    return p


def test_ips_and_dr_intervals_cover_the_truth_on_a_simulated_bandit():
    # logging: epsilon-greedy 0.3 on actions (0, 1, 2); target: epsilon-greedy 0.2 on
    # (2, 3, 3), mostly actions the logs show only by exploring (weights up to 0.84 / 0.06 = 14)
    logging = _epsilon_greedy([0, 1, 2], 0.3)
    target = _epsilon_greedy([2, 3, 3], 0.2)
    truth = float(np.mean((target * TRUE_RATES).sum(axis=1)))
    # truth = mean(0.04*(.10+.05+.08+.03) + .84*.20, .04*(.02+.15+.06+.04) + .84*.12,
    #              .04*(.07+.03+.05+.10) + .84*.25) = mean(.1784, .1116, .2200) = 0.17
    assert truth == pytest.approx(0.17)
    # a reward model that is off by a fixed table (DR stays unbiased through the weights)
    q_model = np.clip(TRUE_RATES + np.array([0.03, -0.02, 0.01, 0.04, -0.01]), 0, 1)

    rng = np.random.default_rng(2026)
    logs, n = 200, 2000
    x = rng.integers(0, 3, (logs, n))
    a = (rng.random((logs, n, 1)) > np.cumsum(logging, axis=1)[x]).sum(axis=2)
    r = (rng.random((logs, n)) < TRUE_RATES[x, a]).astype(float)
    q_target_x = (target * q_model).sum(axis=1)

    covered = {"ips": 0, "dr": 0}
    values = {"ips": [], "dr": []}
    for k in range(logs):
        xs, acts = x[k], a[k]
        e = estimate(r[k], logging[xs, acts], target[xs, acts],
                     q_model[xs, acts], q_target_x[xs], replicates=200, seed=k)
        for name in covered:
            covered[name] += e[name]["lo"] <= truth <= e[name]["hi"]
            values[name].append(e[name]["value"])
    for name, hits in covered.items():
        assert 0.88 <= hits / logs <= 0.99, (name, hits)
        # unbiased: the mean over 200 logs is within 3 standard errors of the truth
        v = np.array(values[name])
        assert abs(v.mean() - truth) < 3 * v.std() / np.sqrt(logs), name


def test_support_warning_for_a_target_the_logs_barely_show():
    # logging shows action 0 99.6% of the time, each other action 0.1%; the candidate always
    # picks action 3: a logged action-3 decision weighs 1 / 0.001 = 1000
    rng = np.random.default_rng(5)
    n = 5000
    logging = np.array([0.996, 0.001, 0.001, 0.001, 0.001])
    a = rng.choice(5, size=n, p=logging)
    a[:3] = 3  # make sure a few action-3 decisions are in the logs
    r = (rng.random(n) < 0.1).astype(float)
    e = estimate(r, logging[a], (a == 3).astype(float))
    assert e["max_weight"] == pytest.approx(1000.0)
    assert e["ess_share"] < 0.05
    warning = e["support_warning"]
    assert warning is not None
    assert "rarely show" in warning and "effective decisions" in warning
    assert "a single decision counts as 1,000" in warning
    assert e["zero_share"] > 0.99


def test_support_warning_for_a_mean_weight_far_from_one():
    # the candidate puts half its choices on an action never logged: weights of the logged
    # actions are 0.5 / 0.5 = 1 on half the decisions and 0 on the others -> mean 0.5
    n = 2000
    logged_p = np.full(n, 0.5)
    target_p = np.tile([0.5, 0.0], n // 2)
    e = estimate(np.ones(n), logged_p, target_p)
    assert e["mean_weight"] == pytest.approx(0.5)
    assert e["ess_share"] == pytest.approx(0.5)
    assert "mean weight is 0.50" in e["support_warning"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reward": np.ones(3), "logged_p": np.full(4, 0.5), "target_p": np.full(4, 0.5)},
     "lengths 3, 4, 4"),
    ({"reward": np.array([]), "logged_p": np.array([]), "target_p": np.array([])},
     "no logged decisions"),
    ({"logged_p": np.array([0.5, 0.0, 0.5, 0.5])}, r"logged_p must lie in \(0, 1\]"),
    ({"logged_p": np.array([0.5, 1.5, 0.5, 0.5])}, r"logged_p must lie in \(0, 1\]"),
    ({"target_p": np.array([0.5, -0.1, 0.5, 0.5])}, r"target_p must lie in \[0, 1\]"),
    ({"target_p": np.array([0.5, 1.1, 0.5, 0.5])}, r"target_p must lie in \[0, 1\]"),
    ({"reward": np.array([1.0, np.nan, 0.0, 0.0])}, "reward has 1 NaN"),
    ({"target_p": np.array([0.5, 0.5, np.nan, 0.5])}, "target_p has 1 NaN"),
    ({"reward": np.ones((2, 2))}, "1-D array"),
    ({"q_logged": np.ones(4)}, "DR needs both"),
    ({"q_logged": np.ones(4), "q_target": np.ones(3)}, "q_logged and q_target"),
    ({"q_logged": np.ones(4), "q_target": np.array([1, 1, np.inf, 1])}, "q_target has 1"),
    ({"level": 95}, "level"),
    ({"replicates": 0}, "replicates"),
    ({"max_weight": 0.0}, "max_weight"),
])
def test_bad_input_says_what_to_fix(kwargs, message):
    args = {"reward": REWARD, "logged_p": LOGGED_P, "target_p": TARGET_P} | kwargs
    with pytest.raises(ValueError, match=message):
        estimate(**args)


def test_a_million_decisions_with_200_replicates_is_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    logged_p = rng.uniform(0.05, 1.0, n)
    target_p = rng.uniform(0.0, 1.0, n)
    reward = (rng.random(n) < 0.1).astype(float)
    q = rng.random(n)
    start = time.perf_counter()
    e = estimate(reward, logged_p, target_p, q, q, replicates=200)
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0, f"{elapsed:.1f} s"
    assert e["n"] == n and e["dr"] is not None
