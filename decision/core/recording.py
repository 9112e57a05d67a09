"""Decision records, written off the request path.

A decision hands ``Recorder.record`` what it saw and did; the request thread copies the
feature vector (a view of the store's map) and queues references to the rest, in under
a microsecond. A writer thread builds each record's value
(``records.pack_decision_value``: the fields one plan's decisions share are packed once
per plan, the rest is fixed-size binary: the feature vector's, the ranking's and the
eligible set's bytes as they are), offering the interpreter to waiting requests every
``YIELD_EVERY`` records (a thread busy in Python would otherwise keep a request waiting
up to the 5 ms switch interval), and writes whatever has queued up in one transaction
every ``FLUSH_S`` (group commit), like event ingestion, with two ``putmulti`` calls (the
loops run in C). A record is written whole or
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

import numpy as np

from decision.store.database import ProfileStore, profile_key_bytes
from decision.store.records import pack_decision_head, pack_decision_value

log = logging.getLogger("decision.core.recording")

MAX_QUEUED = 100_000
MAX_BATCH = 2048
FLUSH_S = 0.005  # the writer waits at most this for more records to share a commit
YIELD_EVERY = 32  # records the writer packs before it offers the interpreter to requests


def replay_facts(catalog) -> dict:
    """What a replay of a catalog version's records (``decision whatif``) must find
    unchanged in a candidate: the feature list the records' vectors follow, and per
    offer what decides its eligibility (channels, placements, rule, validity), and the
    contact policies; a digest each."""
    def digest(*parts) -> str:
        return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()

    return {"features": list(catalog.feature_names),
            "eligibility": {o.id: digest(o.channels, o.placements, o.rule, o.valid_from,
                                         o.valid_until) for o in catalog.offers},
            "policies": digest(tuple(p.describe() for p in catalog.policies.policies))}


def owner_of(profile_key: int, unit: str) -> bytes:
    """The 8 bytes a decision is filed under: its profile key, or for a cold start
    0xFF + 7 bytes of a hash of the identifier (``kind \\x1f value``)."""
    if profile_key:
        return profile_key_bytes(profile_key)
    return b"\xff" + hashlib.blake2b(unit.encode(), digest_size=7).digest()


class Recorder:
    """The process's decision-record writer thread.

    ``record`` appends to a deque (no lock: ``deque.append`` is atomic); the writer wakes every ``FLUSH_S``, takes what queued up and commits it in
    one transaction."""

    def __init__(self, store: ProfileStore):
        self.store = store
        self._queue: deque = deque()
        self.dropped = 0
        self.written = 0
        self._busy = False
        self._closed = False
        self._sleeping = False  # the writer waits for ``_wake`` (an idle writer costs nothing)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-records",
                                        daemon=True)
        self._thread.start()

    def record(self, decision, plan, profile_key: int, identity: str, channel: str,
               placement: str, features, shadow_ranked=None, support=None) -> None:
        """Queue the record of ``decision``, decided by ``plan`` (a
        ``decision.core.experiments.Plan``: it keeps the records' head per placement);
        ``features``: the float32 vector the kernel read; ``shadow_ranked``: the shadow
        arm's ranked rows, or None; ``support``: the eligible set (uint8, 1 by catalog
        index; the record keeps it as a bit mask) when the policy explored, else None (a
        greedy decision's record cannot be replayed under another policy)."""
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.warning("decision records: the queue is full, %d dropped so far",
                            self.dropped)
            return
        d = decision
        head = plan.heads.get(placement)
        if head is None:
            head = plan.heads[placement] = pack_decision_head(
                channel, placement, d.catalog_version, d.model_version, d.experiment, d.arm,
                d.policy, "" if plan.shadow is None else plan.shadow.arm)
        # the features are a view of the store's map, valid in this request only: copied;
        # the kernel's arrays are the decision's own: the writer packs them
        self._queue.append((d, head, profile_key, identity, features.tobytes(),
                            shadow_ranked, support))
        if self._sleeping:
            self._sleeping = False
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record submitted so far is committed."""
        deadline = time.monotonic() + timeout
        while (self._queue or self._busy) and time.monotonic() < deadline:
            time.sleep(FLUSH_S / 5)

    def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closed = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        """Sleep until a record comes (no polling: a process that records nothing, or
        is idle, has no thread waking up beside its requests), then gather for
        ``FLUSH_S`` and commit what queued up, until the queue is empty again."""
        queue = self._queue
        while True:
            if not queue and not self._closed:
                self._sleeping = True
                if not queue and not self._closed:  # a record may have come meanwhile
                    self._wake.wait()
                self._wake.clear()
                self._sleeping = False
            closing = self._closed
            if not closing:
                time.sleep(FLUSH_S)  # let a group gather for one commit
            while queue:
                self._busy = True
                batch = []
                for n in range(min(len(queue), MAX_BATCH)):
                    item = queue.popleft()
                    try:
                        batch.append(_packed(*item))
                    except Exception:  # one bad record must not stop the writer
                        self.dropped += 1
                        log.exception("decision records: one could not be packed")
                    if n % YIELD_EVERY == YIELD_EVERY - 1:
                        time.sleep(0)  # let a waiting request have the interpreter
                try:
                    self.store.write(lambda txn, rows=batch: self.store.record_decisions(
                        txn, rows))
                    self.written += len(batch)
                except Exception:
                    log.exception("decision records: %d could not be written", len(batch))
            self._busy = False
            if closing:
                return


def _packed(d, head: bytes, profile_key: int, identity: str, features: bytes, shadow_ranked,
            support) -> tuple[str, bytes, bytes]:
    """A queued decision as the (decision id, owner, value) row the store writes (on the
    writer thread: the request thread only queues references)."""
    owner = profile_key.to_bytes(8, "big") if profile_key else owner_of(0, identity)
    ranked = d.ranked
    return d.decision_id, owner, pack_decision_value(
        head, d.decided_at_ms, profile_key, owner, d.eligible_count, features,
        ranked.shape[1], ranked.tobytes(),
        b"" if shadow_ranked is None else shadow_ranked.tobytes(),
        b"" if support is None else np.packbits(support, bitorder="little").tobytes())
