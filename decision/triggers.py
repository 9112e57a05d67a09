"""Triggers: durable, ordered records of moments a journey system must act on.

Two sources, both written in the same transaction as the change that caused them:

- every change of segment membership: ``segment_enter`` / ``segment_leave``, named by
  the segment ("a purchase makes her high value: enter the high-value journey");
- configured event patterns, in the catalog::

      [triggers.cart_reminder]
      event = "add_to_cart"                  # an event of this type...
      when = "not segment.high_value"        # ...after which this holds (optional)

  produce a trigger of kind ``event`` named ``cart_reminder``.

The log is the ``triggers`` sub-db: key = cursor (uint64 big-endian, allocated in the
write transaction, so cursors are ordered across processes, with gaps only where
ForgetCustomer erased records), value =
msgpack ``[kind, name, profile key, [[kind, value], ...], at_ms, event_id]``.
``WatchTriggers`` replays it from a cursor and follows it live: at least once, and a
subscriber that reconnects with its last cursor + 1 loses nothing.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgpack

from decision.errors import CatalogError
from decision.layout import ProfileRecord
from decision.rules import FieldTable
from decision.segments import RuleSet

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SEGMENT_ENTER, SEGMENT_LEAVE, EVENT = "segment_enter", "segment_leave", "event"


class Trigger(NamedTuple):
    cursor: int
    kind: str  # segment_enter | segment_leave | event
    name: str  # the segment, or the configured trigger
    profile_key: int
    identifiers: list[tuple[str, str]]
    at_ms: int
    event_id: str


class TriggerSet:
    """The catalog's event-pattern triggers, compiled (immutable)."""

    def __init__(self, table, event_types, fields: FieldTable):
        if not isinstance(table, dict):
            raise CatalogError("triggers: must be a table of [triggers.<name>] tables")
        conditions = {}
        self.by_event: dict[str, list[str]] = {}
        for name, spec in table.items():
            where = f"triggers.{name}"
            if not _NAME.match(name) or not isinstance(spec, dict):
                raise CatalogError(f"{where}: a trigger is a table named with lowercase "
                                   "letters, digits and '_'")
            unknown = set(spec) - {"event", "when"}
            if unknown:
                raise CatalogError(f"{where}: unknown key '{sorted(unknown)[0]}' "
                                   "(allowed: event, when)")
            event = spec.get("event")
            if not isinstance(event, str) or event not in event_types:
                raise CatalogError(f"{where}.event: unknown event type {event!r} (known: "
                                   f"{', '.join(sorted(event_types)) or 'none declared'})")
            when = spec.get("when", "")
            if not isinstance(when, str):
                raise CatalogError(f"{where}.when: must be a rule (a string)")
            conditions[name] = when
            self.by_event.setdefault(event, []).append(name)
        self.conditions = RuleSet(conditions, fields, "trigger",
                                  namespaces=("profile", "counter", "segment"))

    def fired(self, event_type: str, record: ProfileRecord) -> list[str]:
        """The triggers an event of ``event_type`` fires, given the profile after it."""
        candidates = self.by_event.get(event_type)
        if not candidates:
            return []
        holding = self.conditions.evaluate(record)
        return [name for name in candidates if name in holding]


def record_changes(store, txn, record: ProfileRecord, entered, left, at_ms: int,
                   fired=(), event_id: str = "") -> None:
    """Append the triggers of one profile write to the log, inside its transaction."""
    for kind, names in ((SEGMENT_ENTER, entered), (SEGMENT_LEAVE, left), (EVENT, fired)):
        for name in names:
            store.append_trigger(txn, msgpack.packb(
                [kind, name, record.key, [list(i) for i in record.identifiers], at_ms,
                 event_id]))


def decode(cursor: int, value: bytes) -> Trigger:
    kind, name, key, identifiers, at_ms, event_id = msgpack.unpackb(value)
    return Trigger(cursor, kind, name, key, [tuple(i) for i in identifiers], at_ms, event_id)
