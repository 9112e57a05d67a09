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

from typing import NamedTuple

import msgpack

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

    def offer(self, offer_id: str) -> RecordedOffer | None:
        for o in self.offers:
            if o.offer_id == offer_id:
                return o
        return None


def pack_decision(record: DecisionRecord) -> bytes:
    item = list(record)
    item[11] = [list(o) for o in record.offers]
    item[14] = [list(o) for o in record.shadow_offers]
    return msgpack.packb(item[1:], use_bin_type=True)


def pack_decision_fields(fields: list) -> bytes:
    """``pack_decision`` of a record given as the plain list of its fields after the
    id, offers as lists (the recorder's fast path: no tuples built per record)."""
    return msgpack.packb(fields, use_bin_type=True)


def unpack_decision(decision_id: str, value) -> DecisionRecord:
    item = msgpack.unpackb(value)
    item[10] = tuple(RecordedOffer(*o) for o in item[10])
    item[13] = tuple(RecordedOffer(*o) for o in item[13])
    return DecisionRecord(decision_id, *item)


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
