"""The fused kernels: eligibility -> contact policies -> propensity -> arbitration -> top-k.

``decide_offers`` is one call into compiled code per decision: the Python side pays
the dispatch cost once, and no intermediate array of size n_offers is allocated but
the policy marks. ``decide_batch`` ranks many customers in one call (Inspire
campaigns, ``prange`` over blocks of customers; ``decide_batch_serial`` for callers
that are already one of many threads), ``decide_each`` many requests (``DecideBatch``).
All run ``rank_one`` per customer, which computes what ``eligibility``, ``policies``,
``scoring`` and ``selection`` compute (the tests compare each with its NumPy
reference, and the fusion with their composition).

A single decision runs each rule program the first time an offer in scope needs it.
A batch runs every program for ``LANES`` customers at once first (``rule_table``):
one dispatch per instruction instead of one per instruction and customer. On the
demo catalog (307 distinct programs, 100 customers) that is 0.9 us of rules per
customer instead of 4.9, and ``decide_each`` 9.0 us per decision instead of 16.0.

The eligibility test and the top-k insertion are written out here again rather than
called as functions: with their array arguments, a call per offer (even with numba's
``inline="always"``) measured 44 us against 16 us for 1,000 offers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from kernels.eligibility import MAX_STACK, distinct_programs, in_scope, run_program, run_programs
from kernels.explore import EPSILON, RANDOM, THOMPSON, choose, logit_variance_of
from kernels.policies import contact_blocks
from kernels.scoring import logit_of, sigmoid, top_contributions
from kernels.selection import top_k

# The columns of a ranked row before its reasons: offer index, score, propensity, and
# the probability with which the policy chose the offer at its rank.
HEAD = 4


class Visit(NamedTuple):
    """The per-offer arrays in the kernels' visiting order: by value x lever, highest
    first (ties by lower offer index). Row ``j`` is offer ``offer_of[j]`` of the
    catalog. The kernels walk these rows front to back, so on a request that finds
    the caches cold (a server between requests) the hardware prefetcher streams them
    instead of every offer costing a cache miss per array (measured on 1,000 offers:
    kernel p50 45 -> 33 us with the caches flushed before each call).

    offer_of int32[n]; program int32[n]: the offer's rule, a row of ``rules`` (-1: no
    rule); masks int64[n, 2]; window float64[n, 2]; value float64[n, 2] (value, lever);
    weights float32[n, F]; bias float64[n]: the catalog-order arrays of the same names,
    rows permuted. rules int32[P, 2]: the distinct programs' row ranges in ``code``
    (``eligibility.distinct_programs``), so a request's rule verdicts are P entries."""

    offer_of: np.ndarray
    program: np.ndarray
    masks: np.ndarray
    window: np.ndarray
    value: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    rules: np.ndarray


def visit_plan(programs, offer_masks, offer_window, offer_value, weights, bias) -> Visit:
    """The ``Visit`` of catalog-order arrays (read-only copies)."""
    bound = offer_value[:, 0] * offer_value[:, 1]
    order = np.argsort(-bound, kind="stable").astype(np.int32)
    program, rules = distinct_programs(programs)
    arrays = [order] + [np.ascontiguousarray(a[order]) for a in
                        (program, offer_masks, offer_window, offer_value, weights, bias)]
    arrays.append(rules)
    for a in arrays:
        a.flags.writeable = False
    return Visit(*arrays)


@njit(cache=True, nogil=True, error_model="numpy")
def rank_one(code, consts, slots, visit, x, blocked, channel_bit, placement_bit, now, k, best,
             best_score, best_p, stack, verdict, rows, flags):
    """Rank one customer's offers into ``best`` (visit rows) / ``best_score`` /
    ``best_p`` (length k); return (how many were filled, eligible count). An offer is
    eligible when in scope, its rule holds and no policy blocked it
    (``blocked[offer] < 0``, by catalog index).

    ``verdict`` (int8[P]) holds the rule programs' results over ``slots``: 1 true, 0
    false, -1 not run yet (then the program runs here, once, on first use). A batch
    fills it beforehand for many customers at once (``run_programs``).

    ``visit`` (the tuple of a ``Visit``) lists offers by value x lever, highest first.
    A propensity is at most 1, so an offer whose value x lever is below the k-th best
    score so far cannot enter the top k: its dot product and exp are skipped (it is
    still counted as eligible). Ties rank by lower catalog index, whatever the
    visiting order.

    ``rows`` (int32): when not empty (length >= the offers), the eligible offers' visit
    rows are written to its first ``eligible`` entries (an exploring policy draws
    among them: ``decide_explore``). ``flags`` (uint8): when not empty (zeros, one per
    offer), the eligible offers' entries are set to 1, by catalog index: the eligible
    set a decision record keeps for replays (a plain store per offer: a bit mask's
    read-modify-write measured 2 us more over 1,000 offers)."""
    offer_of, program, masks, window, value, weights, bias, rules = visit
    collect = rows.shape[0] > 0
    marks = flags.shape[0] > 0
    n = program.shape[0]
    size = 0
    eligible = 0
    for j in range(n):
        if not in_scope(masks[j, 0], masks[j, 1], window[j, 0], window[j, 1], channel_bit,
                        placement_bit, now):
            continue
        rule = program[j]
        if rule >= 0:
            if verdict[rule] < 0:
                verdict[rule] = run_program(code, rules[rule, 0], rules[rule, 1], consts, slots,
                                            stack)
            if verdict[rule] == 0:
                continue
        i = offer_of[j]
        if blocked[i] >= 0:
            continue
        if collect:
            rows[eligible] = j
        if marks:
            flags[i] = 1
        eligible += 1
        if size == k and value[j, 0] * value[j, 1] < best_score[k - 1]:
            continue  # p x value x lever <= value x lever: cannot enter
        p = sigmoid(logit_of(weights, bias, x, j))
        s = p * value[j, 0] * value[j, 1]
        if s != s:
            continue  # NaN never ranks (as in selection.top_k)
        if size == k and (s < best_score[k - 1] or (s == best_score[k - 1]
                                                    and i > offer_of[best[k - 1]])):
            continue
        pos = size if size < k else k - 1
        while pos > 0 and (best_score[pos - 1] < s or (best_score[pos - 1] == s
                                                       and offer_of[best[pos - 1]] > i)):
            best[pos] = best[pos - 1]
            best_score[pos] = best_score[pos - 1]
            best_p[pos] = best_p[pos - 1]
            pos -= 1
        best[pos] = j
        best_score[pos] = s
        best_p[pos] = p
        if size < k:
            size += 1
    return size, eligible


@njit(cache=True, nogil=True, error_model="numpy")
def new_verdicts(visit):
    """A request's rule verdicts before any program ran: int8[P] of -1."""
    return np.full(visit[7].shape[0], -1, dtype=np.int8)


@njit(cache=True, nogil=True, error_model="numpy")
def rule_table(code, consts, slots, visit):
    """Every rule program's verdict for every row of ``slots`` (float64[m, s]):
    int8[m, P], row c the ``verdict`` of customer c (``run_programs``)."""
    rules = visit[7]
    out = np.empty((slots.shape[0], rules.shape[0]), dtype=np.int8)
    run_programs(code, consts, np.ascontiguousarray(slots.T), rules, out)
    return out


LANES = 128  # customers whose rules a batch evaluates together (a block of rule_table)
# Below this many customers in a block, each runs its programs on first use instead:
# the table's fixed cost per instruction is not repaid (demo catalog, per decision,
# table vs first use: 1 customer 27.7 vs 14.9 us, 8: 13.1 vs 11.8, 32: 10.2 vs 11.1).
TABLE_MIN = 32


@njit(cache=True, nogil=True, error_model="numpy")
def _block_table(code, consts, slots, visit, lo, hi):
    """``rule_table`` of rows lo:hi, or an empty table for a block under TABLE_MIN."""
    if hi - lo < TABLE_MIN:
        return np.empty((0, visit[7].shape[0]), dtype=np.int8)
    return rule_table(code, consts, slots[lo:hi], visit)


@njit(cache=True, nogil=True, error_model="numpy")
def _verdicts_of(table, row, visit):
    """Row ``row`` of a block's table, or fresh verdicts when the block has none."""
    if table.shape[0] == 0:
        return new_verdicts(visit)
    return table[row]


# Not nogil, unlike the batch kernels: a single decision's ~15 us is too short to run
# beside Python on 2 cores, and a handler thread that lets the GIL go for it must win it
# back from the thread that took it (which keeps it until it blocks): closed-loop
# saturation measured 0.65x the floor's throughput holding it, 0.58x letting it go
# (6 runs each; benchmarks/README.md, "The GIL and the single-decision kernel").
@njit(cache=True, error_model="numpy")
def decide_offers(code, consts, slots, visit, x, channel_bit, placement_bit, now, k, n_reasons,
                  contacts, policies, verdict):
    """Rank the eligible offers for one customer.

    code, consts, slots, channel_bit, placement_bit, now: as
    ``eligibility.eligible_mask``; visit: the tuple of the catalog's ``Visit`` (its
    programs, masks and window are those of ``eligible_mask``; weights and bias as
    ``scoring.propensity``); x float32[F]: the customer's features.
    k: offers to return (>= 1); n_reasons: top features explained per returned offer.
    contacts int64[H, 2], policies (the tuple ``PolicySet.arrays``): as
    ``policies.contact_blocks``, at ``now`` (epoch s) in ms. verdict int8[P]: the rule
    verdicts known before the call (``new_verdicts(visit)``: none; the caller may know
    those that read only profile fields, from an earlier decision on the same stored
    profile), filled in as programs run.

    Returns (eligible_count int64, ranked float64[r, HEAD + 2 * n_reasons], blocked
    int32[n]) with r = min(k, eligible_count), best first, ties by lower offer index.
    Row q of ``ranked`` is (offer index, score, propensity, probability (1: a greedy
    choice), the n_reasons feature indices (-1: none), their weights): one array to
    hand back to Python instead of seven (each returned array is an object to build). blocked[i] is the policy that
    removed offer i (-1: none; set for every offer a policy covers, whatever its
    other checks).
    """
    return _decide_one(code, consts, slots, visit, x, channel_bit, placement_bit, now, k,
                       n_reasons, contacts, policies, verdict)


@njit(cache=True, nogil=True, error_model="numpy")
def _decide_one(code, consts, slots, visit, x, channel_bit, placement_bit, now, k, n_reasons,
                contacts, policies, verdict):
    """``decide_offers`` with the rule verdicts given (some or all known already)."""
    (pol_scope, pol_kind, pol_max, pol_window, pol_channels, pol_offers, sorted_sids,
     sid_offer, channel_sids) = policies
    offer_of, weights = visit[0], visit[5]
    blocked = np.empty(offer_of.shape[0], dtype=np.int32)
    contact_blocks(contacts, np.int64(now * 1000.0), channel_bit, pol_scope, pol_kind, pol_max,
                   pol_window, pol_channels, pol_offers, sorted_sids, sid_offer, channel_sids,
                   blocked)
    stack = np.empty(MAX_STACK, dtype=np.float64)
    best = np.empty(k, dtype=np.int32)
    best_score = np.empty(k, dtype=np.float64)
    best_p = np.empty(k, dtype=np.float64)
    size, eligible = rank_one(code, consts, slots, visit, x, blocked, channel_bit,
                              placement_bit, now, k, best, best_score, best_p, stack, verdict,
                              np.empty(0, dtype=np.int32),  # eligible rows not collected
                              np.empty(0, dtype=np.uint8))
    reason_feature, reason_weight = top_contributions(weights, x, best[:size], n_reasons)
    ranked = np.empty((size, HEAD + 2 * n_reasons), dtype=np.float64)
    for q in range(size):
        ranked[q, 0] = offer_of[best[q]]
        ranked[q, 1] = best_score[q]
        ranked[q, 2] = best_p[q]
        ranked[q, 3] = 1.0
        for r in range(n_reasons):
            ranked[q, HEAD + r] = reason_feature[q, r]
            ranked[q, HEAD + n_reasons + r] = reason_weight[q, r]
    return eligible, ranked, blocked


THOMPSON_CANDIDATES = 8  # offers Thompson sampling draws among, per slot (see decide_explore)


@njit(cache=True, nogil=True, error_model="numpy")
def optimistic_candidates(z, s, vl, m):
    """Positions of the ``m`` offers with the highest optimistic score
    sigmoid(z + 2 sqrt(s)) x vl (ties: lower position), in ascending position."""
    u = np.empty(z.shape[0], dtype=np.float64)
    for e in range(z.shape[0]):
        u[e] = sigmoid(z[e] + 2.0 * math.sqrt(max(s[e], 0.0))) * vl[e]
    return np.sort(top_k(u, m))


@njit(cache=True, nogil=True, error_model="numpy")
def _placed(chosen, q, j):
    """Whether visit row ``j`` is among the first ``q`` chosen (q <= k, a few)."""
    for r in range(q):
        if chosen[r] == j:
            return True
    return False


@njit(cache=True, error_model="numpy")
def decide_explore(code, consts, slots, visit, x, channel_bit, placement_bit, now, k, n_reasons,
                   contacts, policies, verdict, var_w, var_b, policy, param):
    """``decide_offers`` under an exploring policy (``kernels.explore``): each of the k
    slots gets an offer drawn by the policy among the eligible offers not placed yet,
    with the probability of that draw given the slots above (column 3 of ``ranked``).
    Score and propensity are the posterior mean's.

    EPSILON and RANDOM need the greedy order only where they exploit: the greedy top k
    comes from ``rank_one`` (with its value x lever pruning) and the uniform draws from
    the eligible rows it collects, so they cost a greedy decision plus a dot product per
    explored slot. SQUARECB and THOMPSON weigh every eligible offer: each is scored
    (and, for Thompson, its log-odds variance ``var_b + var_w . x^2`` computed; var_w
    float32[n, F], var_b float64[n], visit order), then ``explore.choose`` fills the
    slots. Thompson sampling draws among the ``THOMPSON_CANDIDATES + k - 1`` offers with
    the best optimistic scores (log-odds + 2 sd): the cost of its probabilities grows
    with the competitors, and an offer outside them would win a draw rarely; the
    probabilities returned are exact (to the quadrature's 1e-3) for that procedure. The rest as ``decide_offers``; returns its triple and the eligible set
    (uint8[n], 1 for an eligible offer by catalog index: ``rank_one``'s ``flags``, what
    a replay of the decision under another policy needs, ``decision.analytics.whatif``;
    the decision records keep it as a bit mask)."""
    (pol_scope, pol_kind, pol_max, pol_window, pol_channels, pol_offers, sorted_sids,
     sid_offer, channel_sids) = policies
    offer_of, program, masks, window, value, weights, bias, rules = visit
    n = program.shape[0]
    blocked = np.empty(n, dtype=np.int32)
    contact_blocks(contacts, np.int64(now * 1000.0), channel_bit, pol_scope, pol_kind, pol_max,
                   pol_window, pol_channels, pol_offers, sorted_sids, sid_offer, channel_sids,
                   blocked)
    stack = np.empty(MAX_STACK, dtype=np.float64)
    best = np.empty(k, dtype=np.int32)
    best_score = np.empty(k, dtype=np.float64)
    best_p = np.empty(k, dtype=np.float64)
    uniform = policy == EPSILON or policy == RANDOM
    # the eligible rows: SquareCB and Thompson weigh them all, epsilon and random draw
    # among them when a slot explores (collected in the one pass: a second pass only
    # when a slot explores measured 2 us more a decision, at k = 5 and 5%)
    rows = np.empty(max(n, 1), dtype=np.int32)
    support = np.zeros(n, dtype=np.uint8)  # the eligible set: 1 by catalog index
    size, eligible = rank_one(code, consts, slots, visit, x, blocked, channel_bit,
                              placement_bit, now, k, best, best_score, best_p, stack, verdict,
                              rows, support)
    chosen = np.empty(size, dtype=np.int32)  # visit rows
    prob = np.empty(size, dtype=np.float64)
    if uniform:
        epsilon = 1.0 if policy == RANDOM else param
        for q in range(size):
            remaining = eligible - q
            top = 0  # the best greedy row not placed yet (one of the top k is left)
            while _placed(chosen, q, best[top]):
                top += 1
            if epsilon > 0.0 and np.random.random() < epsilon:
                pick = np.random.randint(remaining)  # the pick-th row not placed yet
                for e in range(eligible):
                    j = rows[e]
                    if not _placed(chosen, q, j):
                        if pick == 0:
                            break
                        pick -= 1
            else:
                j = best[top]
            chosen[q] = j
            prob[q] = epsilon / remaining + (1.0 - epsilon if j == best[top] else 0.0)
    else:
        # every eligible offer, in catalog order (ties go to the lower index)
        at = np.full(n, -1, dtype=np.int32)
        for e in range(eligible):
            at[offer_of[rows[e]]] = rows[e]
        e = 0
        for i in range(n):
            if at[i] >= 0:
                rows[e] = at[i]
                e += 1
        z = np.empty(eligible, dtype=np.float64)
        s = np.zeros(eligible, dtype=np.float64)
        vl = np.empty(eligible, dtype=np.float64)
        for e in range(eligible):
            j = rows[e]
            z[e] = logit_of(weights, bias, x, j)
            vl[e] = value[j, 0] * value[j, 1]
            if policy == THOMPSON:
                s[e] = logit_variance_of(var_w, var_b, x, j)
        if policy == THOMPSON and eligible > THOMPSON_CANDIDATES + k - 1:
            # Thompson sampling among the offers with the best optimistic scores (at
            # their log-odds + 2 sd): its probabilities are exact for that procedure
            keep = optimistic_candidates(z, s, vl, THOMPSON_CANDIDATES + k - 1)
            z, s, vl = z[keep], s[keep], vl[keep]
            for e in range(keep.shape[0]):
                rows[e] = rows[keep[e]]
        order, p = choose(z, s, vl, k, policy, param)
        size = order.shape[0]
        chosen = np.empty(size, dtype=np.int32)
        prob = p
        for q in range(size):
            chosen[q] = rows[order[q]]
    reason_feature, reason_weight = top_contributions(weights, x, chosen, n_reasons)
    ranked = np.empty((size, HEAD + 2 * n_reasons), dtype=np.float64)
    for q in range(size):
        j = chosen[q]
        p = sigmoid(logit_of(weights, bias, x, j))
        ranked[q, 0] = offer_of[j]
        ranked[q, 1] = p * value[j, 0] * value[j, 1]
        ranked[q, 2] = p
        ranked[q, 3] = prob[q]
        for r in range(n_reasons):
            ranked[q, HEAD + r] = reason_feature[q, r]
            ranked[q, HEAD + n_reasons + r] = reason_weight[q, r]
    return eligible, ranked, blocked, support


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_row(c, code, consts, slots, visit, features, contacts, contact_start, channel_bit,
               placement_bit, now, k, policies, verdict, chosen, score, prop, filled, eligible):
    """Rank customer ``c`` of a batch into row c of the outputs (``verdict``: its rule
    verdicts, a row of ``rule_table``)."""
    (pol_scope, pol_kind, pol_max, pol_window, pol_channels, pol_offers, sorted_sids,
     sid_offer, channel_sids) = policies
    offer_of = visit[0]
    blocked = np.empty(offer_of.shape[0], dtype=np.int32)
    contact_blocks(contacts[contact_start[c]:contact_start[c + 1]], np.int64(now * 1000.0),
                   channel_bit, pol_scope, pol_kind, pol_max, pol_window, pol_channels,
                   pol_offers, sorted_sids, sid_offer, channel_sids, blocked)
    stack = np.empty(MAX_STACK, dtype=np.float64)
    size, count = rank_one(code, consts, slots[c], visit, features[c], blocked, channel_bit,
                           placement_bit, now, k, chosen[c], score[c], prop[c], stack, verdict,
                           np.empty(0, dtype=np.int32), np.empty(0, dtype=np.uint8))
    filled[c] = size
    eligible[c] = count
    for r in range(size):
        chosen[c, r] = offer_of[chosen[c, r]]
    for r in range(size, k):
        chosen[c, r] = -1
        score[c, r] = 0.0
        prop[c, r] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_outputs(m, k):
    return (np.full((m, k), -1, dtype=np.int32), np.zeros((m, k), dtype=np.float64),
            np.zeros((m, k), dtype=np.float64), np.zeros(m, dtype=np.int32),
            np.zeros(m, dtype=np.int32))


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_block(b, code, consts, slots, visit, features, contacts, contact_start, channel_bit,
                 placement_bit, now, k, policies, chosen, score, prop, filled, eligible):
    """Rank block ``b`` of a batch: its ``LANES`` customers' rules in one
    ``rule_table``, then each customer."""
    lo = b * LANES
    hi = min(slots.shape[0], lo + LANES)
    table = _block_table(code, consts, slots, visit, lo, hi)
    for c in range(lo, hi):
        _batch_row(c, code, consts, slots, visit, features, contacts, contact_start,
                   channel_bit, placement_bit, now, k, policies, _verdicts_of(table, c - lo, visit),
                   chosen, score, prop, filled, eligible)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def decide_batch(code, consts, slots, visit, features, contacts, contact_start, channel_bit,
                 placement_bit, now, k, policies):
    """Rank every customer of a batch, in parallel over blocks of ``LANES`` customers
    (``prange``).

    slots float64[m, s] and features float32[m, F]: one row per customer; contacts
    int64[T, 2] with customer c's history at rows contact_start[c]:contact_start[c+1];
    the rest as ``decide_offers``. Returns (chosen int32[m, k] (-1 past the filled
    count), score float64[m, k], propensity float64[m, k], filled int32[m],
    eligible int32[m])."""
    m = slots.shape[0]
    chosen, score, prop, filled, eligible = _batch_outputs(m, k)
    for b in prange((m + LANES - 1) // LANES):
        _batch_block(b, code, consts, slots, visit, features, contacts, contact_start,
                     channel_bit, placement_bit, now, k, policies, chosen, score, prop, filled,
                     eligible)
    return chosen, score, prop, filled, eligible


@njit(cache=True, nogil=True, error_model="numpy")
def decide_each(code, consts, slots, visit, features, contacts, contact_start, channel_bits,
                placement_bits, now, ks, n_reasons, policies):
    """``decide_offers`` for every row of a batch of requests (``DecideBatch``: several
    customers or placements at one instant), in one call: row c has its own slots,
    features, contacts (rows contact_start[c]:contact_start[c+1]), channel and
    placement bits and k (``ks[c]``). The rules of ``LANES`` rows at a time are
    evaluated together (``rule_table``; a block under ``TABLE_MIN`` rows runs each
    row's programs on first use).

    Returns (eligible int64[m], filled int32[m], ranked float64[m, max(ks), HEAD + 2 *
    n_reasons]): row c's first filled[c] entries are decide_offers' ``ranked`` rows."""
    m = slots.shape[0]
    k_max = 1
    for c in range(m):
        k_max = max(k_max, ks[c])
    eligible = np.zeros(m, dtype=np.int64)
    filled = np.zeros(m, dtype=np.int32)
    ranked = np.zeros((m, k_max, HEAD + 2 * n_reasons), dtype=np.float64)
    for lo in range(0, m, LANES):
        hi = min(m, lo + LANES)
        table = _block_table(code, consts, slots, visit, lo, hi)
        for c in range(lo, hi):
            count, rows, _ = _decide_one(code, consts, slots[c], visit, features[c],
                                         channel_bits[c], placement_bits[c], now, ks[c],
                                         n_reasons,
                                         contacts[contact_start[c]:contact_start[c + 1]],
                                         policies, _verdicts_of(table, c - lo, visit))
            eligible[c] = count
            filled[c] = rows.shape[0]
            ranked[c, :rows.shape[0]] = rows
    return eligible, filled, ranked
