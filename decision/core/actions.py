"""Delayed actions: fire the ones come due (``decision.config.triggers``).

An event schedules an action in its own transaction (``decision.core.ingest``); every
server process polls ``fire_due``, and the write transaction that takes an action off
the schedule makes it fire once, whichever process takes it.
"""

from __future__ import annotations

import logging
from typing import Callable

from decision.core.prepared import Prepared
from decision.core.respond import Responder
from decision.errors import DecisionError
from decision.store import layout
from decision.store.database import ProfileStore

log = logging.getLogger("decision.core.actions")


class DelayedActions:
    def __init__(self, store: ProfileStore, responder: Responder, clock: Callable[[], float]):
        self.store = store
        self.responder = responder
        self.clock = clock

    def fire_due(self, active: Prepared, limit: int = 256) -> int:
        """Fire the delayed actions due by now: in one write transaction, take them off
        the schedule, check each trigger's condition on the profile as it is now,
        decide what to send (with the catalog, rules and policies of this moment) and
        append the ``action`` trigger. Returns how many fired."""
        now = self.clock()
        now_ms = int(now * 1000)
        store = self.store
        due = store.next_due_ms()
        if due is None or due > now_ms:
            return 0
        triggers = active.catalog.triggers

        def work(txn) -> int:
            fired = 0
            behind = None  # this process's catalog lags the published one
            for due_ms, action in store.take_due(txn, now_ms, limit):
                name, key = action.name, action.profile_key
                spec = triggers.delayed.get(name)
                if spec is None:
                    if behind is None:
                        behind = store.published_catalog_in(txn) != active.catalog.version
                    if behind:  # another process knows this trigger: leave it to it
                        store.schedule_action(txn, due_ms, action)
                    else:
                        log.warning("delayed action %s of profile %016x dropped: the catalog "
                                    "no longer has this trigger", name, key)
                    continue
                raw = store.profile_value(txn, key)
                if raw is None:
                    continue  # the customer was erased
                try:
                    record = layout.decode(raw, key)
                    if not triggers.holds(name, record):
                        continue
                    decision = None
                    if spec.decide is not None:
                        decision = self._decision(active, spec.decide, key, raw, now)
                except DecisionError as exc:
                    log.error("delayed action %s of profile %016x dropped: %s", name, key, exc)
                    continue
                except Exception:  # one bad action must not hold back all the others
                    log.exception("delayed action %s of profile %016x dropped", name, key)
                    continue
                store.log_action(txn, record, name, now_ms, action.event_id, decision)
                fired += 1
            return fired

        return store.write(work)

    def _decision(self, active: Prepared, spec, key: int, raw, now: float) -> dict:
        """What the action sends, as the trigger log records it."""
        d = self.responder.rank(active, spec.channel, active.channel_bits[spec.channel],
                                active.placement_bits.get(spec.placement, 0), spec.limit,
                                active.no_slots.copy(), key, raw, now)
        offers = active.catalog.offers
        return {"id": d.decision_id, "channel": spec.channel, "placement": spec.placement,
                "eligible": d.eligible_count, "catalog": active.catalog.version,
                "deliver_at_ms": d.deliver_at_ms, "timing": d.timing,
                "offers": [[offers[int(row[0])].id, row[1], row[2]] for row in d.ranked.tolist()]}
