"""DecideResponse straight to protobuf wire bytes, without building messages.

Building a ``DecideResponse`` message tree per request (offers, reasons) cost more
than the whole decision (27 us vs. 57 us in-process for five offers): the same
Python-overhead trap as feast #3649. Protobuf's wire format concatenates, so:

- once per catalog version, ``OfferEncodings`` serialises with the generated classes
  everything about an offer that does not change between requests (id, name, value,
  lever, creative, its ELIGIBLE reason), and each feature's FEATURE reason prefix;
- per request, ``encode_decision`` appends only what varies (rank, score, propensity,
  feature weights, the response header) with ``struct``.

The result parses to exactly the message ``decision.server`` would have built; the
tests compare the two on many decisions, so a change to the proto that this module
does not follow fails them.
"""

from __future__ import annotations

import struct

from decision.catalog import Catalog
from decision.engine import COLD_START, N_FEATURE_REASONS, Decision
from decision.v1 import decision_pb2 as pb

_DOUBLE = struct.Struct("<d").pack
_F = pb.DecideResponse.DESCRIPTOR.fields_by_name
_O = pb.DecidedOffer.DESCRIPTOR.fields_by_name
_R = pb.Reason.DESCRIPTOR.fields_by_name
_LEN, _I64, _VARINT = 2, 1, 0


def _tag(field, wire_type: int) -> bytes:
    return varint(field.number << 3 | wire_type)


def varint(n: int) -> bytes:
    if 0 <= n < _SMALL:
        return _VARINTS[n]
    return _varint(n)


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = 1 << 14  # two varint bytes: every rank, count and offer length in practice
_VARINTS = [_varint(n) for n in range(_SMALL)]  # a lookup instead of a loop per call


def field_tag(field) -> bytes:
    """The tag of a length-delimited (message, string) field."""
    return _tag(field, _LEN)



def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


_T_DECISION_ID = _tag(_F["decision_id"], _LEN)
_T_OFFERS = _tag(_F["offers"], _LEN)
_COLD_START = _tag(_F["cold_start"], _VARINT) + b"\x01"
_T_ELIGIBLE_COUNT = _tag(_F["eligible_count"], _VARINT)
_T_CATALOG_VERSION = _tag(_F["catalog_version"], _LEN)
_T_DECIDED_AT = _tag(_F["decided_at_ms"], _VARINT)
_T_DELIVER_AT = _tag(_F["deliver_at_ms"], _VARINT)
_T_REMOVED = _tag(_F["removed"], _LEN)
_TIMING_NOW = _length_delimited(_tag(_F["timing"], _LEN), b"now")
_T_TIMING = _tag(_F["timing"], _LEN)
_T_RANK = _tag(_O["rank"], _VARINT)
_T_SCORE = _tag(_O["score"], _I64)
_T_PROPENSITY = _tag(_O["propensity"], _I64)
_T_REASON = _tag(_O["reasons"], _LEN)
_T_WEIGHT = _tag(_R["weight"], _I64)
# score and propensity: both one-byte tags, packed with their doubles in one call
_SCORE_PROPENSITY = struct.Struct(f"<{len(_T_SCORE)}sd{len(_T_PROPENSITY)}sd").pack
_RANKS = [_T_RANK + _varint(r) for r in range(1, 1001)]  # rank r + 1 at [r]
_COLD_REASON = _length_delimited(_T_REASON, pb.Reason(
    code=COLD_START.code, detail=COLD_START.detail).SerializeToString())


class OfferEncodings:
    """The per-catalog-version bytes ``encode_decision`` assembles answers from."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.offer_static = [
            pb.DecidedOffer(
                offer_id=o.id, name=o.name, value=o.value, lever=o.lever,
                creative_json=o.creative_json,
                reasons=[pb.Reason(code="ELIGIBLE", detail=o.rule or "no rule")],
            ).SerializeToString()
            for o in catalog.offers
        ]
        # a FEATURE reason is its static prefix + weight (8 bytes): fixed length
        self.feature_prefix = []
        for name in catalog.feature_names:
            prefix = pb.Reason(code="FEATURE", detail=name).SerializeToString()
            body_len = len(prefix) + len(_T_WEIGHT) + 8
            self.feature_prefix.append(_T_REASON + varint(body_len) + prefix + _T_WEIGHT)
        self.version = _length_delimited(_T_CATALOG_VERSION, catalog.version.encode())


def encode_decision(d: Decision, enc: OfferEncodings) -> bytes:
    """The serialised ``DecideResponse`` for ``d`` (``enc`` from d's catalog)."""
    parts = [_T_DECISION_ID, varint(len(d.decision_id)), d.decision_id.encode()]
    static = enc.offer_static
    prefix = enc.feature_prefix
    cold = d.cold_start
    n = N_FEATURE_REASONS
    for r, row in enumerate(d.ranked):
        body = [static[int(row[0])], _RANKS[r] if r < 1000 else _T_RANK + varint(r + 1),
                _SCORE_PROPENSITY(_T_SCORE, row[1], _T_PROPENSITY, row[2])]
        if cold:
            body.append(_COLD_REASON)
        else:
            for q in range(3, 3 + n):
                j = row[q]
                if j >= 0:
                    body.append(prefix[int(j)])
                    body.append(_DOUBLE(row[q + n]))
        offer = b"".join(body)
        parts += (_T_OFFERS, varint(len(offer)), offer)
    if cold:
        parts.append(_COLD_START)
    decided = varint(d.decided_at_ms)
    parts += (_T_ELIGIBLE_COUNT, varint(d.eligible_count), enc.version, _T_DECIDED_AT, decided,
              _T_DELIVER_AT, decided if d.deliver_at_ms == d.decided_at_ms
              else varint(d.deliver_at_ms))
    if d.timing == "now":
        parts.append(_TIMING_NOW)
    else:
        timing = d.timing.encode()
        parts += (_T_TIMING, varint(len(timing)), timing)
    for offer, reason in d.removed_offers:  # explain only: rare, built with the classes
        parts.append(_length_delimited(_T_REMOVED, pb.RemovedOffer(
            offer_id=offer.id, reason=pb.Reason(code=reason.code, detail=reason.detail),
        ).SerializeToString()))
    return b"".join(parts)
