"""Protobuf <-> the core's values: requests in, replies out (the edge's only translator).

Requests become the core's plain values (``query``, ``event``, ``identifier``,
``values``); replies are built from the core's results. ``Decide`` and
``DecideBatch`` answers go straight to protobuf wire bytes, without building messages
(``encode_decision``); the rarer replies are built with the generated classes.

Why bytes: building a ``DecideResponse`` message tree per request (offers, reasons) cost more
than the whole decision (27 us vs. 57 us in-process for five offers): the same
Python-overhead trap as feast #3649. Protobuf's wire format concatenates, so:

- once per catalog version, ``OfferEncodings`` serialises with the generated classes
  everything about an offer that does not change between requests (id, name, value,
  lever, creative, its ELIGIBLE reason), and each feature's FEATURE reason prefix,
  into the byte tables of ``kernels.encoding``;
- per request, ``encode_decision`` has ``kernels.encoding.encode_answer`` write what
  varies (rank, score, propensity, feature weights, the response header) around
  them, in compiled code (3.0 us for five offers, against 8.1 us assembling the same
  pieces in Python with ``struct``).

The result parses to exactly the message ``decision_message`` builds with the classes;
the tests compare the two on many decisions, so a change to the proto that this module
does not follow fails them.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from decision.config.catalog import Catalog, Offer
from decision.core.ingest import Event
from decision.core.prepared import COLD_START, N_FEATURE_REASONS
from decision.core.requests import Identifier
from decision.core.respond import DecideQuery, Decision
from decision.store.layout import ProfileRecord, recent_events
from decision.core.learning import ModelInsight
from decision.store.records import DecisionRecord, Trigger
from decision.v1 import decision_pb2 as pb
from kernels.encoding import (
    F_COLD_REASON, F_COLD_START, F_TIMING_NOW, F_VERSION, HEAD, encode_answer,
)

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
_T_POLICY_REMOVED_COUNT = _tag(_F["policy_removed_count"], _VARINT)
_TIMING_NOW = _length_delimited(_tag(_F["timing"], _LEN), b"now")
_T_TIMING = _tag(_F["timing"], _LEN)
_T_REASON = _tag(_O["reasons"], _LEN)
_T_WEIGHT = _tag(_R["weight"], _I64)
_COLD_REASON = _length_delimited(_T_REASON, pb.Reason(
    code=COLD_START.code, detail=COLD_START.detail).SerializeToString())


if sys.byteorder != "little":  # kernels.encoding writes doubles in the machine's order
    raise ImportError("decision.edge.wire encodes replies on little-endian machines only")


def _one_byte(tag: bytes) -> int:
    if len(tag) != 1:  # field numbers 1-15 have one-byte tags; the kernel writes one byte
        raise AssertionError(f"tag {tag!r} is not one byte: kernels.encoding needs updating")
    return tag[0]


_TAGS = np.array([_one_byte(t) for t in (
    _T_DECISION_ID, _T_OFFERS, _T_ELIGIBLE_COUNT, _T_DECIDED_AT, _T_DELIVER_AT, _T_TIMING,
    _tag(_O["rank"], _VARINT), _tag(_O["score"], _I64), _tag(_O["propensity"], _I64),
    _tag(_O["probability"], _I64))],
    dtype=np.uint8)


@functools.lru_cache(maxsize=4096)
def _tail(experiment: str, arm: str, policy: str, model_version: str) -> bytes:
    """The fields after timing, encoded once per combination (a few per model version)."""
    return b"".join(_length_delimited(_tag(_F[name], _LEN), text.encode())
                    for name, text in (("experiment", experiment), ("arm", arm),
                                       ("policy", policy), ("model_version", model_version))
                    if text)


class OfferEncodings:
    """The per-catalog-version byte tables ``encode_decision`` assembles answers from."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        static = [
            pb.DecidedOffer(
                offer_id=o.id, name=o.name, value=o.value, lever=o.lever,
                creative_json=o.creative_json,
                reasons=[pb.Reason(code="ELIGIBLE", detail=o.rule or "no rule")],
            ).SerializeToString()
            for o in catalog.offers
        ]
        # a FEATURE reason is its static prefix + weight (8 bytes): fixed length
        prefixes = []
        for name in catalog.feature_names:
            prefix = pb.Reason(code="FEATURE", detail=name).SerializeToString()
            body_len = len(prefix) + len(_T_WEIGHT) + 8
            prefixes.append(_T_REASON + varint(body_len) + prefix + _T_WEIGHT)
        fixed = [b""] * 4
        fixed[F_COLD_REASON], fixed[F_COLD_START] = _COLD_REASON, _COLD_START
        fixed[F_VERSION] = _length_delimited(_T_CATALOG_VERSION, catalog.version.encode())
        fixed[F_TIMING_NOW] = _TIMING_NOW
        strings = static + prefixes + fixed  # kernels.encoding's blob: offers, features, fixed
        at = np.zeros(len(strings) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in strings], out=at[1:])
        blob = np.frombuffer(b"".join(strings), dtype=np.uint8)
        self.tables = (_TAGS, blob, at, len(static), len(static) + len(prefixes))
        # compiled (or loaded from the cache) here, off the request path; the types
        # are those of every real call
        encode_answer(np.zeros((0, HEAD + 2 * N_FEATURE_REASONS)), N_FEATURE_REASONS, 0,
                      False, 0, 0, b"", b"", b"", *self.tables)


def encode_decision(d: Decision, enc: OfferEncodings) -> bytes:
    """The serialised ``DecideResponse`` for ``d`` (``enc`` from d's catalog)."""
    timing = d.timing
    body = encode_answer(d.ranked, N_FEATURE_REASONS, d.eligible_count, d.cold_start,
                         d.decided_at_ms, d.deliver_at_ms, d.decision_id.encode(),
                         b"" if timing == "now" else timing.encode(),
                         _tail(d.experiment, d.arm, d.policy, d.model_version),
                         *enc.tables).tobytes()
    if not d.removed and not d.policy_removed_count:
        return body
    # rare extras, built with the classes: explain's removed offers, and why an empty
    # answer is empty
    extras = [_length_delimited(_T_REMOVED, pb.RemovedOffer(
        offer_id=offer.id, reason=pb.Reason(code=reason.code, detail=reason.detail),
    ).SerializeToString()) for offer, reason in d.removed_offers]
    if d.policy_removed_count:
        extras.append(_T_POLICY_REMOVED_COUNT + varint(d.policy_removed_count))
    return body + b"".join(extras)


_T_RESPONSES = field_tag(pb.DecideBatchResponse.DESCRIPTOR.fields_by_name["responses"])


def encode_batch(encoded: list[bytes]) -> bytes:
    """The serialised ``DecideBatchResponse`` of answers already encoded."""
    parts = []
    for answer in encoded:
        parts += (_T_RESPONSES, varint(len(answer)), answer)
    return b"".join(parts)


# ------------------------------------------------------------------ with the classes
def identifier(msg: pb.Identifier) -> Identifier:
    return Identifier(msg.kind, msg.value)


def event(msg: pb.Event) -> Event:
    return Event(type=msg.type, customer=identifier(msg.customer), event_id=msg.event_id,
                 timestamp_ms=msg.timestamp_ms, channel=msg.channel,
                 attributes=values(msg.attributes), offer_id=msg.offer_id,
                 decision_id=msg.decision_id)


def query(request: pb.DecideRequest) -> DecideQuery:
    return DecideQuery(
        customer=identifier(request.customer), channel=request.channel,
        placement=request.placement,
        limit=request.limit if request.HasField("limit") else None,
        context=values(request.context),
        explain=request.explain,
    )


def values(entries) -> dict:
    """A map<string, Value> as a dict of plain values (unset: None). By key, then
    item: upb builds (key, Value) pairs for ``items()`` at about twice the cost."""
    out = {}
    for key in entries:
        msg = entries[key]
        which = msg.WhichOneof("kind")
        out[key] = None if which is None else getattr(msg, which)
    return out


def to_value(v) -> pb.Value:
    if isinstance(v, bool):
        return pb.Value(bool_value=v)
    if isinstance(v, str):
        return pb.Value(string_value=v)
    return pb.Value(number_value=v)


def decision_message(d: Decision) -> pb.DecideResponse:
    """The DecideResponse as a message tree: the reference ``encode_decision``'s bytes
    are tested against."""
    return pb.DecideResponse(
        decision_id=d.decision_id, cold_start=d.cold_start, eligible_count=d.eligible_count,
        catalog_version=d.catalog_version, decided_at_ms=d.decided_at_ms,
        deliver_at_ms=d.deliver_at_ms, timing=d.timing,
        removed=[pb.RemovedOffer(offer_id=o.id, reason=pb.Reason(code=r.code, detail=r.detail))
                 for o, r in d.removed_offers],
        policy_removed_count=d.policy_removed_count,
        experiment=d.experiment, arm=d.arm, policy=d.policy, model_version=d.model_version,
        offers=[pb.DecidedOffer(
            offer_id=r.offer.id, name=r.offer.name, rank=r.rank, score=r.score,
            propensity=r.propensity, value=r.offer.value, lever=r.offer.lever,
            creative_json=r.offer.creative_json, probability=r.probability,
            reasons=[pb.Reason(code=x.code, detail=x.detail, weight=x.weight)
                     for x in r.reasons],
        ) for r in d.offers],
    )


def trigger(t: Trigger, catalog: Catalog) -> pb.Trigger:
    msg = pb.Trigger(cursor=t.cursor, kind=t.kind, name=t.name,
                     profile_key=f"{t.profile_key:016x}",
                     identifiers=[pb.Identifier(kind=k, value=v) for k, v in t.identifiers],
                     at_ms=t.at_ms, event_id=t.event_id)
    d = t.decision
    if d is not None:
        msg.channel = d["channel"]
        msg.decision.CopyFrom(pb.DecideResponse(
            decision_id=d["id"], decided_at_ms=t.at_ms, deliver_at_ms=d["deliver_at_ms"],
            timing=d["timing"], catalog_version=d.get("catalog", catalog.version),
            eligible_count=d.get("eligible", len(d["offers"])),
            offers=[_triggered_offer(catalog, rank, *o)
                    for rank, o in enumerate(d["offers"], 1)]))
    return msg


def _triggered_offer(catalog: Catalog, rank: int, offer_id: str, score: float,
                     propensity: float) -> pb.DecidedOffer:
    """An offer an action decided, described by the active catalog (when it still has
    the offer)."""
    msg = pb.DecidedOffer(offer_id=offer_id, rank=rank, score=score, propensity=propensity)
    index = catalog.offer_index.get(offer_id)
    if index is not None:
        o = catalog.offers[index]
        msg.name, msg.value, msg.lever, msg.creative_json = (o.name, o.value, o.lever,
                                                             o.creative_json)
    return msg


def profile(p: ProfileRecord, feature_names: tuple[str, ...]) -> pb.Profile:
    return pb.Profile(
        profile_key=f"{p.key:016x}",
        identifiers=[pb.Identifier(kind=k, value=v) for k, v in p.identifiers],
        attributes={k: to_value(v) for k, v in p.attributes.items()},
        features={n: float(v) for n, v in zip(feature_names, p.features.tolist())},
        counters=p.counters, segments=p.segments, created_at_ms=p.created_at_ms,
        updated_at_ms=p.updated_at_ms,
        recent_events=[pb.ProfileEvent(type=t, at_ms=at, channel=c, offer_id=o, decision_id=d)
                       for t, at, c, o, d in reversed(recent_events(p))],
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000) if abs(seconds) != float("inf") else 0


def offer_info(o: Offer) -> pb.OfferInfo:
    return pb.OfferInfo(
        offer_id=o.id, name=o.name, channels=o.channels, placements=o.placements,
        value=o.value, lever=o.lever, rule=o.rule, valid_from_ms=_ms(o.valid_from),
        valid_until_ms=_ms(o.valid_until), creative_json=o.creative_json,
    )


def catalog_info(c: Catalog) -> pb.CatalogInfo:
    return pb.CatalogInfo(version=c.version, offer_count=len(c.offers), channels=c.channels,
                          placements=c.placements, loaded_at_ms=c.loaded_at_ms)


# ------------------------------------------------------------------ learning
def model_info(m: ModelInsight) -> pb.ModelInfo:
    c = m.counters
    return pb.ModelInfo(
        model_version=m.model_version, catalog_version=m.catalog_version,
        published_at_ms=m.published_ms, examples=m.examples, outcomes=c.outcomes,
        duplicates=c.duplicates, late=c.late, unknown_decision=c.unknown_decision,
        pending=m.pending,
        shared_top_features=[pb.FeatureWeight(name=n, weight=w)
                             for n, w in m.shared_top_features],
        offers=[pb.OfferModel(
            offer_id=o.offer_id, channel=o.channel, impressions=o.impressions,
            positives=o.positives, propensity=o.propensity, propensity_low=o.low,
            propensity_high=o.high, auc=o.auc, auc_examples=o.auc_examples,
            updated_at_ms=o.updated_ms, prior_only=o.prior_only,
            top_features=[pb.FeatureWeight(name=n, weight=w) for n, w in o.top_features])
            for o in m.offers])


def _recorded(offers) -> list:
    return [pb.RecordedOffer(offer_id=o.offer_id, rank=o.rank, score=o.score,
                             propensity=o.propensity, value=o.value, lever=o.lever,
                             probability=o.probability) for o in offers]


def decision_record(r: DecisionRecord, feature_names: list[str]) -> pb.DecisionRecord:
    return pb.DecisionRecord(
        decision_id=r.decision_id, decided_at_ms=r.decided_ms,
        profile_key=f"{r.profile_key:016x}" if r.profile_key else "", channel=r.channel,
        placement=r.placement, catalog_version=r.catalog_version,
        model_version=r.model_version, experiment=r.experiment, arm=r.arm, policy=r.policy,
        features=np.frombuffer(r.features, dtype="<f4").tolist(),
        feature_names=feature_names if len(r.features) == 4 * len(feature_names) else [],
        offers=_recorded(r.offers), eligible_count=r.eligible, shadow_arm=r.shadow_arm,
        shadow_offers=_recorded(r.shadow_offers))
