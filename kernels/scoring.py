"""Scoring: propensity (a logistic model) and arbitration.

Propensity
----------
For offer ``i`` and customer features ``x`` (float32[F])::

    propensity_i = sigmoid(bias[i] + sum_j weights[i, j] * x[j])

``weights`` (float32[n, F]) and ``bias`` (float64[n]) are prepared once per catalog
by ``decision.config.catalog`` from a logistic model over customer features *and* offer
features: ``weights[i] = w_customer + A @ e_i`` and ``bias[i] = b + w_offer . e_i``
where ``e_i`` are offer ``i``'s features and ``A`` the customer x offer interaction
matrix. The request then costs one dot product of length F per eligible offer.

Arbitration
-----------
``score_i = propensity_i x value_i x lever_i`` (Pega's P x V x L without the context
weight): the expected business value of showing the offer, bent by a business lever
(1 = neutral, 2 = counts double, 0 = scores 0: ranked after every offer that scores
more, so shown only when nothing better is eligible).

The contribution of feature ``j`` to offer ``i``'s log-odds is ``weights[i, j] * x[j]``;
``top_contributions`` returns the largest by absolute value for the reason codes.

Finite inputs, finite answers
-----------------------------
Features are whatever a client upserted (any finite float32, up to 3.4e38), so the
arithmetic must not overflow where the model's usual inputs would never reach:

* every product ``weights[i, j] * x[j]`` is taken in float64, where the product of two
  float32 is exact and at most (3.4e38)^2 ~ 1.2e77 in magnitude; their sum over F
  features and the float64 ``bias`` (finite, ``decision.config.catalog`` checks) is
  finite too. A float32 product would overflow to +-inf (3.4e38 x 3), and +inf - inf
  is NaN: an offer that never ranks.
* the log-odds are clamped to ``[-LOGIT_MAX, LOGIT_MAX]`` (36), the widest integer
  range whose sigmoid stays strictly inside (0, 1) in float64: sigmoid(36) =
  1 - 2.2e-16 and sigmoid(-36) = 2.3e-16, while sigmoid(37) rounds to 1.0. So a
  propensity is always in (0, 1), as the API says, and offers whose log-odds pass the
  clamp tie on propensity (then on value x lever, then by lower offer index).
* reason weights (``top_contributions``) are those exact float64 products, not
  clamped: the contribution to the log-odds before the clamp, finite for finite
  features.

The references compute the same (float64 products, ``np.clip`` to the same range).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


# Reassociation lets LLVM vectorise the dot product (3x faster at F = 32); the other
# fast-math flags (no-NaN, no-inf) are NOT allowed: the rule VM relies on NaN.
_DOT_MATH = {"reassoc", "contract"}


# |log-odds| is clamped to this: sigmoid(+-36) is strictly inside (0, 1) in float64
# (1 - 2.2e-16 and 2.3e-16); sigmoid(37) would round to exactly 1.0.
LOGIT_MAX = 36.0


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_DOT_MATH)
def logit_of(weights, bias, x, i):
    """Log-odds of offer ``i`` for features ``x``, clamped to [-LOGIT_MAX, LOGIT_MAX].

    Products and sum in float64 (vectorised): finite for any finite float32 features
    (see the module docstring), where float32 products overflow at 3.4e38 x 3."""
    z = np.float64(0.0)  # float64 with or without the JIT (NumPy 2 would keep float32)
    for j in range(x.shape[0]):
        z += np.float64(weights[i, j]) * np.float64(x[j])
    z += bias[i]
    if z > LOGIT_MAX:
        return LOGIT_MAX
    if z < -LOGIT_MAX:
        return -LOGIT_MAX
    return z


@njit(cache=True, nogil=True, error_model="numpy")
def sigmoid(z):
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(cache=True, nogil=True, error_model="numpy")
def propensity(weights, bias, x, mask):
    """float64[n]: the propensity of each offer where ``mask`` is True, else 0."""
    n = weights.shape[0]
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        if mask[i]:
            out[i] = sigmoid(logit_of(weights, bias, x, i))
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def arbitrate(p, value, lever, mask):
    """float64[n]: ``p x value x lever`` where ``mask`` is True, else -inf."""
    n = p.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        out[i] = p[i] * value[i] * lever[i] if mask[i] else -np.inf
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def top_contributions(weights, x, chosen, m):
    """For each offer in ``chosen``, the ``m`` features with the largest |w * x|.

    Returns (feature index int32[k, m], contribution float64[k, m]), largest first,
    ties broken by lower feature index; features with zero contribution are
    reported as index -1. Each contribution is the float64 product of the float32
    weight and feature: exact, and finite for finite features (at most ~1.2e77).
    """
    k = chosen.shape[0]
    f = x.shape[0]
    idx = np.full((k, m), -1, dtype=np.int32)
    val = np.zeros((k, m), dtype=np.float64)
    for r in range(k):
        i = chosen[r]
        for j in range(f):
            c = np.float64(weights[i, j]) * np.float64(x[j])  # exact, never overflows
            a = abs(c)
            if a == 0.0:
                continue
            # insertion into the sorted row (strictly greater moves ahead)
            pos = m
            while pos > 0 and (idx[r, pos - 1] == -1 or abs(val[r, pos - 1]) < a):
                pos -= 1
            if pos < m:
                for q in range(m - 1, pos, -1):
                    idx[r, q] = idx[r, q - 1]
                    val[r, q] = val[r, q - 1]
                idx[r, pos] = j
                val[r, pos] = c
    return idx, val


# --------------------------------------------------------------------- references
def propensity_reference(weights, bias, x, mask):
    z = bias + weights.astype(np.float64) @ x.astype(np.float64)
    z = np.clip(z, -LOGIT_MAX, LOGIT_MAX)
    return np.where(mask, 1.0 / (1.0 + np.exp(-z)), 0.0)


def arbitrate_reference(p, value, lever, mask):
    return np.where(mask, p * value * lever, -np.inf)


def top_contributions_reference(weights, x, chosen, m):
    k = len(chosen)
    idx = np.full((k, m), -1, dtype=np.int32)
    val = np.zeros((k, m))
    for r, i in enumerate(chosen):
        c = weights[i].astype(np.float64) * x.astype(np.float64)
        order = sorted((j for j in range(len(x)) if c[j] != 0), key=lambda j: (-abs(c[j]), j))
        for q, j in enumerate(order[:m]):
            idx[r, q], val[r, q] = j, c[j]
    return idx, val
