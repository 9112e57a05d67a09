"""Triggers: durable, ordered records of moments a journey system must act on.

Two sources, both written in the same transaction as the change that caused them:

- every change of segment membership: ``segment_enter`` / ``segment_leave``, named by
  the segment ("a purchase makes her high value: enter the high-value journey");
- configured event patterns, in the catalog::

      [triggers.cart_reminder]
      event = "add_to_cart"                  # an event of this type...
      when = "not segment.high_value"        # ...after which this holds (optional)

  produce a trigger of kind ``event`` named ``cart_reminder``;
- delayed actions: a trigger with a ``delay`` waits on purpose, and can be cancelled::

      [triggers.cart_reminder]
      event = "add_to_cart"
      when = "not segment.high_value"        # checked when scheduled and when due
      delay = "30m"                          # fire 30 minutes after the (last) event...
      cancel_on = ["purchase"]               # ...unless one of these events comes first
      decide = { channel = "email", limit = 1 }   # decide what to send when it fires

  The event schedules it: a durable row of the ``schedule`` sub-db, keyed by its due
  time, written in the event's transaction (a second add-to-cart moves it: one
  pending action per customer and trigger). A ``cancel_on`` event deletes it. When it
  comes due (``decision.core.actions``), one write transaction removes the row, checks
  ``when`` on the profile as it is then, decides with ``decide`` (the offer of that
  moment, under the contact policies of that moment) and appends a trigger of kind
  ``action`` carrying the decision: fired once, surviving restarts.

The log is the ``triggers`` sub-db: key = cursor (uint64 big-endian, allocated in the
write transaction, so cursors are ordered across processes, with gaps only where
ForgetCustomer erased records); its records are ``decision.store.records.Trigger``,
written by ``ProfileStore.log_triggers`` and ``log_action``.
``WatchTriggers`` replays it from a cursor and follows it live: at least once, and a
subscriber that reconnects with its last cursor + 1 loses nothing.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from decision.errors import CatalogError
from decision.store.layout import ProfileRecord
from decision.config.rules import FieldTable
from decision.config.segments import RuleSet
from decision.config.timing import duration_ms

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_DECIDE_LIMIT = 10


class DecideSpec(NamedTuple):
    """What a delayed action decides when it fires."""

    channel: str
    placement: str
    limit: int


class Delayed(NamedTuple):
    delay_ms: int
    cancel_on: tuple[str, ...]
    decide: DecideSpec | None


class TriggerSet:
    """The catalog's event-pattern triggers and delayed actions, compiled (immutable)."""

    def __init__(self, table, event_types, fields: FieldTable, channels=(), placements=()):
        if not isinstance(table, dict):
            raise CatalogError("triggers: must be a table of [triggers.<name>] tables")
        conditions = {}
        self.by_event: dict[str, list[str]] = {}
        self.cancelled_by: dict[str, list[str]] = {}
        self.delayed: dict[str, Delayed] = {}
        for name, spec in table.items():
            where = f"triggers.{name}"
            if not _NAME.match(name) or not isinstance(spec, dict):
                raise CatalogError(f"{where}: a trigger is a table named with lowercase "
                                   "letters, digits and '_'")
            unknown = set(spec) - {"event", "when", "delay", "cancel_on", "decide"}
            if unknown:
                raise CatalogError(f"{where}: unknown key '{sorted(unknown)[0]}' "
                                   "(allowed: cancel_on, decide, delay, event, when)")
            event = spec.get("event")
            if not isinstance(event, str) or event not in event_types:
                raise CatalogError(f"{where}.event: unknown event type {event!r} (known: "
                                   f"{', '.join(sorted(event_types)) or 'none declared'})")
            when = spec.get("when", "")
            if not isinstance(when, str):
                raise CatalogError(f"{where}.when: must be a rule (a string)")
            conditions[name] = when
            self.by_event.setdefault(event, []).append(name)
            if "delay" in spec:
                self.delayed[name] = self._delayed(spec, where, event, event_types,
                                                   channels, placements)
                for cancel in self.delayed[name].cancel_on:
                    self.cancelled_by.setdefault(cancel, []).append(name)
            elif "cancel_on" in spec or "decide" in spec:
                raise CatalogError(f"{where}: cancel_on and decide need a delay (a trigger "
                                   "without one fires at once)")
        self.conditions = RuleSet(conditions, fields, "trigger",
                                  namespaces=("profile", "counter", "segment"))

    @staticmethod
    def _delayed(spec: dict, where: str, event: str, event_types, channels,
                 placements) -> Delayed:
        delay = duration_ms(spec["delay"], f"{where}.delay")
        cancel_on = spec.get("cancel_on", [])
        if not isinstance(cancel_on, list) or not all(isinstance(c, str) for c in cancel_on):
            raise CatalogError(f"{where}.cancel_on: a list of event types")
        for c in cancel_on:
            if c not in event_types:
                raise CatalogError(f"{where}.cancel_on: unknown event type {c!r} (known: "
                                   f"{', '.join(sorted(event_types))})")
            if c == event:
                raise CatalogError(f"{where}.cancel_on: {c!r} is also the event that "
                                   "schedules it: it would cancel itself")
        decide = spec.get("decide")
        if decide is None:
            return Delayed(delay, tuple(cancel_on), None)
        if not isinstance(decide, dict) or set(decide) - {"channel", "placement", "limit"}:
            raise CatalogError(f"{where}.decide: a table {{ channel = \"email\", placement "
                               "= \"...\", limit = 1 }}")
        channel = decide.get("channel")
        if channel not in channels:
            raise CatalogError(f"{where}.decide.channel: unknown channel {channel!r} "
                               f"(catalog channels: {', '.join(channels)})")
        placement = decide.get("placement", "")
        if placement and placement not in placements:
            raise CatalogError(f"{where}.decide.placement: unknown placement {placement!r}")
        limit = decide.get("limit", 1)
        if isinstance(limit, bool) or not isinstance(limit, int) or \
                not 1 <= limit <= MAX_DECIDE_LIMIT:
            raise CatalogError(f"{where}.decide.limit: 1 to {MAX_DECIDE_LIMIT}, got {limit!r}")
        return Delayed(delay, tuple(cancel_on), DecideSpec(channel, placement, limit))

    def fired(self, event_type: str, record: ProfileRecord) -> tuple[list[str], list[str]]:
        """(the triggers an event of ``event_type`` fires now, the delayed actions it
        schedules), given the profile after it."""
        candidates = self.by_event.get(event_type)
        if not candidates:
            return [], []
        holding = self.conditions.evaluate(record)
        now = [n for n in candidates if n in holding and n not in self.delayed]
        later = [n for n in candidates if n in holding and n in self.delayed]
        return now, later

    def holds(self, name: str, record: ProfileRecord) -> bool:
        return name in self.conditions.evaluate(record)

