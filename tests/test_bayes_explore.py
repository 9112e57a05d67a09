"""The learning kernels on their own (kernels/bayes.py, kernels/explore.py, and
kernels.decide.decide_explore): against their NumPy references, against a known
truth, and the logged probabilities against the frequencies of the draws."""

from __future__ import annotations

import numpy as np
import pytest
from numba import config

from kernels import bayes, explore

FAST = not config.DISABLE_JIT  # plain Python: fewer examples and draws


def _world(rng, n=5, f=3, d=2, groups=2):
    e = rng.normal(0, 1, (n, d))
    shared_mean, shared_prec = bayes.prior_from_model(
        -1.0, rng.normal(0, 0.3, f), rng.normal(0, 0.3, d), rng.normal(0, 0.2, (f, d)), 0.1)
    offer_mean = np.zeros((groups, n, f + 1))
    offer_prec = np.full((groups, n, f + 1), 2.0)
    return shared_mean, shared_prec, offer_mean, offer_prec, e


def test_learn_matches_its_reference(rng):
    sm, sp, om, op, e = _world(rng)
    m = 300
    x = rng.normal(0, 1, (m, 3)).astype(np.float32)
    offer = rng.integers(0, 5, m).astype(np.int32)
    group = rng.integers(0, 2, m).astype(np.int32)
    y = (rng.random(m) < 0.3).astype(np.float64)
    ref = [a.copy() for a in (sm, sp, om, op)]
    predicted = bayes.learn(sm, sp, om, op, e, x, offer, group, y)
    predicted_ref = bayes.learn_reference(*ref, e, x, offer, group, y)
    for got, want in zip((sm, sp, om, op), ref):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(predicted, predicted_ref, rtol=1e-9, atol=1e-12)
    assert (sp >= ref[1] - 1e-12).all()  # evidence only adds precision


def test_learning_recovers_a_known_truth(rng):
    """One offer, no offer features: the posterior mean approaches the true weights,
    and the truth lies within a few posterior standard deviations."""
    f = 3
    truth = np.array([-0.5, 1.0, -0.8, 0.4])  # bias, then the weights
    sm, sp = bayes.prior_from_model(0.0, np.zeros(f), np.zeros(0), np.zeros((f, 0)), 1.0)
    om, op = np.zeros((1, 1, f + 1)), np.full((1, 1, f + 1), 1.0)
    m = 20_000 if FAST else 2_000
    x = rng.normal(0, 1, (m, f)).astype(np.float32)
    p = 1 / (1 + np.exp(-(truth[0] + x.astype(np.float64) @ truth[1:])))
    y = (rng.random(m) < p).astype(np.float64)
    bayes.learn(sm, sp, om, op, np.zeros((1, 0)), x, np.zeros(m, np.int32),
                np.zeros(m, np.int32), y)
    weights, bias, var_w, var_b = bayes.fold(sm, sp, om, op, np.zeros((1, 0)))
    got = np.concatenate([[bias[0, 0]], weights[0, 0].astype(np.float64)])
    sd = np.sqrt(np.concatenate([[var_b[0, 0]], var_w[0, 0].astype(np.float64)]))
    assert np.abs(got - truth).max() < (0.1 if FAST else 0.3)
    assert (np.abs(got - truth) < 5 * sd + 0.02).all()


def test_fold_is_the_posterior_mean_prediction(rng):
    sm, sp, om, op, e = _world(rng)
    m = 200
    x = rng.normal(0, 1, (m, 3)).astype(np.float32)
    offer = rng.integers(0, 5, m).astype(np.int32)
    group = rng.integers(0, 2, m).astype(np.int32)
    bayes.learn(sm, sp, om, op, e, x, offer, group, (rng.random(m) < 0.3).astype(float))
    weights, bias, var_w, var_b = bayes.fold(sm, sp, om, op, e)
    ref = bayes.fold_reference(sm, sp, om, op, e)
    for got, want in zip((weights, bias, var_w, var_b), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    z, v = bayes.predict(sm, sp, om, op, e, x[:20], offer[:20], group[:20])
    for c in range(20):
        g, i = group[c], offer[c]
        xc = x[c].astype(np.float64)
        assert z[c] == pytest.approx(bias[g, i] + weights[g, i].astype(np.float64) @ xc,
                                     rel=1e-5, abs=1e-6)
        assert v[c] == pytest.approx(var_b[g, i] + var_w[g, i].astype(np.float64) @ xc ** 2,
                                     rel=1e-4, abs=1e-6)


def test_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.8, 0.4, 0.1: pairs won 2 + 0.5 + 1 + 1 = ... by hand
    scores = np.array([0.9, 0.4, 0.8, 0.4, 0.1])
    labels = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    # (0.9 beats 0.8, 0.4, 0.1: 3) + (0.4 ties 0.4: 0.5, beats 0.1: 1, loses to 0.8) = 4.5
    assert bayes.auc(scores, labels) == pytest.approx(4.5 / 6)
    assert np.isnan(bayes.auc(scores, np.ones(5)))


# ------------------------------------------------------------------ exploration
def _frequencies(z, s, vl, k, policy, param, draws):
    explore.seed(7)
    n = z.shape[0]
    first = np.zeros(n)
    logged = np.zeros(n)
    for _ in range(draws):
        order, prob = explore.choose(z, s, vl, k, policy, param)
        first[order[0]] += 1
        logged[order[0]] = prob[0]  # the probability of slot 1 does not depend on the draw
    return first / draws, logged


@pytest.mark.parametrize("policy, param", [(explore.EPSILON, 0.3), (explore.SQUARECB, 5.0),
                                           (explore.RANDOM, 0.0)])
def test_logged_probabilities_are_the_draws_frequencies(rng, policy, param):
    z = np.array([-1.0, -0.5, -2.0, 0.3, -1.2])
    s = np.zeros(5)
    vl = np.array([10.0, 10.0, 30.0, 5.0, 12.0])
    draws = 20_000 if FAST else 2_000
    freq, logged = _frequencies(z, s, vl, 2, policy, param, draws)
    placed = np.zeros(5, dtype=np.bool_)
    dist = explore.slot_distribution(z, s, vl, placed, policy, param)
    assert dist.sum() == pytest.approx(1.0)
    seen = freq > 0
    np.testing.assert_allclose(logged[seen], dist[seen], atol=1e-12)
    tolerance = 4 * np.sqrt(dist * (1 - dist) / draws) + 1e-3
    assert (np.abs(freq - dist) <= tolerance).all(), (freq, dist)


def test_thompson_probabilities_against_monte_carlo(rng):
    z = np.array([-1.0, -0.8, -1.5, -0.9])
    s = np.array([0.3, 0.05, 1.0, 0.0])
    vl = np.array([1.0, 1.0, 1.5, 1.0])
    placed = np.zeros(4, dtype=np.bool_)
    dist = explore.slot_distribution(z, s, vl, placed, explore.THOMPSON, 0.0)
    assert dist.sum() == pytest.approx(1.0, abs=2e-3)
    draws = 200_000
    sample = z + np.sqrt(s) * rng.standard_normal((draws, 4))
    score = vl / (1 + np.exp(-sample))
    mc = np.bincount(score.argmax(axis=1), minlength=4) / draws
    assert np.abs(dist - mc).max() < 4 * 0.5 / np.sqrt(draws) + 1e-3


def test_greedy_is_todays_ranking(rng):
    z = rng.normal(-1, 1, 30)
    vl = rng.uniform(1, 50, 30)
    order, prob = explore.choose(z, np.zeros(30), vl, 5, explore.GREEDY, 0.0)
    expected = np.lexsort((np.arange(30), -(vl / (1 + np.exp(-z)))))[:5]
    assert order.tolist() == expected.tolist()
    assert prob.tolist() == [1.0] * 5
