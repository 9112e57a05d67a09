"""Bayesian logistic regression, learned one example at a time: the learning loop's model.

The model
---------
Two levels, each a diagonal Gaussian posterior over logistic weights (mean, precision):

* a *shared* model over ``phi(x, e) = [1, x (F), e (D), x (x) e (F*D)]`` of customer
  features ``x`` and offer features ``e`` (``shared_dim(F, D) = 1 + F + D + F*D``
  coordinates; the interaction ``x_j e_d`` at ``1 + F + D + j*D + d``). Its prior mean is
  the catalog's ``[model]`` (``prior_from_model``): intercept ``b``, customer weights
  ``w_c``, offer weights ``w_o`` and interactions ``A`` (F x D), so an untrained model
  serves exactly what the catalog does;
* per offer ``i`` and group ``g`` (a channel with models of its own, or the rest) a
  *deviation* over ``psi(x) = [1, x (F)]``, prior mean 0 (``offer_prior``).

The log-odds of offer ``i`` in group ``g`` for features ``x``::

    logit = m_s . phi(x, e_i) + m_gi . psi(x),      clamped to [-LOGIT_MAX, LOGIT_MAX]

and, the coordinates being independent under the posterior, its variance::

    s = sum_k v_s[k] phi_k^2 + sum_k v_gi[k] psi_k^2          (v = 1 / precision)

The update (``learn``)
----------------------
One labelled example ``(x, i, g, y)``, y = 1 (the outcome happened) or 0, is one
logistic likelihood ``p^y (1-p)^(1-y)`` times the diagonal Gaussian prior. The update is
the exact mode of that one-example posterior along the direction the likelihood moves it
(assumed density filtering with a Laplace step, Chapelle & Li 2011): every mean moves
along ``v * phi`` by the same ``alpha``, so the new log-odds is ``mu + alpha * s`` and
stationarity of the log posterior reads::

    alpha = y - sigmoid(mu + alpha * s)

``g(alpha) = alpha - y + sigmoid(mu + alpha s)`` increases (g' = 1 + s p (1-p) >= 1)
from ``g(y - 1) <= 0`` to ``g(y) >= 0``: one root in ``[y - 1, y]``. Newton's method on
alpha itself oscillates when s is large (g is then nearly a step) and crawls from one
side (about one unit of log-odds per step); ``solve_alpha`` solves instead for
``log |alpha s|``, where the equation is convex and increasing, from an upper bound
that is tight for small and large s alike: at most 6 steps for |mu| <= 36 and any s
in [1e-300, 1e300] (measured; the tests sweep 1e-12 to 1e300), to a relative error of
alpha far below 1e-10. mu is the clamped log-odds, as served.
Then, with ``p = sigmoid(mu + alpha s)`` (the fitted probability at the new mode)::

    means      += alpha * v * phi          (both levels)
    precisions += p (1 - p) * phi^2         (the likelihood's curvature at the mode)

The means and precisions are float64, updated in place, example by example in order.
``learn`` also returns each example's predicted probability *before* it was learned
from, ``sigmoid(mu)``: a prediction on data the model had not seen (progressive
validation; ``auc`` of those is an honest out-of-sample AUC).

An example whose offer or group index is out of range, whose label is not 0 or 1,
or whose log-odds or variance is not finite (non-finite features) is skipped and its
prediction is NaN: one bad example must not poison the model for good.

Folding for serving (``fold``)
------------------------------
The served model is ``scoring``'s: per offer ``weights[i]`` (float32[F]) and
``bias[i]``. Folding the shared model's offer terms into them::

    weights[g, i, j] = m_s(w_c j) + sum_d m_s(A jd) e_id + m_gi[1 + j]
    bias[g, i]       = m_s(b) + sum_d m_s(w_o d) e_id + m_gi[0]

gives ``bias + weights . x == m_s . phi + m_gi . psi`` (up to the float32 rounding of
the weights), and the logit variance for features x is
``var_b[g, i] + sum_j var_w[g, i, j] x_j^2`` with::

    var_w[g, i, j] = v_s(w_c j) + sum_d v_s(A jd) e_id^2 + v_gi[1 + j]
    var_b[g, i]    = v_s(b) + sum_d v_s(w_o d) e_id^2 + v_gi[0]

(The two levels explain the same offers, so their true posterior correlation is
negative; the diagonal sum ignores it and errs wide: on the tests' simulated truth,
95% intervals of the log-odds covered it ~99% of the time.)

Arrays
------
shared_mean, shared_prec: float64[S], S = shared_dim(F, D); offer_mean, offer_prec:
float64[G, n, F + 1]; offer_features: float64[n, D]; x: float32[m, F]; offer, group:
int32[m]; y: float64[m] (0 or 1). All C-contiguous: another layout or dtype works but
compiles another version of the kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.scoring import LOGIT_MAX, sigmoid

NEWTON_TOL = 1e-10  # the Newton step in log(alpha s) at which the solve stops
NEWTON_MAX = 50  # Newton steps at most (6 suffice: see solve_alpha)


def shared_dim(F: int, D: int) -> int:
    """Coordinates of the shared model: [1, x (F), e (D), x (x) e (F*D)]."""
    return 1 + F + D + F * D


def prior_from_model(intercept, w_c, w_o, A, variance):
    """(mean float64[S], precision float64[S]): the shared prior centred on the
    catalog's ``[model]`` (intercept, customer_weights float[F], offer_weights float[D],
    interactions float[F, D]), each coordinate with variance ``variance`` (> 0)."""
    w_c = np.asarray(w_c, dtype=np.float64).reshape(-1)
    w_o = np.asarray(w_o, dtype=np.float64).reshape(-1)
    F, D = w_c.shape[0], w_o.shape[0]
    A = np.asarray(A, dtype=np.float64).reshape(F, D)
    if not variance > 0.0:
        raise ValueError(f"prior variance must be > 0, got {variance}")
    mean = np.concatenate(([float(intercept)], w_c, w_o, A.reshape(-1)))
    prec = np.full(mean.shape[0], 1.0 / variance)
    return mean, prec


def offer_prior(groups: int, n: int, F: int, variance):
    """(mean, precision) float64[groups, n, F + 1]: every offer's deviation at 0 with
    variance ``variance`` (> 0)."""
    if not variance > 0.0:
        raise ValueError(f"prior variance must be > 0, got {variance}")
    return (np.zeros((groups, n, F + 1)), np.full((groups, n, F + 1), 1.0 / variance))


@njit(cache=True, nogil=True, error_model="numpy")
def _clamp_logit(z):
    if z > LOGIT_MAX:
        return LOGIT_MAX
    if z < -LOGIT_MAX:
        return -LOGIT_MAX
    return z


@njit(cache=True, nogil=True, error_model="numpy")
def _p_q(t):
    """(sigmoid(t), sigmoid(-t)), each accurate (no 1 - p cancellation)."""
    if t >= 0.0:
        e = math.exp(-t)
        return 1.0 / (1.0 + e), e / (1.0 + e)
    e = math.exp(t)
    return e / (1.0 + e), 1.0 / (1.0 + e)


@njit(cache=True, nogil=True, error_model="numpy")
def _softplus(t):
    """log(1 + e^t), without overflow."""
    if t > 0.0:
        return t + math.log1p(math.exp(-t))
    return math.log1p(math.exp(t))


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_binary(mu, s):
    """For y = 1: the root as (log(alpha s), Newton steps); see ``solve_alpha``."""
    log_s = math.log(s)
    # upper bounds of alpha s = t - mu: s sigmoid(-mu), and log(1 + s e^-mu) (W(z) <=
    # log(1 + z)); K below is convex and increasing, so Newton from the right of the
    # root moves left monotonically and never overshoots it
    c = log_s - mu  # log(s e^-mu)
    x = min(log_s - _softplus(mu), c if c < -30.0 else math.log(_softplus(c)))
    steps = 0
    for it in range(NEWTON_MAX):
        steps = it + 1
        ex = math.exp(x)
        k = x + _softplus(mu + ex) - log_s
        if k <= 0.0:
            break  # at the root (to rounding): a step would only move left of it
        p = _p_q(mu + ex)[0]
        dx = k / (1.0 + p * ex)
        x -= dx
        if dx <= NEWTON_TOL:
            break
    return x, steps


@njit(cache=True, nogil=True, error_model="numpy")
def solve_alpha(mu, s, y):
    """The root ``alpha`` of ``alpha = y - sigmoid(mu + alpha s)`` for a label y in
    {0, 1} and s >= 0, and the new log-odds ``mu + alpha s``: (alpha, log-odds, Newton
    steps).

    For y = 1, with ``x = log(alpha s)``, the equation reads ``K(x) = x + softplus(mu +
    e^x) - log(s) = 0``, K convex and increasing (K' = 1 + sigmoid(mu + e^x) e^x):
    Newton's method from an upper bound of the root (``min(s sigmoid(-mu), log(1 + s
    e^-mu))``, tight for small and for large s alike) converges monotonically, in at
    most 6 steps for any s in [1e-300, 1e300] and |mu| <= 36, to a relative error of
    alpha far below ``NEWTON_TOL``. y = 0 is the mirror image (mu -> -mu, alpha ->
    -alpha). s = 0: alpha = y - sigmoid(mu)."""
    if not s > 0.0:
        return y - _p_q(mu)[0], mu, 0
    sign = 1.0 if y == 1.0 else -1.0
    x, steps = _solve_binary(sign * mu, s)
    return sign * math.exp(x - math.log(s)), mu + sign * math.exp(x), steps


@njit(cache=True, nogil=True, error_model="numpy")
def _logit_and_variance(sm, sp, om, op, e, x, F, D):
    """(log-odds unclamped, its variance) of one example; ``x`` float64[F]."""
    mu = sm[0] + om[0]
    s = 1.0 / sp[0] + 1.0 / op[0]
    for j in range(F):
        xj = x[j]
        mu += (sm[1 + j] + om[1 + j]) * xj
        s += (1.0 / sp[1 + j] + 1.0 / op[1 + j]) * (xj * xj)
    for d in range(D):
        ed = e[d]
        mu += sm[1 + F + d] * ed
        s += ed * ed / sp[1 + F + d]
    base = 1 + F + D
    for j in range(F):
        xj = x[j]
        row = base + j * D
        for d in range(D):
            ph = xj * e[d]
            mu += sm[row + d] * ph
            s += ph * ph / sp[row + d]
    return mu, s


@njit(cache=True, nogil=True, error_model="numpy")
def learn(shared_mean, shared_prec, offer_mean, offer_prec, offer_features, x, offer, group, y):
    """Learn from examples ``(x[k], offer[k], group[k], y[k])`` in order, updating the
    four posterior arrays in place (module docstring). Returns float64[m]: each
    example's predicted probability before it was learned from (NaN: skipped)."""
    m = x.shape[0]
    F = x.shape[1]
    D = offer_features.shape[1]
    G = offer_mean.shape[0]
    n = offer_mean.shape[1]
    out = np.empty(m, dtype=np.float64)
    xd = np.empty(F, dtype=np.float64)
    base = 1 + F + D
    for k in range(m):
        i = offer[k]
        g = group[k]
        yk = y[k]
        if i < 0 or i >= n or g < 0 or g >= G or not (yk == 0.0 or yk == 1.0):
            out[k] = np.nan
            continue
        for j in range(F):
            xd[j] = np.float64(x[k, j])
        e = offer_features[i]
        om = offer_mean[g, i]
        op = offer_prec[g, i]
        mu, s = _logit_and_variance(shared_mean, shared_prec, om, op, e, xd, F, D)
        if not (math.isfinite(mu) and math.isfinite(s)):
            out[k] = np.nan
            continue
        mu = _clamp_logit(mu)
        out[k] = sigmoid(mu)
        alpha, t, _ = solve_alpha(mu, s, yk)
        p, q = _p_q(t)
        c = p * q
        # psi = [1, x] and the first 1 + F coordinates of phi = [1, x, ...]
        shared_mean[0] += alpha / shared_prec[0]
        shared_prec[0] += c
        om[0] += alpha / op[0]
        op[0] += c
        for j in range(F):
            xj = xd[j]
            cx = c * (xj * xj)
            shared_mean[1 + j] += alpha * xj / shared_prec[1 + j]
            shared_prec[1 + j] += cx
            om[1 + j] += alpha * xj / op[1 + j]
            op[1 + j] += cx
        for d in range(D):
            ed = e[d]
            shared_mean[1 + F + d] += alpha * ed / shared_prec[1 + F + d]
            shared_prec[1 + F + d] += c * (ed * ed)
        for j in range(F):
            axj = alpha * xd[j]
            cxj = c * xd[j]
            row = base + j * D
            for d in range(D):
                ed = e[d]
                shared_mean[row + d] += axj * ed / shared_prec[row + d]
                shared_prec[row + d] += cxj * xd[j] * (ed * ed)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def predict(shared_mean, shared_prec, offer_mean, offer_prec, offer_features, x, offer, group):
    """(mean log-odds float64[m], clamped like ``learn``'s; log-odds variance
    float64[m]) of each row's offer and group under the current posterior (NaN for an
    index out of range)."""
    m = x.shape[0]
    F = x.shape[1]
    D = offer_features.shape[1]
    G = offer_mean.shape[0]
    n = offer_mean.shape[1]
    mean = np.empty(m, dtype=np.float64)
    var = np.empty(m, dtype=np.float64)
    xd = np.empty(F, dtype=np.float64)
    for k in range(m):
        i = offer[k]
        g = group[k]
        if i < 0 or i >= n or g < 0 or g >= G:
            mean[k] = np.nan
            var[k] = np.nan
            continue
        for j in range(F):
            xd[j] = np.float64(x[k, j])
        mu, s = _logit_and_variance(shared_mean, shared_prec, offer_mean[g, i],
                                    offer_prec[g, i], offer_features[i], xd, F, D)
        mean[k] = _clamp_logit(mu)  # NaN stays NaN
        var[k] = s
    return mean, var


@njit(cache=True, nogil=True, error_model="numpy")
def fold(shared_mean, shared_prec, offer_mean, offer_prec, offer_features):
    """The posterior folded per offer for serving (module docstring): (weights
    float32[G, n, F], bias float64[G, n], var_w float32[G, n, F], var_b float64[G, n])."""
    G = offer_mean.shape[0]
    n = offer_mean.shape[1]
    F = offer_mean.shape[2] - 1
    D = offer_features.shape[1]
    base = 1 + F + D
    weights = np.empty((G, n, F), dtype=np.float32)
    var_w = np.empty((G, n, F), dtype=np.float32)
    bias = np.empty((G, n), dtype=np.float64)
    var_b = np.empty((G, n), dtype=np.float64)
    w_row = np.empty(F, dtype=np.float64)
    v_row = np.empty(F, dtype=np.float64)
    for i in range(n):
        e = offer_features[i]
        b0 = shared_mean[0]
        vb0 = 1.0 / shared_prec[0]
        for d in range(D):
            b0 += shared_mean[1 + F + d] * e[d]
            vb0 += e[d] * e[d] / shared_prec[1 + F + d]
        for j in range(F):
            w = shared_mean[1 + j]
            v = 1.0 / shared_prec[1 + j]
            row = base + j * D
            for d in range(D):
                w += shared_mean[row + d] * e[d]
                v += e[d] * e[d] / shared_prec[row + d]
            w_row[j] = w
            v_row[j] = v
        for g in range(G):
            om = offer_mean[g, i]
            op = offer_prec[g, i]
            bias[g, i] = b0 + om[0]
            var_b[g, i] = vb0 + 1.0 / op[0]
            for j in range(F):
                weights[g, i, j] = np.float32(w_row[j] + om[1 + j])
                var_w[g, i, j] = np.float32(v_row[j] + 1.0 / op[1 + j])
    return weights, bias, var_w, var_b


@njit(cache=True, nogil=True, error_model="numpy")
def auc(scores, labels):
    """Area under the ROC curve of ``scores`` for ``labels`` (positive: label > 0.5):
    the Mann-Whitney statistic P(score of a positive > score of a negative) + 0.5
    P(equal), tied scores sharing their average rank. Rows with a NaN score or label
    are left out. NaN when either class is empty (no pair to compare)."""
    m = scores.shape[0]
    keep = np.empty(m, dtype=np.int64)
    size = 0
    for k in range(m):
        if scores[k] == scores[k] and labels[k] == labels[k]:
            keep[size] = k
            size += 1
    keep = keep[:size]
    vals = np.empty(size, dtype=np.float64)
    for r in range(size):
        vals[r] = scores[keep[r]]
    order = np.argsort(vals)
    n_pos = 0.0
    rank_sum = 0.0
    r = 0
    while r < size:
        t = r
        v = vals[order[r]]
        while t + 1 < size and vals[order[t + 1]] == v:
            t += 1
        avg = 0.5 * (r + t) + 1.0  # the average of ranks r+1 .. t+1
        for u in range(r, t + 1):
            if labels[keep[order[u]]] > 0.5:
                n_pos += 1.0
                rank_sum += avg
        r = t + 1
    n_neg = size - n_pos
    if n_pos == 0.0 or n_neg == 0.0:
        return np.nan
    return (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


# --------------------------------------------------------------------- references
def phi_reference(x, e):
    """The shared model's features [1, x, e, x (x) e] (float64)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    return np.concatenate(([1.0], x, e, np.outer(x, e).reshape(-1)))


def learn_reference(shared_mean, shared_prec, offer_mean, offer_prec, offer_features, x, offer,
                    group, y):
    """``learn`` as a plain loop over explicit feature vectors; the root of the
    one-example equation by bisection to machine precision (not Newton)."""
    out = np.empty(len(y))
    G, n = offer_mean.shape[:2]
    for k in range(len(y)):
        i, g, yk = int(offer[k]), int(group[k]), float(y[k])
        if not (0 <= i < n and 0 <= g < G and yk in (0.0, 1.0)):
            out[k] = np.nan
            continue
        phi = phi_reference(x[k], offer_features[i])
        psi = np.concatenate(([1.0], np.asarray(x[k], dtype=np.float64)))
        mu = shared_mean @ phi + offer_mean[g, i] @ psi
        s = np.sum(phi * phi / shared_prec) + np.sum(psi * psi / offer_prec[g, i])
        if not (np.isfinite(mu) and np.isfinite(s)):
            out[k] = np.nan
            continue
        mu = float(np.clip(mu, -LOGIT_MAX, LOGIT_MAX))
        out[k] = 1.0 / (1.0 + math.exp(-mu))
        lo, hi = yk - 1.0, yk
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid - yk + _sigmoid_ref(mu + mid * s) > 0.0:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1e-15:
                break
        alpha = 0.5 * (lo + hi)
        p = _sigmoid_ref(mu + alpha * s)
        c = p * _sigmoid_ref(-(mu + alpha * s))
        shared_mean += alpha * phi / shared_prec
        offer_mean[g, i] += alpha * psi / offer_prec[g, i]
        shared_prec += c * phi * phi
        offer_prec[g, i] += c * psi * psi
    return out


def _sigmoid_ref(t):
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def fold_reference(shared_mean, shared_prec, offer_mean, offer_prec, offer_features):
    F, D = offer_mean.shape[2] - 1, offer_features.shape[1]
    e = np.asarray(offer_features, dtype=np.float64)
    b, w_c, w_o = shared_mean[0], shared_mean[1:1 + F], shared_mean[1 + F:1 + F + D]
    A = shared_mean[1 + F + D:].reshape(F, D)
    v = 1.0 / shared_prec
    vb, vw_c, vw_o = v[0], v[1:1 + F], v[1 + F:1 + F + D]
    vA = v[1 + F + D:].reshape(F, D)
    w = w_c[None, :] + e @ A.T  # [n, F]
    bias = b + e @ w_o  # [n]
    var_w = vw_c[None, :] + (e * e) @ vA.T
    var_b = vb + (e * e) @ vw_o
    ov = 1.0 / offer_prec
    return ((w[None] + offer_mean[:, :, 1:]).astype(np.float32), bias[None] + offer_mean[:, :, 0],
            (var_w[None] + ov[:, :, 1:]).astype(np.float32), var_b[None] + ov[:, :, 0])


def auc_reference(scores, labels):
    """Every (positive, negative) pair counted: 1 when the positive scores higher,
    1/2 when equal."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    keep = ~(np.isnan(scores) | np.isnan(labels))
    pos = scores[keep & (labels > 0.5)]
    neg = scores[keep & ~(labels > 0.5)]
    if len(pos) == 0 or len(neg) == 0:
        return np.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
