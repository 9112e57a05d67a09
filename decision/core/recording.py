"""Decision records, written off the request path.

A decision hands ``Recorder.submit`` what it saw and did (the ``Decision``, the
feature vector's bytes, the profile key, the shadow arm's ranking) and returns: a
writer thread turns each into a ``DecisionRecord`` and writes whatever has queued up
in one transaction (group commit), like event ingestion. A record is written whole or
not at all (one LMDB put inside a transaction). What a crash can lose: the records
still queued, at most the last ``FLUSH_S`` seconds' (``kill -9`` between a decision
and its commit); an outcome that then names such a decision is counted as
``unknown_decision`` by the learner and teaches nothing.

Records are filed under their owner for erasure (``ForgetCustomer``): the profile
key, or for a cold-start decision a hash of the identifier it was asked for (so the
customer's identifiers reach it too). The queue is bounded: past ``MAX_QUEUED``
records waiting (a store that cannot keep up), new ones are dropped and counted, never
the request delayed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from typing import NamedTuple

from decision.core.prepared import Prepared
from decision.store.database import ProfileStore, profile_key_bytes
from decision.store.records import DecisionRecord, RecordedOffer

log = logging.getLogger("decision.core.recording")

MAX_QUEUED = 100_000
MAX_BATCH = 2048
FLUSH_S = 0.005  # the writer waits at most this for more records to share a commit


def owner_of(profile_key: int, unit: str) -> bytes:
    """The 8 bytes a decision is filed under: its profile key, or for a cold start
    0xFF + 7 bytes of a hash of the identifier (``kind \\x1f value``)."""
    if profile_key:
        return profile_key_bytes(profile_key)
    return b"\xff" + hashlib.blake2b(unit.encode(), digest_size=7).digest()


class Seen(NamedTuple):
    """What a decision hands the recorder (cheap to build on the request path)."""

    decision: object  # decision.core.respond.Decision
    features: bytes
    profile_key: int
    unit: str  # the identifier, for a cold start's owner
    channel: str
    placement: str
    shadow_arm: str = ""
    shadow_ranked: object = None  # float64[r, HEAD + ...] or None


def _offers(static: list, ranked) -> list:
    """[offer id, rank, score, propensity, value, lever, probability] per ranked row."""
    return [[*static[int(row[0])][:1], q + 1, row[1], row[2], *static[int(row[0])][1:], row[3]]
            for q, row in enumerate(ranked[:, :4].tolist())]


def fields_of(seen: Seen, static: list) -> tuple:
    """(decision id, owner, the record's fields after the id): what the store packs
    (``records.DecisionRecord``'s order)."""
    d = seen.decision
    shadow = [] if seen.shadow_ranked is None else _offers(static, seen.shadow_ranked)
    who = owner_of(seen.profile_key, seen.unit)
    return (d.decision_id, who, [
        d.decided_at_ms, seen.profile_key, seen.channel, seen.placement, d.catalog_version,
        d.model_version, d.experiment, d.arm, d.policy, seen.features,
        _offers(static, d.ranked), d.eligible_count, seen.shadow_arm, shadow, who])


def to_record(seen: Seen) -> DecisionRecord:
    """The ``DecisionRecord`` of what a decision saw and did."""
    offers = seen.decision.prepared.catalog.offers
    decision_id, _, fields = fields_of(seen, [(o.id, o.value, o.lever) for o in offers])
    fields[10] = tuple(RecordedOffer(*o) for o in fields[10])
    fields[13] = tuple(RecordedOffer(*o) for o in fields[13])
    return DecisionRecord(decision_id, *fields)


class Recorder:
    """The process's decision-record writer thread.

    ``submit`` appends to a deque (a few tens of ns, no lock: ``deque.append`` is
    atomic); the writer wakes every ``FLUSH_S``, takes what queued up and commits it in
    one transaction."""

    def __init__(self, store: ProfileStore):
        self.store = store
        self._queue: deque = deque()
        self.dropped = 0
        self.written = 0
        self._static: dict = {}
        self._busy = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-records",
                                        daemon=True)
        self._thread.start()

    def _static_of(self, prepared: Prepared) -> list:
        """Per catalog: each offer's (id, value, lever), built once."""
        static = self._static.get(prepared)
        if static is None:
            if len(self._static) > 8:
                self._static.clear()
            static = self._static[prepared] = [(o.id, o.value, o.lever)
                                               for o in prepared.catalog.offers]
        return static

    def submit(self, seen: Seen) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.warning("decision records: the queue is full, %d dropped so far",
                            self.dropped)
            return
        self._queue.append(seen)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record submitted so far is committed."""
        deadline = time.monotonic() + timeout
        while (self._queue or self._busy) and time.monotonic() < deadline:
            time.sleep(FLUSH_S / 5)

    def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closed.set()
        self._thread.join()

    def _run(self) -> None:
        queue = self._queue
        while True:
            closing = self._closed.wait(FLUSH_S)
            while queue:
                self._busy = True
                batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
                try:
                    rows = [fields_of(s, self._static_of(s.decision.prepared)) for s in batch]
                    self.store.write(lambda txn: self.store.record_decision_fields(txn, rows))
                    self.written += len(rows)
                except Exception:
                    log.exception("decision records: %d could not be written", len(batch))
            self._busy = False
            if closing:
                return
