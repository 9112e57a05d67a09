"""The stored records other than profiles (``decision.store.layout``): their one
packing and unpacking. Only ``decision.store`` calls these; the rest of the server
passes the typed tuples.

- ``EventRecord``: the value of an ``events`` entry, under an applied event's id:
  msgpack ``[profile key, applied at ms]`` (duplicates are acknowledged with it).
- ``ScheduledAction``: the value of a ``schedule`` row: msgpack ``[trigger name,
  profile key, scheduled at ms, event_id]``.
- ``DecisionRecord``, ``OutcomeRecord``, ``Label``: the learning loop's records
  (``decisions``, ``outcomes``, ``labels``), msgpack lists of their fields.
- ``Trigger``: the value of a ``triggers`` log entry: msgpack ``[kind, name, profile
  key, [[kind, value], ...], at_ms, event_id]``, plus a 7th element for actions that
  decided: ``{"id", "channel", "placement", "eligible", "catalog", "deliver_at_ms",
  "timing", "offers": [[offer_id, score, propensity], ...]}``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import msgpack
import numpy as np

SEGMENT_ENTER, SEGMENT_LEAVE, EVENT, ACTION = "segment_enter", "segment_leave", "event", "action"


class ScheduledAction(NamedTuple):
    """A delayed action waiting in the schedule (``decision.config.triggers``)."""

    name: str  # the trigger
    profile_key: int
    scheduled_ms: int  # when the event that scheduled it was applied
    event_id: str = ""  # that event's id


class Trigger(NamedTuple):
    """One entry of the trigger log."""

    cursor: int
    kind: str  # segment_enter | segment_leave | event | action
    name: str
    profile_key: int
    identifiers: list[tuple[str, str]]
    at_ms: int
    event_id: str
    decision: dict | None = None  # actions that decided: what to send


def pack_event(profile_key: int, applied_ms: int) -> bytes:
    return msgpack.packb([profile_key, applied_ms])


def event_profile(value) -> int:
    """The profile key an applied-event record names."""
    return msgpack.unpackb(value)[0]


def pack_action(action: ScheduledAction) -> bytes:
    return msgpack.packb(list(action))


def unpack_action(value) -> ScheduledAction:
    name, key, scheduled_ms, event_id = msgpack.unpackb(value)
    return ScheduledAction(name, key, scheduled_ms, event_id)


def pack_trigger(kind: str, name: str, profile_key: int, identifiers, at_ms: int,
                 event_id: str, decision: dict | None = None) -> bytes:
    item = [kind, name, profile_key, [list(i) for i in identifiers], at_ms, event_id]
    if decision is not None or kind == ACTION:
        item.append(decision)
    return msgpack.packb(item)


def unpack_trigger(cursor: int, value) -> Trigger:
    kind, name, key, identifiers, at_ms, event_id, *rest = msgpack.unpackb(value)
    return Trigger(cursor, kind, name, key, [tuple(i) for i in identifiers], at_ms, event_id,
                   rest[0] if rest else None)


def owner(value, position: int):
    """The profile key at ``position`` of a msgpack list value; None for a value that
    is not one (written by something else: it names no profile of ours)."""
    try:
        item = msgpack.unpackb(value)[position]
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException):
        return None
    return item if isinstance(item, int) else None


# ------------------------------------------------------------------ the learning loop
class RecordedOffer(NamedTuple):
    offer_id: str
    rank: int
    score: float
    propensity: float
    value: float
    lever: float
    probability: float


class DecisionRecord(NamedTuple):
    """What one decision saw and did (the ``decisions`` sub-db, under its id)."""

    decision_id: str
    decided_ms: int
    profile_key: int  # 0: cold start (no profile)
    channel: str
    placement: str
    catalog_version: str
    model_version: str
    experiment: str
    arm: str
    policy: str
    features: bytes  # float32 little-endian, the catalog's feature order
    offers: tuple[RecordedOffer, ...]
    eligible: int
    shadow_arm: str = ""
    shadow_offers: tuple[RecordedOffer, ...] = ()
    owner: bytes = b""  # the 8 bytes it is filed under for erasure (``decision_owner``)
    support: bytes = b""  # the eligible set's bit mask when the policy explored

    def offer(self, offer_id: str) -> RecordedOffer | None:
        for o in self.offers:
            if o.offer_id == offer_id:
                return o
        return None


# A decision record's value, built on the request path in about a microsecond (no
# per-record msgpack): the fields every decision of one plan shares are packed once
# (``pack_decision_head``), the rest are fixed-size binary:
#
#   u16 head length | head: msgpack [channel, placement, catalog version, model version,
#   experiment, arm, policy, shadow arm] | "<qQ8sIHHHH": decided ms, profile key, owner,
#   eligible, features F, offers r, shadow offers s, row width w | float32[F] features |
#   float64[r, w] the kernel's ranked rows as they are (offer index, score, propensity,
#   probability, then the reasons) | float64[s, w] the shadow arm's | the rest: the
#   eligible set as a bit mask over the catalog's offers (bit i & 7 of byte i >> 3),
#   written when the policy explored (what a what-if replay needs), else empty
#
# Offer indices are those of the record's catalog version, whose (id, value, lever)
# table the store keeps (``ProfileStore.record_offer_table``).
_FIXED = struct.Struct("<qQ8sIHHHH")


def pack_decision_head(channel: str, placement: str, catalog_version: str,
                       model_version: str, experiment: str, arm: str, policy: str,
                       shadow_arm: str) -> bytes:
    head = msgpack.packb([channel, placement, catalog_version, model_version, experiment, arm,
                          policy, shadow_arm])
    return len(head).to_bytes(2, "little") + head


def pack_decision_value(head: bytes, decided_ms: int, profile_key: int, owner: bytes,
                        eligible: int, features: bytes, width: int, ranked: bytes,
                        shadow: bytes, support: bytes = b"") -> bytes:
    """A record's value: ``head`` from ``pack_decision_head``, ``features`` float32 bytes,
    ``ranked`` / ``shadow`` float64[r, width] bytes, ``support`` the eligible set's bit
    mask (or empty)."""
    row = 8 * width
    return b"".join((head, _FIXED.pack(decided_ms, profile_key, owner, eligible,
                                       len(features) // 4, len(ranked) // row,
                                       len(shadow) // row, width), features, ranked, shadow,
                     support))


def decision_owner(value) -> bytes:
    """The owner bytes of a record's value (for retention: without the offer table)."""
    n = int.from_bytes(bytes(value[:2]), "little")
    return bytes(value[2 + n + 16:2 + n + 24])


def _parts(value: bytes) -> tuple[bytes, tuple, int]:
    """A record value's head (its msgpack bytes), its fixed fields, and where its
    features start."""
    at = 2 + int.from_bytes(value[:2], "little")
    return value[2:at], _FIXED.unpack_from(value, at), at + _FIXED.size


def unpack_decision(decision_id: str, value, offer_table) -> DecisionRecord:
    """The ``DecisionRecord`` of a stored value; ``offer_table(catalog version)`` gives
    that version's [(offer id, value, lever), ...] (None: unknown, ids left empty)."""
    value = bytes(value)
    head, fixed, at = _parts(value)
    (channel, placement, catalog_version, model_version, experiment, arm, policy,
     shadow_arm) = msgpack.unpackb(head)
    decided_ms, key, owner, eligible, f, r, s, width = fixed
    features = value[at:at + 4 * f]
    at += 4 * f
    table = offer_table(catalog_version) or []

    def offers(at: int, count: int) -> tuple[RecordedOffer, ...]:
        rows = struct.unpack_from(f"<{width * count}d", value, at)
        out = []
        for q in range(count):
            i, score, propensity, probability = rows[width * q:width * q + 4]
            oid, v, lever = table[int(i)] if int(i) < len(table) else ("", 0.0, 0.0)
            out.append(RecordedOffer(oid, q + 1, score, propensity, v, lever, probability))
        return tuple(out)

    return DecisionRecord(decision_id, decided_ms, key, channel, placement, catalog_version,
                          model_version, experiment, arm, policy, features, offers(at, r),
                          eligible, shadow_arm, offers(at + 8 * width * r, s), owner,
                          value[at + 8 * width * (r + s):])


class OutcomeRecord(NamedTuple):
    """An outcome event that names a decision, appended to the ``outcomes`` log in the
    transaction that applied the event; the learner reads the log in order."""

    decision_id: str
    offer_id: str
    kind: str  # impression | click | conversion | dismissal
    at_ms: int  # the event's time
    channel: str
    revenue: float
    profile_key: int


def pack_outcome(outcome: OutcomeRecord) -> bytes:
    return msgpack.packb(list(outcome))


def unpack_outcome(value) -> OutcomeRecord:
    return OutcomeRecord(*msgpack.unpackb(value))


class Label(NamedTuple):
    """An impression waiting for its response window to close (``labels``)."""

    deadline_ms: int
    decision_id: str
    offer_id: str
    done: bool  # labelled already (a response or a dismissal came): a tombstone that
    #             counts duplicates until the deadline


def label_key(deadline_ms: int, decision_id: str, offer_id: str) -> bytes:
    return deadline_ms.to_bytes(8, "big") + f"{decision_id}\x1f{offer_id}".encode()


def unpack_label(key: bytes, value: bytes) -> Label:
    decision_id, offer_id = key[8:].decode().split("\x1f", 1)
    return Label(int.from_bytes(key[:8], "big"), decision_id, offer_id, value == b"\x01")


class ModelEntry(NamedTuple):
    """One learned model's posterior (``models``): the shared model under ``shared``,
    an offer's own under ``offer id \\x1f channel group``. Arrays are float64 bytes."""

    signature: str  # the feature lists it was learned over: a change starts afresh
    mean: bytes
    precision: bytes
    examples: int
    positives: int
    updated_ms: int
    feature_sum: bytes = b""  # sum of the examples' features (their mean: the base)
    auc: float = 0.0
    auc_examples: int = 0


def pack_model(entry: ModelEntry) -> bytes:
    return msgpack.packb(list(entry), use_bin_type=True)


def unpack_model(value) -> ModelEntry:
    return ModelEntry(*msgpack.unpackb(value))


def decision_columns(page: list[tuple[bytes, bytes]], offer_table) -> tuple[dict, dict]:
    """Raw (id, value) records as columns, for the analytical export
    (``decision.analytics.export``): the decisions' (their features as one (offsets,
    float32 values) pair under ``features``), and one row per offer shown."""
    heads: dict[bytes, list] = {}
    d = {n: [] for n in ("decision_id", "decided_ms", "profile_key", "owner", "channel",
                         "placement", "catalog_version", "model_version", "experiment",
                         "arm", "policy", "shadow_arm", "eligible", "shown", "support")}
    s = {n: [] for n in ("decision_id", "owner", "offer_id", "offer_index", "rank", "score",
                         "propensity", "probability", "value", "lever")}
    features, offsets = [], [0]
    for key, value in page:
        raw, fixed, at = _parts(value)
        head = heads.get(raw)
        if head is None:
            head = heads[raw] = msgpack.unpackb(raw)
        decided_ms, profile_key, owner, eligible, f, r, sh, width = fixed
        decision_id = key.decode()
        who = int.from_bytes(owner, "big")
        for name, x in zip(d, (decision_id, decided_ms, profile_key, who, *head, eligible, r,
                               value[at + 4 * f + 8 * width * (r + sh):])):
            d[name].append(x)
        features.append(value[at:at + 4 * f])
        offsets.append(offsets[-1] + f)
        if r:
            rows = struct.unpack_from(f"<{width * r}d", value, at + 4 * f)
            table = offer_table(head[2]) or []
            for q in range(r):
                i = int(rows[width * q])
                oid, v, lever = table[i] if i < len(table) else ("", 0.0, 0.0)
                for name, x in zip(s, (decision_id, who, oid, i, q + 1, rows[width * q + 1],
                                       rows[width * q + 2], rows[width * q + 3], v, lever)):
                    s[name].append(x)
    d["features"] = (np.asarray(offsets, dtype=np.int32),
                     np.frombuffer(b"".join(features), dtype="<f4"))
    return d, s
