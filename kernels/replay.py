"""Replaying recorded decisions under another policy (``decision whatif``).

A recorded decision holds the customer's features as the kernel read them and the set
of offers that were eligible (when its policy explored). Given a candidate policy's
arrays (its ``Visit``-order weights, bias, value x lever, logit variances, policy and
parameter, as the server would serve them), ``replay_first_slot`` gives, per
decision, the candidate's probability of choosing the logged first offer for the
first slot (``kernels.explore.slot_distribution``: the same procedure the server's
``decide_explore`` draws with, Thompson's cut to its optimistic candidates included),
and a reward model's prediction for the logged offer and its expectation under the
candidate (for the doubly robust estimator). No I/O.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.decide import THOMPSON_CANDIDATES, optimistic_candidates
from kernels.explore import THOMPSON, logit_variance_of, slot_distribution
from kernels.scoring import logit_of, sigmoid


@njit(cache=True, parallel=True, error_model="numpy")
def replay_first_slot(x, indptr, rows, logged, k, weights, bias, value, var_w, var_b,
                      policy, param, q_weights, q_bias):
    """Per decision i: its eligible offers are ``rows[indptr[i]:indptr[i + 1]]`` (visit
    rows of the candidate, in catalog order), the logged first offer is the
    ``logged[i]``-th of them (-1: not among the candidate's offers). Returns
    (target_p, q_logged, q_target) float64[N]: the candidate's probability of the
    logged offer, the reward model's (sigmoid of ``q_weights . x + q_bias``) for the
    logged offer, and its expectation under the candidate's distribution. ``k``: each
    decision's number of slots (Thompson sampling draws among the ``THOMPSON_CANDIDATES
    + k - 1`` offers with the best optimistic scores, as ``decide_explore`` does)."""
    n = logged.shape[0]
    target_p = np.zeros(n)
    q_logged = np.zeros(n)
    q_target = np.zeros(n)
    for i in prange(n):  # decisions are independent: every core replays its share
        lo, hi = indptr[i], indptr[i + 1]
        m = hi - lo
        if m == 0:
            continue
        xi = x[i]
        z = np.empty(m)
        s = np.zeros(m)
        vl = np.empty(m)
        q = np.empty(m)
        for e in range(m):
            j = rows[lo + e]
            z[e] = logit_of(weights, bias, xi, j)
            vl[e] = value[j, 0] * value[j, 1]
            q[e] = sigmoid(logit_of(q_weights, q_bias, xi, j))
            if policy == THOMPSON:
                s[e] = logit_variance_of(var_w, var_b, xi, j)
        p = np.zeros(m)
        cut = THOMPSON_CANDIDATES + max(k[i], 1) - 1
        if policy == THOMPSON and m > cut:
            keep = optimistic_candidates(z, s, vl, cut)
            pk = slot_distribution(z[keep], s[keep], vl[keep],
                                   np.zeros(keep.shape[0], dtype=np.bool_), policy, param)
            for e in range(keep.shape[0]):
                p[keep[e]] = pk[e]
        else:
            p = slot_distribution(z, s, vl, np.zeros(m, dtype=np.bool_), policy, param)
        total = 0.0
        for e in range(m):
            total += p[e] * q[e]
        q_target[i] = total
        if logged[i] >= 0:
            target_p[i] = p[logged[i]]
            q_logged[i] = q[logged[i]]
    return target_p, q_logged, q_target
