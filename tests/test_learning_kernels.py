"""The learning kernels: ``kernels.bayes`` (the online Bayesian logistic model) and
``kernels.explore`` (slot-wise exploration), against their NumPy references, on
simulated data with a known truth, and by the frequencies of seeded draws.

The tests also run with ``NUMBA_DISABLE_JIT=1`` (kernels as plain Python over NumPy
scalars): the sizes shrink there (``NO_JIT``), and calls whose inputs are not finite on
purpose go through ``quiet`` (NumPy scalars warn on IEEE events that compiled code
performs silently, and pytest turns warnings into errors).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels import explore
from kernels.bayes import (
    auc,
    auc_reference,
    fold,
    fold_reference,
    learn,
    learn_reference,
    offer_prior,
    phi_reference,
    predict,
    prior_from_model,
    shared_dim,
    solve_alpha,
)
from kernels.explore import (
    EPSILON,
    GREEDY,
    RANDOM,
    SQUARECB,
    THOMPSON,
    choose,
    greedy_reference,
    logit_variance,
    logit_variance_of,
    slot_distribution,
    squarecb_gamma,
    thompson_reference,
    winner_probability,
)
from kernels.scoring import LOGIT_MAX, sigmoid
from kernels.selection import top_k
from tests.conftest import NO_JIT

POLICY_PARAM = [(GREEDY, 0.0), (EPSILON, 0.2), (SQUARECB, 8.0), (THOMPSON, 0.0), (RANDOM, 0.0)]


def quiet(fn, *args):
    with np.errstate(all="ignore"):
        return fn(*args)


def model(rng, F, D, n, G, variance=0.3, offer_variance=0.5):
    """A random prior: (shared mean, shared precision, offer mean, offer precision,
    offer features)."""
    sm, sp = prior_from_model(rng.normal(-1, 0.5), rng.normal(0, 0.3, F), rng.normal(0, 0.3, D),
                              rng.normal(0, 0.2, (F, D)), variance)
    om, op = offer_prior(G, n, F, offer_variance)
    return sm, sp, om, op, rng.normal(0, 1, (n, D))


def examples(rng, m, F, n, G):
    x = rng.normal(0, 1, (m, F)).astype(np.float32)
    return (x, rng.integers(0, n, m).astype(np.int32), rng.integers(0, G, m).astype(np.int32),
            (rng.random(m) < 0.3).astype(np.float64))


# ============================================================================ bayes
def test_prior_layout_serves_the_catalog_model(rng):
    """Before any example, the model's prediction is the catalog's: sigmoid(b + w_c.x +
    w_o.e + x'Ae), and ``fold`` gives scoring's weights = w_c + A e, bias = b + w_o.e."""
    F, D, n = 4, 3, 5
    b, w_c, w_o, A = -1.5, rng.normal(0, 1, F), rng.normal(0, 1, D), rng.normal(0, 1, (F, D))
    sm, sp = prior_from_model(b, w_c, w_o, A, 0.1)
    assert sm.shape == sp.shape == (shared_dim(F, D),) == (1 + F + D + F * D,)
    assert np.all(sp == 10.0)
    for j in range(F):
        for d in range(D):
            assert sm[1 + F + D + j * D + d] == A[j, d]
    e = rng.normal(0, 1, (n, D))
    om, op = offer_prior(2, n, F, 0.5)
    x = rng.normal(0, 1, (7, F)).astype(np.float32)
    offer = rng.integers(0, n, 7).astype(np.int32)
    mean, var = predict(sm, sp, om, op, e, x, offer, np.ones(7, dtype=np.int32))
    xd = x.astype(np.float64)
    want = b + xd @ w_c + e[offer] @ w_o + np.einsum("kj,jd,kd->k", xd, A, e[offer])
    np.testing.assert_allclose(mean, want, rtol=1e-12, atol=1e-12)
    for k in range(7):
        phi = phi_reference(x[k], e[offer[k]])
        psi = np.concatenate(([1.0], xd[k]))
        assert math.isclose(var[k], phi @ phi * 0.1 + psi @ psi * 0.5, rel_tol=1e-12)
    weights, bias, var_w, var_b = fold(sm, sp, om, op, e)
    np.testing.assert_allclose(weights[1], (w_c[None] + e @ A.T).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(bias[0], b + e @ w_o, rtol=1e-12)
    prior_var = 0.1 * (1 + (e * e).sum(1)) + 0.5  # shared (1 + sum e^2 coordinates) + own
    np.testing.assert_allclose(var_w[0], np.repeat(prior_var[:, None], F, axis=1), rtol=1e-6)
    np.testing.assert_allclose(var_b[1], prior_var, rtol=1e-12)
    with pytest.raises(ValueError):
        prior_from_model(b, w_c, w_o, A, 0.0)


def test_learn_matches_reference(rng):
    F, D, n, G = (5, 3, 6, 2) if not NO_JIT else (3, 2, 4, 2)
    m = 400 if not NO_JIT else 60
    sm, sp, om, op, e = model(rng, F, D, n, G)
    x, offer, group, y = examples(rng, m, F, n, G)
    # examples that must be skipped: offer / group out of range, a label not 0 or 1,
    # a non-finite feature
    offer[5], group[9], y[13] = n, -1, 0.5
    x[17, 1] = np.inf
    x[21, 0] = np.nan
    a = [v.copy() for v in (sm, sp, om, op)]
    r = [v.copy() for v in (sm, sp, om, op)]
    got = quiet(learn, *a, e, x, offer, group, y)
    want = quiet(learn_reference, *r, e, x, offer, group, y)
    assert all(np.isnan(got[k]) and np.isnan(want[k]) for k in (5, 9, 13, 17, 21))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    for mine, theirs in zip(a, r):
        np.testing.assert_allclose(mine, theirs, rtol=1e-8, atol=1e-12)
    assert np.all(a[1] >= sp) and np.all(a[3] >= op)  # precision never decreases


def test_solve_alpha_converges_fast_for_any_variance():
    mus = np.linspace(-LOGIT_MAX, LOGIT_MAX, 25 if not NO_JIT else 7)
    log_s = np.linspace(-12, 300, 105 if not NO_JIT else 14)
    worst = 0
    for mu in mus:
        for ls in log_s:
            s = 10.0 ** ls
            for y in (0.0, 1.0):
                alpha, t, steps = solve_alpha(float(mu), s, y)
                worst = max(worst, steps)
                # the root: alpha = y - sigmoid(t), computed without cancellation
                p = sigmoid(t)
                exact = sigmoid(-t) if y == 1.0 else -p
                assert abs(alpha - exact) <= 1e-9 * abs(exact), (mu, s, y)
                assert 0.0 <= alpha * (1 if y else -1) <= 1.0
                assert math.isclose(t, mu + alpha * s, rel_tol=1e-9, abs_tol=1e-9)
    assert worst <= 6
    assert solve_alpha(0.3, 0.0, 1.0) == (1.0 - sigmoid(0.3), 0.3, 0)  # s = 0: exact


def _truth(rng, F, D, n):
    e = rng.normal(0, 1, (n, D))
    b, w_c, w_o = -1.0, rng.normal(0, 0.6, F), rng.normal(0, 0.4, D)
    A = rng.normal(0, 0.3, (F, D))
    dev = rng.normal(0, 0.4, (n, F + 1))  # each offer's own deviation
    weights = w_c[None] + e @ A.T + dev[:, 1:]
    bias = b + e @ w_o + dev[:, 0]
    return e, weights, bias


def test_learn_converges_to_a_known_logistic_truth():
    """20,000 simulated impressions over 4 offers (2,000 without the JIT): the folded
    posterior means approach the true per-offer weights, the intervals shrink from the
    prior's and cover the truth about as often as they claim (the diagonal posterior,
    summed over two levels, errs on the wide side), and the out-of-sample predictions
    (before each example is learned) rank nearly as well as the truth."""
    rng = np.random.default_rng(11)
    F, D, n = 3, 2, 4
    m = 20_000 if not NO_JIT else 2_000
    e, w_true, b_true = _truth(rng, F, D, n)
    x = rng.normal(0, 1, (m, F)).astype(np.float32)
    offer = rng.integers(0, n, m).astype(np.int32)
    logit = b_true[offer] + np.einsum("kj,kj->k", w_true[offer], x.astype(np.float64))
    y = (rng.random(m) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    sm, sp = prior_from_model(0.0, np.zeros(F), np.zeros(D), np.zeros((F, D)), 1.0)
    om, op = offer_prior(1, n, F, 1.0)
    _, _, vw0, vb0 = fold(sm, sp, om, op, e)
    pred = learn(sm, sp, om, op, e, x, offer, np.zeros(m, dtype=np.int32), y)
    weights, bias, var_w, var_b = fold(sm, sp, om, op, e)
    tol = 0.25 if not NO_JIT else 0.6
    assert np.abs(weights[0] - w_true).max() < tol
    assert np.abs(bias[0] - b_true).max() < tol
    assert np.sqrt(var_w).max() < 0.3 * np.sqrt(vw0).min()
    assert np.sqrt(var_b).max() < 0.3 * np.sqrt(vb0).min()
    z = np.concatenate([((weights[0] - w_true) / np.sqrt(var_w[0])).ravel(),
                        (bias[0] - b_true) / np.sqrt(var_b[0])])
    assert np.mean(np.abs(z) < 1.96) >= 0.75  # 95% intervals
    # predictive intervals on fresh customers
    xt = rng.normal(0, 1, (4000, F)).astype(np.float32)
    ot = rng.integers(0, n, 4000).astype(np.int32)
    mean, var = predict(sm, sp, om, op, e, xt, ot, np.zeros(4000, dtype=np.int32))
    true_t = b_true[ot] + np.einsum("kj,kj->k", w_true[ot], xt.astype(np.float64))
    assert np.mean(np.abs(mean - true_t) < 1.96 * np.sqrt(var)) >= 0.85
    assert np.mean(np.abs(mean - true_t)) < (0.15 if not NO_JIT else 0.4)
    half = m // 2
    oracle = auc(1.0 / (1.0 + np.exp(-logit[half:])), y[half:])
    assert auc(pred[half:], y[half:]) > oracle - (0.02 if not NO_JIT else 0.06)


def test_an_offer_without_examples_keeps_its_prior(rng):
    """An offer (or a group) never shown keeps its deviation's prior exactly; its
    prediction is the shared model's, which did learn."""
    F, D, n, G = 3, 2, 5, 2
    sm, sp, om, op, e = model(rng, F, D, n, G)
    sm0, om0, op0 = sm.copy(), om.copy(), op.copy()
    m = 300 if not NO_JIT else 40
    x, offer, group, y = examples(rng, m, F, n - 1, 1)  # offers 0..n-2, group 0 only
    learn(sm, sp, om, op, e, x, offer, group, y)
    assert not np.array_equal(sm, sm0)
    np.testing.assert_array_equal(om[:, n - 1], om0[:, n - 1])
    np.testing.assert_array_equal(op[:, n - 1], op0[:, n - 1])
    np.testing.assert_array_equal(om[1], om0[1])
    np.testing.assert_array_equal(op[1], op0[1])
    xt = rng.normal(0, 1, (3, F)).astype(np.float32)
    for g in (0, 1):
        mean, _ = predict(sm, sp, om, op, e, xt, np.full(3, n - 1, dtype=np.int32),
                          np.full(3, g, dtype=np.int32))
        shared = [sm @ phi_reference(xt[k], e[n - 1]) for k in range(3)]
        np.testing.assert_allclose(mean, shared, rtol=1e-12, atol=1e-12)


def test_fold_agrees_with_predict_and_reference(rng):
    F, D, n, G = 6, 3, 7, 3
    S = shared_dim(F, D)
    sm = rng.normal(0, 0.5, S)
    sp = np.exp(rng.normal(2, 1, S))
    om = rng.normal(0, 0.3, (G, n, F + 1))
    op = np.exp(rng.normal(2, 1, (G, n, F + 1)))
    e = rng.normal(0, 1, (n, D))
    weights, bias, var_w, var_b = fold(sm, sp, om, op, e)
    assert (weights.dtype, bias.dtype, var_w.dtype, var_b.dtype) == (
        np.float32, np.float64, np.float32, np.float64)
    ref = fold_reference(sm, sp, om, op, e)
    for mine, theirs in zip((weights, bias, var_w, var_b), ref):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-9)
    m = 50
    x = rng.normal(0, 1, (m, F)).astype(np.float32)
    offer = rng.integers(0, n, m).astype(np.int32)
    group = rng.integers(0, G, m).astype(np.int32)
    mean, var = predict(sm, sp, om, op, e, x, offer, group)
    xd = x.astype(np.float64)
    served = bias[group, offer] + np.einsum("kj,kj->k", weights[group, offer].astype(np.float64),
                                            xd)
    np.testing.assert_allclose(served, mean, rtol=1e-5, atol=1e-5)  # float32 weights
    served_var = var_b[group, offer] + np.einsum("kj,kj->k",
                                                 var_w[group, offer].astype(np.float64), xd * xd)
    np.testing.assert_allclose(served_var, var, rtol=1e-5)
    # explore's helpers read the folded arrays the same way
    rows = np.arange(n, dtype=np.int32)
    for g in range(G):
        lv = logit_variance(var_w[g], var_b[g], x[0], rows)
        np.testing.assert_allclose(
            lv, var_b[g] + var_w[g].astype(np.float64) @ (xd[0] * xd[0]), rtol=1e-12)
        assert logit_variance_of(var_w[g], var_b[g], x[0], 2) == lv[2]


def test_auc_by_hand_with_ties():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, np.nan])
    labels = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4 (the NaN score is left out):
    # 1 + 0 + 1 + 1 + 1 + 1/2 (the tie) of 6 pairs
    assert auc(scores, labels) == 4.5 / 6
    assert auc_reference(scores, labels) == 4.5 / 6
    assert np.isnan(auc(np.array([0.2, 0.3]), np.array([1.0, 1.0])))  # one class: NaN
    assert np.isnan(auc(np.empty(0), np.empty(0)))
    assert auc(np.array([0.5, 0.5, 0.5]), np.array([0.0, 1.0, 0.0])) == 0.5


def test_auc_matches_reference(rng):
    for _ in range(20):
        m = int(rng.integers(2, 60))
        scores = np.round(rng.random(m), 1)  # many ties
        labels = (rng.random(m) < 0.4).astype(np.float64)
        want = auc_reference(scores, labels)
        got = auc(scores, labels)
        assert (np.isnan(got) and np.isnan(want)) or math.isclose(got, want, rel_tol=1e-12)


# ========================================================================== explore
def offers(rng, n, spread=1.0, variance=(-3.0, 0.0)):
    z = np.clip(rng.normal(-2.0, spread, n), -LOGIT_MAX, LOGIT_MAX)
    s = 10.0 ** rng.uniform(*variance, n)
    vl = rng.uniform(1.0, 3.0, n)
    return z, s, vl


def test_greedy_is_todays_ranking(rng):
    """Greedy ranks as ``selection.top_k`` over sigmoid(z) x vl does (ties by lower
    index, NaN never ranks), with probability 1, whatever the variances."""
    for trial in range(50):
        n = int(rng.integers(0, 30))
        z = np.round(rng.normal(-2, 1, n), 1)  # ties
        vl = rng.choice([0.0, 1.0, 2.0, 2.5], n)
        if n and trial % 3 == 0:
            z[rng.integers(0, n)] = np.nan
        s = rng.uniform(0, 1, n)
        k = int(rng.integers(0, 8))
        order, prob = choose(z, s, vl, k, GREEDY, 0.0)
        np.testing.assert_array_equal(order, greedy_reference(z, vl, k))
        np.testing.assert_array_equal(order, top_k(explore_scores(z, vl), k))
        assert order.dtype == np.int32 and np.all(prob == 1.0)


def explore_scores(z, vl):
    return np.array([sigmoid(a) * v for a, v in zip(z, vl)], dtype=np.float64)


def test_unrankable_and_edge_cases(rng):
    z, s, vl = offers(rng, 6)
    z[2] = np.nan
    vl[4] = np.nan
    for policy, param in POLICY_PARAM:
        order, prob = choose(z, s, vl, 10, policy, param)
        assert len(order) == 4 and 2 not in order and 4 not in order
        assert len(set(order.tolist())) == 4 and np.all((prob > 0) & (prob <= 1))
        dist = slot_distribution(z, s, vl, np.zeros(6, dtype=bool), policy, param)
        assert dist[2] == dist[4] == 0.0
        assert len(choose(z, s, vl, 0, policy, param)[0]) == 0
        assert len(choose(z[:0], s[:0], vl[:0], 3, policy, param)[0]) == 0
    # Thompson: nothing with vl > 0 left -> the greedy rule (lowest index), p = 1
    order, prob = choose(np.array([-1.0, 0.5, 0.2]), np.ones(3), np.zeros(3), 3, THOMPSON, 0.0)
    assert order.tolist() == [0, 1, 2] and prob.tolist() == [1.0, 1.0, 1.0]
    # a value x lever of +inf (overflow) makes Thompson and SquareCB slots greedy
    vinf = np.array([1.0, np.inf, 2.0])
    for policy in (THOMPSON, SQUARECB):
        order, prob = choose(np.zeros(3), np.ones(3), vinf, 1, policy, 5.0)
        assert order.tolist() == [1] and prob.tolist() == [1.0]
    # the draws without Thompson's probabilities (NaN), the same draws as with them
    z, s, vl = offers(rng, 8, spread=0.3, variance=(-2.0, 0.0))
    explore.seed(12)
    np.random.seed(12)
    order, prob = choose(z, s, vl, 3, THOMPSON, 0.0, False)
    assert np.isnan(prob).all() or len(order) == 0
    explore.seed(12)
    np.random.seed(12)
    again, prob = choose(z, s, vl, 3, THOMPSON, 0.0)
    assert again.tolist() == order.tolist() and np.all((prob > 0) & (prob <= 1))
    # bad variances: NaN and negative count as 0 (sure), +inf as VAR_MAX
    z = np.array([-1.0, -1.2, -0.9])
    s = np.array([np.nan, -1.0, np.inf])
    order, prob = choose(z, s, np.ones(3), 3, THOMPSON, 0.0)
    assert sorted(order.tolist()) == [0, 1, 2] and np.all((prob > 0) & (prob <= 1))


def test_squarecb_gamma_schedule():
    assert squarecb_gamma(10.0, 0.5, 0) == 10.0
    assert squarecb_gamma(10.0, 0.5, 400) == 200.0
    assert squarecb_gamma(2.0, 1.0, 0.5) == 2.0


def test_squarecb_probabilities_by_hand():
    z = np.array([0.0, 0.0, 0.0])
    vl = np.array([1.0, 2.0, 4.0])  # scores 0.5, 1, 2; y = score / 4: 1/8, 1/4, 1/2
    dist = slot_distribution(z, np.zeros(3), vl, np.zeros(3, dtype=bool), SQUARECB, 8.0)
    p0, p1 = 1 / (3 + 8 * (0.5 - 0.125)), 1 / (3 + 8 * (0.5 - 0.25))
    np.testing.assert_allclose(dist, [p0, p1, 1 - p0 - p1], rtol=1e-12)
    # gamma = +inf: greedy, except that an offer tied with the best keeps 1/n
    tied = slot_distribution(np.zeros(3), np.zeros(3), np.array([1.0, 4.0, 4.0]),
                             np.zeros(3, dtype=bool), SQUARECB, np.inf)
    np.testing.assert_allclose(tied, [0.0, 2 / 3, 1 / 3])


def test_distributions_are_distributions(rng):
    """Every slot's distribution: entries in [0, 1], summing to 1 (Thompson: within its
    quadrature error); choose's probabilities are those entries."""
    trials = 12 if not NO_JIT else 3
    for _ in range(trials):
        n = int(rng.integers(1, 12))
        z, s, vl = offers(rng, n, spread=0.5, variance=(-4.0, 0.5))
        placed = rng.random(n) < 0.3
        for policy, param in POLICY_PARAM:
            dist = slot_distribution(z, s, vl, placed, policy, param)
            assert np.all((dist >= 0) & (dist <= 1)) and np.all(dist[placed] == 0)
            if placed.all():
                assert dist.sum() == 0
                continue
            assert abs(dist.sum() - 1) < (1e-4 if policy == THOMPSON else 1e-12)
            order, prob = choose(z, s, vl, 3, policy, param)
            assert np.all((prob > 0) & (prob <= 1))
            done = np.zeros(n, dtype=bool)
            for q in range(len(order)):
                want = winner_probability(z, s, vl, done, order[q], policy, param)
                assert prob[q] == want
                assert want == slot_distribution(z, s, vl, done, policy, param)[order[q]]
                done[order[q]] = True


def _chi_square_ok(counts, probs, draws):
    """Pearson's statistic over the cells expected >= 5 (the rest pooled), under a
    threshold ~5 standard deviations above its mean: seeded draws, no flakiness."""
    expected = probs * draws
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    stat = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
    df = max(1, int(keep.sum()) - 1)
    return stat < df + 5 * math.sqrt(2 * df), stat, df


@pytest.mark.parametrize("policy,param", POLICY_PARAM)
def test_slot_frequencies_match_probabilities(policy, param):
    """Over many seeded draws, how often each offer fills slot 1, and slot 2 after the
    most frequent first, match the probabilities the kernels report."""
    rng = np.random.default_rng(5)
    n = 6
    z = np.array([-1.9, -2.0, -1.7, -2.4, -2.05, -3.0])
    s = np.array([0.3, 0.05, 0.6, 0.0, 0.2, 1.5])
    vl = np.array([1.0, 1.2, 0.9, 1.5, 1.1, 2.0])
    draws = 20_000 if not NO_JIT else 1_500
    explore.seed(int(rng.integers(1 << 30)))
    np.random.seed(int(rng.integers(1 << 30)))  # the generator without the JIT
    first = np.zeros((draws, 2), dtype=np.int64)
    for t in range(draws):
        order, _ = choose(z, s, vl, 2, policy, param, False)
        first[t] = order
    none = np.zeros(n, dtype=bool)
    dist = slot_distribution(z, s, vl, none, policy, param)
    ok, stat, df = _chi_square_ok(np.bincount(first[:, 0], minlength=n), dist, draws)
    assert ok, (stat, df, np.bincount(first[:, 0], minlength=n) / draws, dist)
    top = int(np.argmax(np.bincount(first[:, 0], minlength=n)))
    after = first[first[:, 0] == top, 1]
    placed = none.copy()
    placed[top] = True
    dist2 = slot_distribution(z, s, vl, placed, policy, param)
    ok, stat, df = _chi_square_ok(np.bincount(after, minlength=n), dist2, len(after))
    assert ok, (stat, df, np.bincount(after, minlength=n) / len(after), dist2)


def _hard_case(rng):
    n = int(rng.integers(2, 9))
    z = rng.normal(-2, rng.choice([0.1, 0.5, 2.0]), n)
    s = 10.0 ** rng.uniform(-6, 0.5, n)
    if rng.random() < 0.3:
        s[rng.integers(0, n)] = 0.0  # a sure offer
    vl = 10.0 ** rng.uniform(0, rng.choice([0.0, 0.3, 2.0]), n)
    if rng.random() < 0.3:
        z = np.clip(z + rng.normal(0, 20, n), -LOGIT_MAX, LOGIT_MAX)
    return z, s, vl


def test_thompson_quadrature_matches_a_dense_rule():
    """Thompson's win probabilities against ``thompson_reference`` (a dense midpoint
    rule over each offer's draw, no pruning) on random hard cases: sure offers,
    variances over 6 decades, values over 2, log-odds up to the clamp. (Measured over
    480 such cases of up to 12 offers while writing the kernel: at most 3e-5.)"""
    rng = np.random.default_rng(7)
    cases = 25 if not NO_JIT else 4
    worst = 0.0
    for _ in range(cases):
        z, s, vl = _hard_case(rng)
        placed = np.zeros(len(z), dtype=bool)
        got = slot_distribution(z, s, vl, placed, THOMPSON, 0.0)
        want = quiet(thompson_reference, z, s, vl, placed, 100_000)
        worst = max(worst, float(np.abs(got - want).max()))
        assert abs(got.sum() - 1.0) < 1e-4
    assert worst < 1e-4


def test_thompson_quadrature_matches_monte_carlo():
    """|quadrature - Monte Carlo over 200,000 draws| within 4 MC standard errors +
    1e-3, per offer, for the first and the second slot."""
    rng = np.random.default_rng(3)
    z = np.array([-2.0, -1.8, -2.3, -1.95, -2.6, -36.0, -2.1])
    s = np.array([0.4, 0.05, 1.2, 0.0, 0.8, 0.1, 0.0001])
    vl = np.array([1.0, 0.8, 1.4, 1.05, 2.5, 3.0, 1.0])
    draws = 200_000
    u = rng.standard_normal((draws, len(z)))
    t = explore._ref_log_sigmoid(z + np.sqrt(s) * u) + np.log(vl)
    for placed in (np.zeros(len(z), dtype=bool), np.eye(len(z), dtype=bool)[1]):
        tt = np.where(placed, -np.inf, t)
        freq = np.bincount(np.argmax(tt, axis=1), minlength=len(z)) / draws
        quad = slot_distribution(z, s, vl, placed, THOMPSON, 0.0)
        err = 4 * np.sqrt(quad * (1 - quad) / draws) + 1e-3
        assert np.all(np.abs(quad - freq) <= err), (quad, freq)


@pytest.mark.needs_jit("200 offers: thousands of quadratures, minutes as plain Python")
def test_thompson_with_many_offers_prunes_safely():
    """With 200 offers the candidates (hi >= the best lo) are few, and the
    probabilities still sum to 1 over them; every non-candidate would win with
    probability < 1e-15."""
    rng = np.random.default_rng(9)
    z, s, vl = offers(rng, 200, spread=1.0, variance=(-3.0, -1.0))
    placed = np.zeros(200, dtype=bool)
    dist = slot_distribution(z, s, vl, placed, THOMPSON, 0.0)
    assert 1 < np.count_nonzero(dist) < 200
    assert abs(dist.sum() - 1.0) < 1e-4
    explore.seed(4)
    for _ in range(200):
        order, prob = choose(z, s, vl, 3, THOMPSON, 0.0)
        assert dist[order[0]] > 0 and np.all((prob > 0) & (prob <= 1))
