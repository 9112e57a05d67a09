"""A ``DecideResponse``'s wire bytes from the kernel's ranked rows, compiled.

Protobuf's wire format concatenates, so an answer is assembled from bytes serialised
once per catalog version (``decision.edge.wire.OfferEncodings``: each offer's static part,
each feature's reason prefix, the catalog version) and the few values that vary per
request (rank, score, propensity, feature weights, counts and times), written here.
In Python, that assembly cost ~1.5 us per offer in ``struct`` packing and list
indexing (8.4 us for an answer of 5 offers with 3 reasons each).

Layout of the arguments:

- ``ranked`` float64[r, 4 + 2 * n_reasons]: ``decide_offers``' rows (offer, score,
  propensity, probability, reasons);
- ``tags``: the one-byte tags, indexed by the ``T_*`` constants below;
- ``blob`` (uint8) and ``at`` (int64): byte string s is ``blob[at[s]:at[s + 1]]``:
  offer i's static part is string i, feature j's reason prefix (its weight's 8 bytes
  follow it) is string ``features + j``, and the pieces ``F_*`` below are strings
  ``fixed + F_*``. One array for all (each array argument costs ~35 ns to pass).

Nothing is checked here: ``decision.edge.wire`` builds the tables, and its tests compare
the bytes, parsed, with the message the protobuf classes build.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# indices into ``tags``
T_DECISION_ID, T_OFFERS, T_ELIGIBLE_COUNT, T_DECIDED_AT, T_DELIVER_AT, T_TIMING, T_RANK, \
    T_SCORE, T_PROPENSITY, T_PROBABILITY = range(10)
# indices of the pieces in ``fixed``
F_COLD_REASON, F_COLD_START, F_VERSION, F_TIMING_NOW = range(4)
SCORE_PROPENSITY_BYTES = 27  # three one-byte tags, three 8-byte doubles
HEAD = 4  # kernels.decide.HEAD: a ranked row's columns before its reasons


@njit(cache=True, error_model="numpy")
def varint_size(n):
    if n < 0:
        return 10  # two's complement, as protobuf writes a negative int64
    size = 1
    while n > 0x7F:
        n >>= 7
        size += 1
    return size


@njit(cache=True, error_model="numpy")
def _varint(out, at, n):
    if n < 0:  # two's complement: the low 7 bits, then the 57 others as a positive number
        out[at] = (n & 0x7F) | 0x80
        n = (n >> 7) & 0x1FFFFFFFFFFFFFF
        at += 1
    while n > 0x7F:
        out[at] = (n & 0x7F) | 0x80
        n >>= 7
        at += 1
    out[at] = n
    return at + 1


@njit(cache=True, error_model="numpy")
def _text(out, at, text):
    """Copy a ``bytes`` object (passed as is: cheaper than a NumPy view of it)."""
    for q in range(len(text)):
        out[at + q] = text[q]
    return at + len(text)


@njit(cache=True, error_model="numpy")
def _double(out, at, tag, x, scratch, scratch_bytes):
    """[tag (if >= 0)] + x's 8 bytes, in the machine's order: little-endian, as
    protobuf's wire format wants (``decision.edge.wire`` refuses a big-endian machine)."""
    if tag >= 0:
        out[at] = tag
        at += 1
    scratch[0] = x
    out[at:at + 8] = scratch_bytes
    return at + 8


@njit(cache=True, error_model="numpy")
def _offer_size(ranked, q, n_reasons, cold, at, features, fixed):
    """Bytes of offer row q's DecidedOffer body."""
    i = np.int64(ranked[q, 0])
    size = at[i + 1] - at[i] + 1 + varint_size(q + 1) + SCORE_PROPENSITY_BYTES
    if cold:
        return size + _length(at, fixed + F_COLD_REASON)
    for r in range(n_reasons):
        j = np.int64(ranked[q, HEAD + r])
        if j >= 0:
            size += _length(at, features + j) + 8
    return size


@njit(cache=True, error_model="numpy")
def _length(at, s):
    return at[s + 1] - at[s]


@njit(cache=True, error_model="numpy")
def _string(out, where, blob, at, s):
    """Copy byte string s of the blob."""
    n = at[s + 1] - at[s]
    out[where:where + n] = blob[at[s]:at[s + 1]]
    return where + n


@njit(cache=True, error_model="numpy")
def encode_answer(ranked, n_reasons, eligible, cold, decided_ms, deliver_ms, decision_id,
                  timing, tail, tags, blob, at, features, fixed):
    """The DecideResponse bytes (uint8[]): decision_id, offers (rank q + 1 for row q),
    cold_start, eligible_count, catalog_version, decided_at_ms, deliver_at_ms and
    timing (``timing`` empty: "now"), then ``tail`` as it is (fields encoded once per
    policy and model version: experiment, arm, policy, model_version). ``decision_id``,
    ``timing`` and ``tail`` are ``bytes``. Integers are int64 (negative ones as
    protobuf writes them: 10 bytes)."""
    k = ranked.shape[0]
    sizes = np.empty(k, dtype=np.int64)
    total = 1 + varint_size(len(decision_id)) + len(decision_id)
    for q in range(k):
        sizes[q] = _offer_size(ranked, q, n_reasons, cold, at, features, fixed)
        total += 1 + varint_size(sizes[q]) + sizes[q]
    if cold:
        total += _length(at, fixed + F_COLD_START)
    total += 1 + varint_size(eligible) + _length(at, fixed + F_VERSION)
    total += 2 + varint_size(decided_ms) + varint_size(deliver_ms)
    if len(timing) == 0:
        total += _length(at, fixed + F_TIMING_NOW)
    else:
        total += 1 + varint_size(len(timing)) + len(timing)
    total += len(tail)

    out = np.empty(total, dtype=np.uint8)
    scratch = np.empty(1, dtype=np.float64)
    scratch_bytes = scratch.view(np.uint8)
    out[0] = tags[T_DECISION_ID]
    w = _varint(out, 1, len(decision_id))
    w = _text(out, w, decision_id)
    for q in range(k):
        out[w] = tags[T_OFFERS]
        w = _varint(out, w + 1, sizes[q])
        w = _string(out, w, blob, at, np.int64(ranked[q, 0]))
        out[w] = tags[T_RANK]
        w = _varint(out, w + 1, q + 1)
        w = _double(out, w, tags[T_SCORE], ranked[q, 1], scratch, scratch_bytes)
        w = _double(out, w, tags[T_PROPENSITY], ranked[q, 2], scratch, scratch_bytes)
        w = _double(out, w, tags[T_PROBABILITY], ranked[q, 3], scratch, scratch_bytes)
        if cold:
            w = _string(out, w, blob, at, fixed + F_COLD_REASON)
            continue
        for r in range(n_reasons):
            j = np.int64(ranked[q, HEAD + r])
            if j >= 0:
                w = _string(out, w, blob, at, features + j)
                w = _double(out, w, -1, ranked[q, HEAD + n_reasons + r], scratch, scratch_bytes)
    if cold:
        w = _string(out, w, blob, at, fixed + F_COLD_START)
    out[w] = tags[T_ELIGIBLE_COUNT]
    w = _varint(out, w + 1, eligible)
    w = _string(out, w, blob, at, fixed + F_VERSION)
    out[w] = tags[T_DECIDED_AT]
    w = _varint(out, w + 1, decided_ms)
    out[w] = tags[T_DELIVER_AT]
    w = _varint(out, w + 1, deliver_ms)
    if len(timing) == 0:
        w = _string(out, w, blob, at, fixed + F_TIMING_NOW)
    else:
        out[w] = tags[T_TIMING]
        w = _varint(out, w + 1, len(timing))
        w = _text(out, w, timing)
    _text(out, w, tail)
    return out
