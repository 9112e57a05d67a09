"""The stored records other than profiles (``decision.store.layout``): their one
packing and unpacking. Only ``decision.store`` calls these; the rest of the server
passes the typed tuples.

- ``EventRecord``: the value of an ``events`` entry, under an applied event's id:
  msgpack ``[profile key, applied at ms]`` (duplicates are acknowledged with it).
- ``ScheduledAction``: the value of a ``schedule`` row: msgpack ``[trigger name,
  profile key, scheduled at ms, event_id]``.
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
