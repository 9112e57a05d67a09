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
import queue
import threading
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


def _offers(prepared: Prepared, ranked, levers=None) -> tuple[RecordedOffer, ...]:
    offers = prepared.catalog.offers
    out = []
    for r, row in enumerate(ranked.tolist()):
        o = offers[int(row[0])]
        out.append(RecordedOffer(o.id, r + 1, row[1], row[2], o.value, o.lever, row[3]))
    return tuple(out)


def to_record(seen: Seen) -> DecisionRecord:
    d = seen.decision
    prepared = d.prepared
    shadow = (() if seen.shadow_ranked is None
              else _offers(prepared, seen.shadow_ranked))
    return DecisionRecord(
        d.decision_id, d.decided_at_ms, seen.profile_key, seen.channel, seen.placement,
        d.catalog_version, d.model_version, d.experiment, d.arm, d.policy, seen.features,
        _offers(prepared, d.ranked), d.eligible_count, seen.shadow_arm, shadow,
        owner_of(seen.profile_key, seen.unit))


class Recorder:
    """The process's decision-record writer thread."""

    def __init__(self, store: ProfileStore):
        self.store = store
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED)
        self.dropped = 0
        self.written = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="decision-records",
                                        daemon=True)
        self._thread.start()

    def submit(self, seen: Seen) -> None:
        try:
            self._queue.put_nowait(seen)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.warning("decision records: the queue is full, %d dropped so far",
                            self.dropped)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record submitted so far is committed."""
        with self._idle:
            self._idle.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [] if item is None else [item]
            stop = item is None
            while not stop and len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get(timeout=FLUSH_S) if len(batch) < 8 else \
                        self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            if batch:
                try:
                    records = [to_record(s) for s in batch]
                    self.store.write(lambda txn: self.store.record_decisions(txn, records))
                    self.written += len(records)
                except Exception:
                    log.exception("decision records: %d could not be written", len(batch))
            for _ in range(len(batch) + (1 if stop else 0)):
                self._queue.task_done()
            with self._idle:
                self._idle.notify_all()
            if stop:
                return
