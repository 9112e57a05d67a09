"""Exploration: which eligible offer goes in each slot, and with what probability.

Inputs, per eligible offer (in ascending catalog index: "ties to the lower catalog
index" is "ties to the lower position"), float64[n] each: ``z`` the mean log-odds
(clamped, as ``scoring.logit_of``), ``s`` the log-odds variance (``logit_variance``;
NaN or < 0 is taken as 0, above ``VAR_MAX`` as ``VAR_MAX``), ``vl`` value x lever
(finite, >= 0). The greedy score is ``sigmoid(z) * vl`` (``scoring``'s P x V x L); an
offer whose score is NaN never ranks, under any policy.

``choose`` fills ``r = min(k, rankable offers)`` slots one after the other; the offer of
slot q is drawn by the policy from the offers not placed in slots < q, and ``prob[q]``
is the probability that the policy put that offer there, given slots < q (what
off-policy evaluation needs). ``slot_distribution`` is the whole distribution of one
slot, ``winner_probability`` one entry of it (``choose``'s ``prob[q]`` is
``winner_probability(z, s, vl, placed = order[:q], order[q], ...)``).

Policies
--------
``GREEDY``: argmax score (ties: lower index), probability 1: exactly today's ranking.

``EPSILON`` (param = epsilon, clipped to [0, 1]): with probability epsilon uniform over
the n remaining offers, else the argmax; p = (1 - epsilon) [argmax] + epsilon / n.

``SQUARECB`` (param = gamma >= 0, ``squarecb_gamma``; Foster & Rakhlin 2020's inverse
gap weighting): ``y_a = score_a / max_a vl_a`` (rewards scaled to [0, 1]), b the argmax,
``p_a = 1 / (n + gamma (y_b - y_a))`` for a != b and ``p_b = 1 - sum of the others``
(>= 1 / n).

``RANDOM``: uniform over the remaining, p = 1 / n.

``THOMPSON``: one fresh posterior draw per offer and slot, ``z~ = z + sqrt(s) N(0, 1)``;
the slot takes the argmax of ``sigmoid(z~) vl`` (ties: lower index; scores within
rounding of each other are compared as ``log sigmoid(z~) + log vl``, which does not
round to 1 past z~ = 37). Offers with vl = 0 score 0: they win only when no offer with
vl > 0 is left (then by the greedy rule, probability 1).

Thompson's probabilities
------------------------
*Candidates.* With ``lo_a`` / ``hi_a`` the scores at z -/+ 8 sqrt(s), an offer whose
``hi_a`` is below ``L = max lo`` over the remaining offers would win with probability
below Phi(-8) = 6e-16: it is not drawn (probability 0), nor is a candidate whose
``hi_a`` is below the best draw so far. So the procedure that runs is Thompson sampling
with draws capped at 8 standard deviations (a difference below 1e-13 with 200 offers),
and its probabilities are what is reported.

*The winner's probability* is an integral over its own draw u ~ N(0, 1)::

    P(w) = integral phi(u) prod_{b != w} F_b(t_w(u)) du,   F_b(t) = P(score_b < t)
         = Phi(g_b(u)),  g_b = (logit(t_w(u) / vl_b) - z_b) / sqrt(s_b)  (+inf: t >= vl_b)

(a competitor with s_b = 0 is a step, below which w cannot win; a winner with s_w = 0
needs no integral: the product at its score). Gauss-Hermite quadrature over the whole
line cannot do this to 1e-3: a competitor much surer than w (s_b << s_w) makes its
factor a step in u, and a 48-point rule's nodes near u = 0 are 0.45 apart (errors up to
~0.1 measured). Instead the integral is swept right to left, from ``u_top`` (above it
every factor is > Phi(5): 1) down, in pieces of at most ``QUAD_H`` on which no factor's
argument (where it is in [-5, 5]) changes by more than ``QUAD_G`` (a piece is halved
until so, and may double again after), each by ``QUAD_NODES``-point Gauss-Legendre.
The sweep stops when what is left below, at most ``Phi(y) prod_b Phi(g_b(y))`` (the
integrand rises with u), is below ``QUAD_STOP``, or at u = -8 or a sure competitor's
step. A factor at or past Phi(5) on a piece counts as 1 there (relative error <= 3e-7
per factor).

*Accuracy.* On random hard cases (2 to 12 candidates, variances over 6 decades, some
sure, values over 2 decades, log-odds up to the clamp) the largest difference from a
100,000-point midpoint rule without pruning is 3e-5 (tests: < 1e-4), and the
probabilities of a slot sum to 1 within 3e-5; tests also compare with 200,000 Monte
Carlo draws (within their error + 1e-3). Reported probabilities are clipped to
[``PROB_FLOOR``, 1].

*Cost* grows with the competitors whose factor is below Phi(5) where the winner's
draw matters (~8 nodes per piece x 3-4 pieces x those factors, a log and an exp each).
``benchmarks/test_bench_learner.py``, 150 offers, k = 3, log-odds ~N(-3, 1), values
U(1, 10), measured at machine factor ~2.7 (divide by it for the reference machine):
log-odds variance U(0.0005, 0.003) 25 us per call (a handful compete); U(0.005, 0.05)
118 us (~50 candidates, ~20 factors active per winner); 0.3 for all, 490 us (all
compete); the draws alone (``choose(..., with_prob=False)``: probabilities NaN, for a
caller that computes them later with ``winner_probability``) 14 us. Greedy, epsilon,
random ~6 us and SquareCB ~8 us at that factor, mostly the 150 sigmoids and numba's
dispatch from Python.

Random numbers come from numba's generator inside the kernels (one stream per thread;
``seed`` seeds it, for tests). With ``NUMBA_DISABLE_JIT=1`` that is NumPy's global one.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.scoring import sigmoid

GREEDY, EPSILON, SQUARECB, THOMPSON, RANDOM = 0, 1, 2, 3, 4
POLICIES = {"greedy": GREEDY, "epsilon": EPSILON, "squarecb": SQUARECB, "thompson": THOMPSON,
            "random": RANDOM}

SIGMAS = 8.0  # candidates: hi = score at z + SIGMAS sd reaches the best lo (z - SIGMAS sd)
TAIL_SIGMAS = 5.0  # in the integral, a factor >= Phi(5) on a piece counts as 1 there
PROB_FLOOR = 1e-12  # the least probability reported for a Thompson winner
VAR_MAX = 1e6  # a log-odds variance above this (or +inf) is taken as this
QUAD_NODES = 8  # Gauss-Legendre nodes per piece
QUAD_G = 8.0  # the most a factor's argument may change across one piece
QUAD_H = 3.0  # the widest piece, in the winner's standard deviations
QUAD_MIN_WIDTH = 1e-9  # a piece is never halved below this width
QUAD_MAX_TRIES = 400  # pieces tried (accepted or halved) per probability, at most
QUAD_STOP = 1e-9  # the sweep stops when what is left below is at most this
_GL_X, _GL_W = np.polynomial.legendre.leggauss(QUAD_NODES)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def squarecb_gamma(scale: float, exponent: float, t: float) -> float:
    """SquareCB's learning rate after ``t`` learned examples:
    ``scale * max(1, t) ** exponent``."""
    return float(scale) * max(1.0, float(t)) ** float(exponent)


@njit(cache=True, nogil=True, error_model="numpy")
def seed(n):
    """Seed the kernels' random generator (this thread's; tests)."""
    np.random.seed(n)


@njit(cache=True, nogil=True, error_model="numpy")
def logit_variance_of(var_w, var_b, x, i):
    """Log-odds variance of offer ``i`` for features ``x``: ``var_b[i] + sum_j
    var_w[i, j] x_j^2`` (``bayes.fold``'s var_w float32[n, F], var_b float64[n]), in
    float64."""
    v = var_b[i]
    for j in range(x.shape[0]):
        xj = np.float64(x[j])
        v += np.float64(var_w[i, j]) * (xj * xj)
    return v


@njit(cache=True, nogil=True, error_model="numpy")
def logit_variance(var_w, var_b, x, rows):
    """float64[len(rows)]: ``logit_variance_of`` for each offer index in ``rows``."""
    out = np.empty(rows.shape[0], dtype=np.float64)
    for r in range(rows.shape[0]):
        out[r] = logit_variance_of(var_w, var_b, x, rows[r])
    return out


# ------------------------------------------------------------------ small helpers
@njit(cache=True, nogil=True, error_model="numpy")
def _log_sigmoid(t):
    """log(sigmoid(t)) = -softplus(-t), without overflow or rounding to 0."""
    if t >= 0.0:
        return -math.log1p(math.exp(-t))
    return t - math.log1p(math.exp(t))


@njit(cache=True, nogil=True, error_model="numpy")
def _logit_of_exp(c):
    """logit(e^c) for c < 0 (+inf for c >= 0): the log-odds whose sigmoid is e^c."""
    if c >= 0.0:
        return np.inf
    return c - math.log(-math.expm1(c))


@njit(cache=True, nogil=True, error_model="numpy")
def _cdf(x):
    """Phi(x), the standard normal CDF: Hart's rational approximation 5666 (as in
    West 2005), relative error < 1e-8 down to x = -37 and absolute < 3e-16; 1.5x
    faster than ``0.5 erfc(-x / sqrt 2)``."""
    a = abs(x)
    if a > 37.0:
        c = 0.0
    else:
        e = math.exp(-0.5 * a * a)
        if a < 7.07106781186547:
            num = ((((((3.52624965998911e-02 * a + 0.700383064443688) * a
                       + 6.37396220353165) * a + 33.912866078383) * a + 112.079291497871) * a
                    + 221.213596169931) * a + 220.206867912376)
            den = (((((((8.83883476483184e-02 * a + 1.75566716318264) * a
                        + 16.064177579207) * a + 86.7807322029461) * a + 296.564248779674) * a
                     + 637.333633378831) * a + 793.826512519948) * a + 440.413735824752)
            c = e * num / den
        else:
            c = e / (a + 1.0 / (a + 2.0 / (a + 3.0 / (a + 4.0 / (a + 0.65))))) \
                / 2.506628274631
    return 1.0 - c if x > 0.0 else c


@njit(cache=True, nogil=True, error_model="numpy")
def _clean_sd(v):
    """sqrt of a log-odds variance: NaN or negative -> 0, above VAR_MAX -> VAR_MAX."""
    if not v > 0.0:
        return 0.0
    return math.sqrt(min(v, VAR_MAX))


@njit(cache=True, nogil=True, error_model="numpy")
def _greedy_scores(z, vl):
    n = z.shape[0]
    score = np.empty(n, dtype=np.float64)
    for i in range(n):
        score[i] = sigmoid(z[i]) * vl[i]
    return score


@njit(cache=True, nogil=True, error_model="numpy")
def _argmax(score, free):
    """The free offer with the highest score (ties: lower index); -1 if none."""
    best = -1
    for i in range(score.shape[0]):
        if free[i] and (best < 0 or score[i] > score[best]):
            best = i
    return best


@njit(cache=True, nogil=True, error_model="numpy")
def _nth_free(free, j):
    """The index of the j-th (0-based) free offer."""
    for i in range(free.shape[0]):
        if free[i]:
            if j == 0:
                return i
            j -= 1
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def _uniform_index(count):
    """A uniform draw in 0 .. count - 1."""
    j = np.int64(np.random.random() * count)
    return min(j, count - 1)


# ------------------------------------------------------------------ squarecb
@njit(cache=True, nogil=True, error_model="numpy")
def _squarecb_setup(score, vl, free, count, gamma):
    """(b, y scale 1 / max vl, gamma, p_b); b = -1 when a value x lever is +inf (the
    slot is then greedy)."""
    b = _argmax(score, free)
    vmax = 0.0
    for i in range(score.shape[0]):
        if free[i] and vl[i] > vmax:
            vmax = vl[i]
    if vmax == np.inf:
        return -1, 0.0, 0.0, 1.0
    scale = 1.0 / vmax if vmax > 0.0 else 0.0
    if not gamma > 0.0:
        gamma = 0.0
    yb = score[b] * scale
    others = 0.0
    for i in range(score.shape[0]):
        if free[i] and i != b:
            others += _squarecb_p(yb, score[i] * scale, gamma, count)
    return b, scale, gamma, 1.0 - others


@njit(cache=True, nogil=True, error_model="numpy")
def _squarecb_p(yb, ya, gamma, count):
    """p_a = 1 / (n + gamma (y_b - y_a)) for a != b (an offer tied with b: 1 / n, even
    for gamma = +inf)."""
    gap = yb - ya
    return 1.0 / (count + gamma * gap) if gap > 0.0 else 1.0 / count


# ------------------------------------------------------------------ thompson
@njit(cache=True, nogil=True, error_model="numpy")
def _thompson_setup(z, s):
    """Per offer: sd, and room for the scores at z -/+ SIGMAS sd (NaN: not computed
    yet; ``_candidates`` computes the few it needs)."""
    n = z.shape[0]
    sd = np.empty(n, dtype=np.float64)
    for i in range(n):
        sd[i] = _clean_sd(s[i])
    return sd, np.full(n, np.nan), np.full(n, np.nan)


@njit(cache=True, nogil=True, error_model="numpy")
def _candidates(z, sd, vl, score, free, lo, hi, cand):
    """Fill ``cand`` with the free offers that can win (vl > 0 and hi >= the largest
    lo), in index order, their lo and hi computed; return their count, 0 when no free
    offer has vl > 0, -1 when one has vl = +inf (the slot is then greedy).

    Only what decides is computed: lo <= score, so the largest lo is among the offers
    scoring above the best's lo; and hi <= vl, hi <= score e^(SIGMAS sd) <= score /
    (1 - SIGMAS sd) (for SIGMAS sd < 1) rule most others out without an exp."""
    n = z.shape[0]
    best = -1
    for i in range(n):
        if free[i] and vl[i] > 0.0:
            if vl[i] == np.inf:
                return -1
            if best < 0 or score[i] > score[best]:
                best = i
    if best < 0:
        return 0
    # (lo and hi are written out here, not called per offer: a call with array
    # arguments costs ~80 ns of reference counting, more than the exp)
    if lo[best] != lo[best]:
        lo[best] = sigmoid(z[best] - SIGMAS * sd[best]) * vl[best]
    top = lo[best]
    for i in range(n):
        if free[i] and vl[i] > 0.0 and score[i] > top:
            if lo[i] != lo[i]:
                lo[i] = sigmoid(z[i] - SIGMAS * sd[i]) * vl[i]
            top = max(top, lo[i])
    size = 0
    for i in range(n):
        if not (free[i] and vl[i] > 0.0):
            continue
        if score[i] < top:
            if vl[i] < top:
                continue
            d = SIGMAS * sd[i]
            if d < 1.0 and score[i] < top * (1.0 - d) * (1.0 - 1e-12):
                continue
            if hi[i] != hi[i]:
                hi[i] = sigmoid(z[i] + d) * vl[i]
            if hi[i] < top:
                continue
        cand[size] = i
        size += 1
    for c in range(size):
        i = cand[c]
        if lo[i] != lo[i]:
            lo[i] = sigmoid(z[i] - SIGMAS * sd[i]) * vl[i]
        if hi[i] != hi[i]:
            hi[i] = sigmoid(z[i] + SIGMAS * sd[i]) * vl[i]
    return size


@njit(cache=True, nogil=True, error_model="numpy")
def _thompson_draw(z, sd, vl, hi, cand, size):
    """The candidate whose draw scores highest (ties: lower index). Scores are compared
    as sigmoid(z~) vl, and as log-scores when they are within rounding of each other
    (sigmoid rounds to 1.0 past z~ = 37; log sigmoid does not). The candidate with the
    highest ``hi`` draws first; a candidate whose ``hi`` is below the best draw so far
    is not drawn (its draw beats that with probability < Phi(-SIGMAS))."""
    first = cand[0]
    for c in range(1, size):
        if hi[cand[c]] > hi[first]:
            first = cand[c]
    best = -1
    best_t = -1.0
    best_a = 0.0
    for c in range(-1, size):
        i = first if c < 0 else cand[c]
        if c >= 0 and (i == first or hi[i] < best_t):
            continue
        a = z[i]
        if sd[i] > 0.0:
            a += sd[i] * np.random.standard_normal()
        t = sigmoid(a) * vl[i]
        if best < 0:
            take = True
        elif abs(t - best_t) <= 1e-12 * best_t:
            ti = _log_sigmoid(a) + math.log(vl[i])
            tb = _log_sigmoid(best_a) + math.log(vl[best])
            take = ti > tb or (ti == tb and i < best)
        else:
            take = t > best_t
        if take:
            best = i
            best_t = t
            best_a = a
    return best


@njit(cache=True, nogil=True, error_model="numpy")
def _u_at(h, zw, sdw):
    """The winner's standard draw u at which its score is ``h`` times its vl (+inf for
    h >= 1, -inf for h <= 0)."""
    if h >= 1.0:
        return np.inf
    if h <= 0.0:
        return -np.inf
    return (math.log(h / (1.0 - h)) - zw) / sdw


@njit(cache=True, nogil=True, error_model="numpy")
def _u_meeting(t, vlb, zw, sdw, vlw):
    """The winner's standard draw u at which its score equals ``sigmoid(t) vlb``
    (+inf when it never does); near saturation (sigmoid(t) vlb / vlw > 1/2) through
    log-scores, which do not round to 1."""
    h = sigmoid(t) * vlb / vlw
    if h <= 0.5:
        return _u_at(h, zw, sdw)
    c = _log_sigmoid(t) + math.log(vlb) - math.log(vlw)
    return (_logit_of_exp(c) - zw) / sdw


@njit(cache=True, nogil=True, error_model="numpy")
def _node(a):
    """(sigmoid(a), sigmoid(-a)) at the winner's log-odds a: what every factor needs."""
    if a >= 0.0:
        e = math.exp(-a)
        return 1.0 / (1.0 + e), e / (1.0 + e)
    e = math.exp(a)
    return e / (1.0 + e), 1.0 / (1.0 + e)


@njit(cache=True, nogil=True, error_model="numpy")
def _factor_arg(a, p, q, r, zb, sdb):
    """g_b: the standard draw competitor b needs to reach the winner's score
    sigmoid(a) vl_w (``_node(a)`` gives p, q); r = vl_w / vl_b. +inf when b cannot
    reach it (the winner's score >= vl_b)."""
    if r == 1.0:
        ell = a
    else:
        den = (1.0 - r) + r * q  # 1 - r sigmoid(a), without cancellation when r <= 1
        if den <= 0.0:
            return np.inf
        num = r * p
        if num <= 0.0:
            return -np.inf  # sigmoid(a) underflowed: w's score is 0
        ell = math.log(num / den)  # logit(r sigmoid(a))
    return (ell - zb) / sdb


@njit(cache=True, nogil=True, error_model="numpy")
def _win_prob(w, cand, size, z, sd, vl, lo, hi, work):
    """P(candidate w wins the slot) under Thompson sampling over ``cand[:size]``
    (module docstring); ``lo`` / ``hi``: the scores at z -/+ SIGMAS sd. ``work``:
    float64[6, n] scratch."""
    zw = z[w]
    sdw = sd[w]
    vlw = vl[w]
    if sdw == 0.0:
        tw = _log_sigmoid(zw) + math.log(vlw)
        p, q = _node(zw)
        prob = 1.0
        for c in range(size):
            b = cand[c]
            if b == w:
                continue
            if sd[b] == 0.0:
                tb = _log_sigmoid(z[b]) + math.log(vl[b])
                if tb > tw or (tb == tw and b < w):
                    return 0.0
            else:
                prob *= _cdf(_factor_arg(zw, p, q, vlw / vl[b], z[b], sd[b]))
        return prob
    # the competitors: a sure one (s = 0) is a step, below which w cannot win; an
    # uncertain one a factor Phi(g_b(u)), >= Phi(TAIL_SIGMAS) above u = its start
    fr = work[0]
    fz = work[1]
    fs = work[2]
    fst = work[3]
    gx = work[4]
    gy = work[5]
    nf = 0
    u_bot = -SIGMAS
    u_top = -SIGMAS
    for c in range(size):
        b = cand[c]
        if b == w:
            continue
        if sd[b] == 0.0:
            u_bot = max(u_bot, _u_meeting(z[b], vl[b], zw, sdw, vlw))
            continue
        if hi[b] < lo[w]:
            continue  # below w's lowest plausible score: factor 1
        start = min(SIGMAS, _u_meeting(z[b] + TAIL_SIGMAS * sd[b], vl[b], zw, sdw, vlw))
        if start <= -SIGMAS:
            continue
        fr[nf] = vlw / vl[b]
        fz[nf] = z[b]
        fs[nf] = sd[b]
        fst[nf] = start
        gx[nf] = TAIL_SIGMAS  # g at its start (where the sweep meets it)
        nf += 1
        u_top = max(u_top, start)
    if u_bot >= SIGMAS:
        return 0.0
    if nf == 0 or u_top <= u_bot:
        return _cdf(-u_bot)
    # right to left from u_top (every factor ~1 above) in pieces [y, x]
    total = _cdf(-u_top)
    x = u_top
    width = QUAD_H
    tries = 0
    while x > u_bot:
        y = max(u_bot, x - width)
        tries += 1
        a = zw + sdw * y
        p, q = _node(a)
        grow = 0.0
        for f in range(nf):
            if fst[f] <= y:
                gy[f] = TAIL_SIGMAS  # not started: 1 on all of [y, x]
                continue
            g = _factor_arg(a, p, q, fr[f], fz[f], fs[f])
            gy[f] = g
            if g >= TAIL_SIGMAS:
                continue  # 1 on all of [y, x]
            if fst[f] >= x:  # rising on all of [y, x]
                if gx[f] > -TAIL_SIGMAS:  # (else 0 on all of it)
                    grow = max(grow, gx[f] - g)
            else:  # rising from y to its start (where g = TAIL_SIGMAS): the same slope
                grow = max(grow, (TAIL_SIGMAS - g) * (x - y) / (fst[f] - y))
        if grow > QUAD_G and x - y > QUAD_MIN_WIDTH and tries < QUAD_MAX_TRIES:
            width = 0.5 * (x - y)
            continue
        half = 0.5 * (x - y)
        mid = 0.5 * (x + y)
        acc = 0.0
        for k in range(QUAD_NODES):
            u = mid + half * _GL_X[k]
            a = zw + sdw * u
            pk, qk = _node(a)
            v = _GL_W[k] * math.exp(-0.5 * u * u)
            for f in range(nf):
                if gy[f] < TAIL_SIGMAS:
                    v *= _cdf(_factor_arg(a, pk, qk, fr[f], fz[f], fs[f]))
            acc += v
        total += acc * half * _INV_SQRT_2PI
        # what is left below y is at most Phi(y) x the integrand's factors at y
        bound = _cdf(y)
        for f in range(nf):
            if gy[f] < TAIL_SIGMAS:
                bound *= _cdf(gy[f])
            gx[f] = gy[f]
        x = y
        width = min(QUAD_H, 2.0 * width)
        if bound < QUAD_STOP:
            break
    return total


# ------------------------------------------------------------------ the kernels
@njit(cache=True, nogil=True, error_model="numpy")
def _free_offers(z, vl, placed):
    """(greedy scores, free: rankable and not placed, how many are free)."""
    n = z.shape[0]
    score = _greedy_scores(z, vl)
    free = np.empty(n, dtype=np.bool_)
    count = 0
    for i in range(n):
        free[i] = score[i] == score[i] and not placed[i]
        count += free[i]
    return score, free, count


@njit(cache=True, nogil=True, error_model="numpy")
def _epsilon(param):
    return min(param, 1.0) if param > 0.0 else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def choose(z, s, vl, k, policy, param, with_prob=True):
    """Fill up to ``k`` slots from the offers (z, s, vl: float64[n]) by ``policy``
    (``param``: epsilon for EPSILON, gamma for SQUARECB, unused otherwise). Returns
    (order int32[r]: positions in the inputs, slot by slot; prob float64[r]: the
    probability that slot q got order[q] given slots < q), r = min(k, rankable).
    ``with_prob=False``: Thompson's probabilities are not computed (NaN)."""
    n = z.shape[0]
    score, free, count = _free_offers(z, vl, np.zeros(n, dtype=np.bool_))
    r = max(0, min(k, count))
    order = np.empty(r, dtype=np.int32)
    prob = np.empty(r, dtype=np.float64)
    m = n if policy == THOMPSON else 0  # Thompson's per-offer arrays, else empty
    sd, lo, hi = _thompson_setup(z[:m], s[:m])
    cand = np.empty(m, dtype=np.int64)
    work = np.empty((6, m), dtype=np.float64)
    eps = _epsilon(param)
    for q in range(r):
        w = -1
        p = 1.0
        if policy == EPSILON:
            b = _argmax(score, free)
            if eps > 0.0 and np.random.random() < eps:
                w = _nth_free(free, _uniform_index(count))
            else:
                w = b
            p = eps / count + (1.0 - eps if w == b else 0.0)
        elif policy == SQUARECB:
            b, scale, gamma, p_b = _squarecb_setup(score, vl, free, count, param)
            if b >= 0:
                u = np.random.random()
                acc = 0.0
                last = -1
                yb = score[b] * scale
                for i in range(n):
                    if free[i]:
                        last = i
                        acc += p_b if i == b else _squarecb_p(yb, score[i] * scale, gamma, count)
                        if u < acc:
                            w = i
                            break
                if w < 0:
                    w = last  # rounding: u beyond the sum
                p = p_b if w == b else _squarecb_p(yb, score[w] * scale, gamma, count)
        elif policy == RANDOM:
            w = _nth_free(free, _uniform_index(count))
            p = 1.0 / count
        elif policy == THOMPSON:
            size = _candidates(z, sd, vl, score, free, lo, hi, cand)
            if size == 1:
                w = cand[0]
            elif size > 1:
                w = _thompson_draw(z, sd, vl, hi, cand, size)
                p = (min(1.0, max(PROB_FLOOR, _win_prob(w, cand, size, z, sd, vl, lo, hi, work)))
                     if with_prob else np.nan)
        if w < 0:  # GREEDY, an unknown policy, or a slot that falls back to greedy
            w = _argmax(score, free)
            p = 1.0
        order[q] = w
        prob[q] = p
        free[w] = False
        count -= 1
    return order, prob


@njit(cache=True, nogil=True, error_model="numpy")
def _slot_probs(z, s, vl, placed, policy, param, only):
    """The next slot's distribution (float64[n]); with ``only >= 0`` just that offer's
    entry is computed (the others are 0)."""
    n = z.shape[0]
    score, free, count = _free_offers(z, vl, placed)
    out = np.zeros(n, dtype=np.float64)
    if count == 0:
        return out
    b = _argmax(score, free)
    if policy == EPSILON:
        eps = _epsilon(param)
        for i in range(n):
            if free[i]:
                out[i] = eps / count
        out[b] += 1.0 - eps
        return out
    if policy == RANDOM:
        for i in range(n):
            if free[i]:
                out[i] = 1.0 / count
        return out
    if policy == SQUARECB:
        b2, scale, gamma, p_b = _squarecb_setup(score, vl, free, count, param)
        if b2 >= 0:
            yb = score[b2] * scale
            for i in range(n):
                if free[i]:
                    out[i] = p_b if i == b2 else _squarecb_p(yb, score[i] * scale, gamma, count)
            return out
    elif policy == THOMPSON:
        sd, lo, hi = _thompson_setup(z, s)
        cand = np.empty(n, dtype=np.int64)
        work = np.empty((6, n), dtype=np.float64)
        size = _candidates(z, sd, vl, score, free, lo, hi, cand)
        if size == 1:
            out[cand[0]] = 1.0
            return out
        if size > 1:
            for c in range(size):
                w = cand[c]
                if only < 0 or w == only:
                    out[w] = min(1.0, max(PROB_FLOOR,
                                          _win_prob(w, cand, size, z, sd, vl, lo, hi, work)))
            return out
    out[b] = 1.0  # GREEDY, or a slot that falls back to greedy
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def slot_distribution(z, s, vl, placed, policy, param):
    """float64[n]: the probability of each offer to fill the next slot given the offers
    already placed (``placed`` bool[n]); 0 for placed and unrankable offers (and for
    Thompson's non-candidates)."""
    return _slot_probs(z, s, vl, placed, policy, param, -1)


@njit(cache=True, nogil=True, error_model="numpy")
def winner_probability(z, s, vl, placed, w, policy, param):
    """``slot_distribution(...)[w]``, computing only that entry (one integral for
    Thompson): the probability that offer ``w`` fills the next slot."""
    return _slot_probs(z, s, vl, placed, policy, param, w)[w]


# --------------------------------------------------------------------- references
def greedy_reference(z, vl, k):
    """The greedy order: by sigmoid(z) * vl descending, ties by lower index, NaN out."""
    score = np.array([sigmoid(float(a)) * float(v) for a, v in zip(z, vl)])
    idx = [i for i in range(len(score)) if not np.isnan(score[i])]
    idx.sort(key=lambda i: (-score[i], i))
    return np.asarray(idx[:k], dtype=np.int32)


def thompson_reference(z, s, vl, placed, nodes=200_000):
    """P(each free offer wins the next Thompson slot), by a dense midpoint rule over
    each offer's own draw on [-9, 9] (no pruning, no adaptivity). For offers with s > 0
    and vl > 0 among a slot where some offer has vl > 0; others get 0 (or, s = 0: their
    exact product)."""
    z = np.asarray(z, dtype=np.float64)
    vl = np.asarray(vl, dtype=np.float64)
    sd = np.sqrt(np.clip(np.nan_to_num(np.asarray(s, dtype=np.float64)), 0.0, VAR_MAX))
    free = ~np.asarray(placed, dtype=bool) & ~np.isnan(_ref_scores(z, vl)) & (vl > 0)
    out = np.zeros(len(z))
    u = -9.0 + 18.0 * (np.arange(nodes) + 0.5) / nodes
    du = 18.0 / nodes
    dens = np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi) * du
    lam = np.log(np.where(vl > 0, vl, 1.0))
    for w in np.flatnonzero(free):
        if sd[w] == 0.0:
            tw = np.array([_ref_log_sigmoid(z[w]) + lam[w]])
            weights = np.array([1.0])
        else:
            tw = _ref_log_sigmoid(z[w] + sd[w] * u) + lam[w]
            weights = dens
        prod = np.ones_like(tw)
        for b in np.flatnonzero(free):
            if b == w:
                continue
            c = tw - lam[b]
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                ell = np.where(c < 0, c - np.log(-np.expm1(np.minimum(c, -1e-300))), np.inf)
            if sd[b] == 0.0:
                tb = _ref_log_sigmoid(z[b]) + lam[b]
                prod *= (tb < tw) | ((tb == tw) & (w < b))
            else:
                prod *= 0.5 * _erfc_vec(-((ell - z[b]) / sd[b]) / math.sqrt(2.0))
        out[w] = float(np.sum(weights * prod))
    return out


def _ref_scores(z, vl):
    with np.errstate(over="ignore", invalid="ignore"):
        return vl / (1.0 + np.exp(-z))


def _ref_log_sigmoid(t):
    t = np.asarray(t, dtype=np.float64)
    return np.minimum(t, 0.0) - np.log1p(np.exp(-np.abs(t)))


def _erfc_vec(x):
    """erfc, vectorised (Numerical Recipes' erfcc: relative error < 1.2e-7)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    with np.errstate(over="ignore", invalid="ignore"):
        r = t * np.exp(-a * a + poly)
    r = np.where(np.isnan(x), np.nan, np.where(a == np.inf, 0.0, r))
    return np.where(x >= 0, r, 2.0 - r)
