"""Event ingestion: validate, apply in durable batches (group commit), deduplicate.

One writer thread per process owns ingestion. ``Track`` and ``TrackStream`` hand it
validated events and wait; it drains whatever has queued up into ONE write
transaction (up to ``MAX_BATCH`` events), commits it (fsync, with the default
durability), and only then releases the callers. Throughput comes from many events
sharing one commit, not from weakening it: an acknowledged event is on disk.

Inside a batch, events apply in arrival order; several events of one customer load
the profile once and save it once. An event with an ``event_id`` already recorded in
the ``events`` sub-db (per customer identifier) is acknowledged as a duplicate and
changes nothing; the id is
recorded in the same transaction as the event's effects, so a crash can never apply
an event without recording it, or the reverse.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Iterable, NamedTuple

import numpy as np

from decision.config import events as event_actions
from decision.config.catalog import Catalog
from decision.config.policies import contact_tag, record_contact
from decision.config.segments import refresh as refresh_segments
from decision.core.requests import Identifier, IdentifierCheck
from decision.errors import DecisionError, InvalidArgument, NotFound, Unavailable
from decision.settings import Limits
from decision.store.database import ProfileStore, identity_key
from decision.store.layout import AttributeValue, ProfileRecord, remember
from decision.store.records import OutcomeRecord, ScheduledAction

log = logging.getLogger("decision.core.ingest")

MAX_BATCH = 1024  # events per write transaction
MAX_FUTURE_MS = 5 * 60 * 1000  # how far ahead of the server's clock a timestamp may be
MAX_CHUNKS_IN_FLIGHT = 8  # a stream's chunks waiting for their commit at once
MAX_REPORTED_REJECTIONS = 1000  # a stream's rejections listed (all are counted)


class Event(NamedTuple):
    type: str
    customer: Identifier
    event_id: str = ""
    timestamp_ms: int = 0  # 0: now
    channel: str = ""
    attributes: dict[str, AttributeValue | None] = {}  # never mutated
    offer_id: str = ""  # outcome events: the offer shown / clicked / ...
    decision_id: str = ""  # outcome events: the Decide answer it came from


class TooManyInMessage(NamedTuple):
    """Stands for an event that came in an over-limit stream message: rejected."""

    count: int
    limit: int
    event_id: str = ""

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"events: {self.count} in one message, at most {self.limit} "
                               "(max_events_per_message)")


class Outcome(NamedTuple):
    profile_key: int
    duplicate: bool


class ValidEvent(NamedTuple):
    event_type: event_actions.EventType
    kind: str
    value: str
    event_id: bytes
    time_ms: int
    data: dict
    contact_tag: int = 0  # outcome events: the contact they add (decision.config.policies)
    outcome: OutcomeRecord | None = None  # an outcome naming a decision, to learn from
    channel: str = ""
    offer_id: str = ""
    decision_id: str = ""

    @property
    def dedupe_key(self) -> bytes:
        """Event ids are unique per customer identifier: the same id sent for two
        customers is two events, and a retry (same identifier) is a duplicate."""
        return self.event_id + b"\x1f" + identity_key(self.kind, self.value)


def validate(event: Event, catalog: Catalog, identifier, now_ms: int, limits) -> ValidEvent:
    """Check ``event`` against the catalog; raise InvalidArgument naming the field.

    ``identifier`` is the engine's identifier check (kind known, value present)."""
    event_type = catalog.events.get(event.type)
    if event_type is None:
        raise InvalidArgument(f"type: unknown event type {event.type!r} (known: "
                              f"{', '.join(sorted(catalog.events)) or 'none declared'})")
    kind, value = identifier(event.customer, "customer")
    if len(event.event_id.encode()) > limits.max_string_bytes:
        raise InvalidArgument(f"event_id: longer than {limits.max_string_bytes} bytes")
    if event.timestamp_ms < 0:
        raise InvalidArgument(f"timestamp_ms: must be >= 0, got {event.timestamp_ms}")
    if event.timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise InvalidArgument(f"timestamp_ms: {event.timestamp_ms} is more than 5 minutes "
                              f"in the future (server time {now_ms})")
    if event.channel and event.channel not in catalog.channels:
        raise InvalidArgument(f"channel: unknown channel {event.channel!r} "
                              f"(known: {', '.join(catalog.channels)})")
    tag = 0
    if event_type.outcome:
        if event.offer_id not in catalog.offer_index:
            raise InvalidArgument(
                f"offer_id: {event.type} events need the offer_id Decide returned; "
                f"{event.offer_id!r} is not an offer of catalog {catalog.version}"
                if event.offer_id else f"offer_id: required for {event.type} events")
        if not event.channel:
            raise InvalidArgument(f"channel: required for {event.type} events (contact "
                                  "policies count per channel)")
        tag = contact_tag(event.offer_id, event.channel, event_type.outcome)
    if len(event.decision_id.encode()) > limits.max_string_bytes:
        raise InvalidArgument(f"decision_id: longer than {limits.max_string_bytes} bytes")
    if len(event.attributes) > limits.max_context_entries:
        raise InvalidArgument(f"attributes: {len(event.attributes)} entries, at most "
                              f"{limits.max_context_entries}")
    data = {}
    for name, ftype in event_type.fields.items():
        v = event.attributes.get(name)
        if v is None:
            if name in event_type.required:
                raise InvalidArgument(f"attributes[{name!r}]: required by event type "
                                      f"{event.type!r} (a {ftype})")
            continue
        got = ("bool" if isinstance(v, bool) else "string" if isinstance(v, str)
               else "number")
        if got != ftype:
            raise InvalidArgument(f"attributes[{name!r}]: expected a {ftype}, got a {got}")
        if ftype == "number" and not math.isfinite(v):
            raise InvalidArgument(f"attributes[{name!r}]: must be finite, got {v}")
        if ftype == "string" and len(v.encode()) > limits.max_string_bytes:
            raise InvalidArgument(f"attributes[{name!r}]: longer than "
                                  f"{limits.max_string_bytes} bytes")
        data[name] = v
    time_ms = event.timestamp_ms or now_ms
    outcome = None
    if tag and event.decision_id and catalog.learning.records:
        revenue = data.get("revenue", data.get("amount", 0.0))
        outcome = OutcomeRecord(event.decision_id, event.offer_id, event.type, time_ms,
                                event.channel, float(revenue) if isinstance(
                                    revenue, (int, float)) else 0.0, 0)
    return ValidEvent(event_type, kind, value, event.event_id.encode(), time_ms, data, tag,
                      outcome, event.channel, event.offer_id, event.decision_id)


# An outcome may name a decision whose record is still on its way to the store (written
# off the request path, ``decision.core.recording``): one younger than this is accepted
# unseen, and the learner joins it when it lands (or counts it unknown).
RECORD_GRACE_MS = 2000


def check_outcome(store, outcome: OutcomeRecord, catalog: Catalog, now_ms: int) -> None:
    """An outcome that names a decision must name one that was recorded, and an offer
    it showed, of a kind the channel learns from; raise NotFound / InvalidArgument."""
    decision_id = outcome.decision_id
    decided_ms = decided_at(decision_id)
    if decided_ms is None:
        return  # not an id of ours to learn from (a campaign row's): kept for reports
    with store.reader() as reader:
        record = reader.decision(decision_id)
        erased = record is None and reader.erased_decision(decision_id)
    if record is None:
        if now_ms - decided_ms <= RECORD_GRACE_MS and not erased:
            return
        raise NotFound(f"decision_id: no record of decision {decision_id!r} (unknown, erased "
                       "by ForgetCustomer, or past the catalog's learning.retention)")
    if record.offer(outcome.offer_id) is None:
        shown = ", ".join(o.offer_id for o in record.offers) or "no offer"
        raise InvalidArgument(f"offer_id: {outcome.offer_id!r} was not in decision "
                              f"{decision_id} (it showed {shown})")
    learning = catalog.learning
    if (learning.enabled and outcome.kind in ("click", "conversion")
            and learning.window_ms(record.channel, outcome.kind) is None):
        kinds = ", ".join(sorted(learning.windows.get(record.channel, {}))) or "none"
        raise InvalidArgument(
            f"type: channel {record.channel!r} does not learn from {outcome.kind} outcomes "
            f"(learning.windows.{record.channel} has: {kinds}); send it without decision_id")


def decided_at(decision_id: str) -> int | None:
    """The millisecond time a Decide answer's id carries, or None for another id."""
    if len(decision_id) != 28:
        return None
    try:
        int(decision_id, 16)
    except ValueError:
        return None
    return int(decision_id[:12], 16)


def apply_batch(store, batch: list[ValidEvent], feature_count: int, now_ms: int,
                catalog: Catalog) -> list[Outcome]:
    """Apply ``batch`` in one durable write transaction; one Outcome per event. After
    each event's effects (an outcome event also adds its contact to the history the
    policies read), its profile's segments are re-evaluated, and the segment changes
    and the event triggers it fires are appended to the trigger log; the delayed
    actions it cancels or schedules are deleted or written; all in the same
    transaction."""
    triggers = catalog.triggers
    horizons = catalog.policies.horizons
    records = catalog.learning.records

    def work(txn) -> list[Outcome]:
        records: dict[int, ProfileRecord] = {}
        outcomes = []
        for ev in batch:
            if ev.event_id:
                seen = store.applied_event(txn, ev.dedupe_key)
                if seen is not None:
                    outcomes.append(Outcome(seen, True))
                    continue
            key = store.resolve_in(txn, ev.kind, ev.value)
            record = None if key is None else records.get(key) or store.load(txn, key)
            created = record is None
            if created:
                record = ProfileRecord(key=store.allocate_key(txn),
                                       features=np.zeros(feature_count, dtype=np.float32),
                                       identifiers=[(ev.kind, ev.value)],
                                       created_at_ms=now_ms)
            event_actions.apply(ev.event_type, record, ev.data, ev.time_ms)
            record.recent = remember(record.recent, [ev.event_type.name, ev.time_ms, ev.channel,
                                                     ev.offer_id, ev.decision_id])
            if ev.contact_tag:
                record.contacts = record_contact(record.contacts, ev.time_ms, ev.contact_tag,
                                                 now_ms, horizons)
            entered, left = refresh_segments(catalog.segments, record)
            name = ev.event_type.name
            fired, scheduled = triggers.fired(name, record)
            if entered or left or fired:
                store.log_triggers(txn, record, entered, left, now_ms, fired,
                                   ev.event_id.decode())
            for action in triggers.cancelled_by.get(name, ()):
                if not created:
                    store.cancel_action(txn, record.key, action)
            for action in scheduled:
                store.schedule_action(
                    txn, ev.time_ms + triggers.delayed[action].delay_ms,
                    ScheduledAction(action, record.key, now_ms, ev.event_id.decode()))
            record.updated_at_ms = now_ms
            records[record.key] = record
            # later events of the batch see it through the txn; a new profile's
            # identifier is linked once
            store.save(txn, record, link=created)
            if ev.event_id:
                store.record_event(txn, ev.dedupe_key, record.key, now_ms)
            if ev.outcome is not None and records:  # the learner and the export read it
                store.append_outcome(txn, ev.outcome._replace(profile_key=record.key))
            outcomes.append(Outcome(record.key, False))
        return outcomes

    return store.write(work)


class GroupCommitter:
    """The ingestion writer thread: many callers' events, one commit per batch.

    Whatever happens, every submitted future resolves: a batch that fails is retried
    one event per transaction, and each event gets its Outcome or its exception."""

    def __init__(self, store, feature_count, clock, catalog):
        """``catalog()`` gives the active catalog at each commit."""
        self._store = store
        self._catalog = catalog
        self._feature_count = feature_count
        self._clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decision-ingest", daemon=True)
        self._thread.start()

    def submit(self, batch: list[ValidEvent]) -> Future:
        """Queue events; the future resolves, once they are durable, to one Outcome per
        event, or the exception that kept that event from being applied."""
        if self._closed:
            raise Unavailable("the server is shutting down; send the events again")
        future: Future = Future()
        self._queue.put((batch, future))
        return future

    def close(self) -> None:
        """Commit what is queued, then stop (later submits are refused)."""
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            waiting = [item]
            size = len(item[0])
            while size < MAX_BATCH:  # drain what queued up meanwhile (group commit)
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                waiting.append(more)
                size += len(more[0])
            try:
                self._commit(waiting)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("ingestion writer: unexpected error")
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(exc)

    def _commit(self, waiting) -> None:
        events = [ev for batch, _ in waiting for ev in batch]
        now_ms = int(self._clock() * 1000)
        catalog = self._catalog()
        try:
            results: list = apply_batch(self._store, events, self._feature_count, now_ms,
                                        catalog)
        except Exception:
            # one event's problem (a corrupt profile, a total that overflows) must not
            # fail the others: one transaction per event, a result per event (rare)
            results = []
            for ev in events:
                try:
                    results += apply_batch(self._store, [ev], self._feature_count, now_ms,
                                           catalog)
                except DecisionError as exc:
                    results.append(exc)
                except Exception as exc:
                    log.exception("event of type %s failed", ev.event_type.name)
                    results.append(exc)
        at = 0
        for batch, future in waiting:
            future.set_result(results[at:at + len(batch)])
            at += len(batch)


class TrackSummary(NamedTuple):
    received: int
    applied: int
    duplicates: int
    rejected: tuple[tuple[int, str, str], ...]  # (index, event_id, message), the first
    rejected_count: int


class _StreamTally:
    """Counts of one TrackStream as its chunks settle."""

    def __init__(self) -> None:
        self.received = self.applied = self.duplicates = self.rejected_count = 0
        self.rejected: list[tuple[int, str, str]] = []

    def reject(self, index: int, event_id: str, exc: BaseException) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED_REJECTIONS:
            message = (str(exc) if isinstance(exc, DecisionError)
                       else "internal error (details in the server log)")
            self.rejected.append((index, event_id, message))

    def settle(self, where: list[tuple[int, str]], future: Future) -> None:
        for (index, event_id), result in zip(where, future.result()):
            if isinstance(result, BaseException):
                self.reject(index, event_id, result)
            elif result.duplicate:
                self.duplicates += 1
            else:
                self.applied += 1


class Ingestion:
    """``Track`` and ``TrackStream``: validate against the active catalog
    (``catalog()``), hand to the process's ``GroupCommitter``, wait for durability."""

    def __init__(self, store: ProfileStore, limits: Limits, identifier: IdentifierCheck,
                 clock: Callable[[], float], catalog: Callable[[], Catalog]):
        self.store = store
        self.limits = limits
        self.identifier = identifier
        self.clock = clock
        self.catalog = catalog
        self.committer = GroupCommitter(store, len(catalog().feature_names), clock, catalog)

    def close(self) -> None:
        self.committer.close()

    def track(self, event: Event) -> Outcome:
        """Apply one event durably (grouped with concurrent ones into one commit)."""
        catalog = self.catalog()
        now_ms = int(self.clock() * 1000)
        valid = validate(event, catalog, self.identifier, now_ms, self.limits)
        if valid.outcome is not None:
            check_outcome(self.store, valid.outcome, catalog, now_ms)
        [result] = self.committer.submit([valid]).result()
        if isinstance(result, BaseException):
            raise result
        return result

    def track_many(self, events: Iterable[Event | TooManyInMessage],
                   chunk: int = 512) -> TrackSummary:
        """Apply a stream of events in order; invalid ones are skipped and reported.

        Chunks go to the writer as they fill, so reading the stream overlaps with
        committing it; at most ``MAX_CHUNKS_IN_FLIGHT`` wait at a time (memory stays
        bounded however long the stream), and at most ``MAX_REPORTED_REJECTIONS``
        rejections are listed (all are counted). The summary comes once all are
        durable."""
        catalog = self.catalog()
        summary = _StreamTally()
        pending: collections.deque = collections.deque()
        batch: list[ValidEvent] = []
        where: list[tuple[int, str]] = []
        submit = self.committer.submit
        for index, event in enumerate(events):
            summary.received += 1
            try:
                if isinstance(event, TooManyInMessage):
                    raise event.error()
                now_ms = int(self.clock() * 1000)
                valid = validate(event, catalog, self.identifier, now_ms, self.limits)
                if valid.outcome is not None:
                    check_outcome(self.store, valid.outcome, catalog, now_ms)
                batch.append(valid)
                where.append((index, event.event_id))
            except DecisionError as exc:
                summary.reject(index, event.event_id, exc)
            if len(batch) >= chunk:
                pending.append((where, submit(batch)))
                batch, where = [], []
                if len(pending) >= MAX_CHUNKS_IN_FLIGHT:
                    summary.settle(*pending.popleft())
        if batch:
            pending.append((where, submit(batch)))
        while pending:
            summary.settle(*pending.popleft())
        return TrackSummary(summary.received, summary.applied, summary.duplicates,
                            tuple(sorted(summary.rejected)), summary.rejected_count)
