"""Profiles in one memory-mapped LMDB environment, shared by every server process.

Named databases (sub-dbs) of the environment:

=============  ===============================  =====================================
db             key                              value
=============  ===============================  =====================================
``profiles``   profile key, uint64 big-endian   ``decision.store.layout`` record
``identity``   ``kind \\x1f value`` (UTF-8)      profile key (8 bytes)
``events``     event_id (UTF-8)                 msgpack [profile key, applied at ms]:
                                                the ids of applied events (dedupe)
``triggers``   cursor, uint64 big-endian         msgpack trigger (``records.Trigger``)   
``schedule``   due ms, profile key (uint64 BE   msgpack [trigger name, profile key,
               each), trigger name              scheduled at ms, event_id]: delayed
                                                actions in due order
``pending``    profile key (BE) + trigger name  the ``schedule`` key of that action
``meta``       ASCII name                       ``schema``: msgpack {"layout", "features"};
                                                ``next_key``: uint64 big-endian;
                                                ``catalog_version``: UTF-8, the catalog
                                                every process should serve;
                                                ``next_trigger``, ``next_outcome``: uint64
                                                big-endian; ``model_version``, ``learner``
                                                (the lease), ``learner_state`` (cursor and
                                                counters): msgpack
``decisions``  decision id (ASCII hex, time      ``records.DecisionRecord``: what a
               first: sorted by time)            decision saw and did
``decision_    owner (profile key BE, or 0xFF +  empty: which decisions to erase with a
owners``       identifier hash) + decision id    customer
``outcomes``   cursor, uint64 big-endian         ``records.OutcomeRecord``: outcome events
                                                naming a decision, in arrival order
``labels``     deadline ms (BE) + decision id   ``\x00`` pending, ``\x01`` labelled:
               \x1f offer id                    impressions in their response window
``label_       decision id \x1f offer id        that impression's ``labels`` key
index``
``models``     ``shared`` or offer id \x1f       ``records.ModelEntry``: a learned
               channel group                     posterior
=============  ===============================  =====================================

Readers never wait for writers (LMDB's MVCC); writers from every process serialise on
LMDB's writer lock. With ``durable=True`` (the default) every write transaction is on
disk when it commits (fsync); with ``durable=False`` commits skip the fsync: a killed
process loses nothing (the data is in the OS page cache), a machine crash or power
loss can lose the last commits (LMDB stays consistent either way).
When a write finds the map full, the map doubles and the write is retried; a process
whose map another process grew adopts the new size at its next transaction. Resizing
needs no transaction open in the process, so every transaction passes a ``_MapGate``.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import lmdb
import msgpack

from decision.errors import CorruptProfile, StoreError
from decision.store.layout import LAYOUT_VERSION, ProfileRecord, decode, encode
from decision.store.records import (
    ACTION, EVENT, SEGMENT_ENTER, SEGMENT_LEAVE, DecisionRecord, Label, ModelEntry,
    OutcomeRecord, ScheduledAction, Trigger, event_profile, label_key, owner, pack_action,
    decision_owner, pack_event, pack_model, pack_outcome, pack_trigger, unpack_action,
    unpack_decision, unpack_label, unpack_model, unpack_outcome, unpack_trigger,
)

T = TypeVar("T")
KEY_BYTES = 8
_SEP = "\x1f"

#: Every sub-database of the environment, in the order of the table above. Backup,
#: restore and the README follow this list.
SUB_DATABASES = ("profiles", "identity", "events", "triggers", "schedule", "pending", "meta",
                 "decisions", "decision_owners", "outcomes", "labels", "label_index", "models")


def profile_key_bytes(key: int) -> bytes:
    return key.to_bytes(KEY_BYTES, "big")


def identity_key(kind: str, value: str) -> bytes:
    return f"{kind}{_SEP}{value}".encode()


class _MapGate:
    """Many transactions at once, or one map resize alone (py-lmdb requires no open
    transaction in the process while ``set_mapsize`` runs)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._resizing = False

    def enter(self) -> None:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._resizing and not self._active:
                self._cond.notify_all()

    def exclusive(self, action: Callable[[], None]) -> None:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            action()
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Reader:
    """One read transaction with zero-copy access; use as a context manager.

    Buffers it returns point into the memory map and are valid only inside the
    ``with`` block: copy what must outlive it.
    """

    __slots__ = ("_store", "_txn")

    def __init__(self, store: "ProfileStore"):
        self._store = store
        self._txn = None

    def __enter__(self) -> "Reader":
        store = self._store
        store._gate.enter()
        try:
            self._txn = store.env.begin(buffers=True)
        except lmdb.MapResizedError:
            store._gate.leave()
            store._adopt_map_size()
            return self.__enter__()
        except BaseException:
            store._gate.leave()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._txn.abort()
        self._txn = None
        self._store._gate.leave()

    def resolve(self, kind: str, value: str) -> int | None:
        """The profile key an identifier belongs to, or None."""
        return self._store.resolve_in(self._txn, kind, value)

    def meta(self, name: bytes) -> bytes | None:
        raw = self._txn.get(name, db=self._store.meta_db)
        return None if raw is None else bytes(raw)

    def profile_buffer(self, key: int):
        """The stored profile value (a memoryview into the map), or None."""
        return self._txn.get(profile_key_bytes(key), db=self._store.profiles_db)

    def published_catalog(self) -> str | None:
        return self._store.published_catalog_in(self._txn)

    def decision(self, decision_id: str) -> DecisionRecord | None:
        return self._store.decision(self._txn, decision_id)

    def erased_decision(self, decision_id: str) -> bool:
        return self._store.erased_decision(self._txn, decision_id)

    def models(self) -> dict[str, ModelEntry]:
        return self._store.models(self._txn)

    def profiles(self, after: int | None = None) -> Iterator[tuple[int, memoryview]]:
        """(key, stored value) of every profile in key order, from the first key after
        ``after`` (None: from the start); the values point into the map."""
        cursor = self._txn.cursor(db=self._store.profiles_db)
        more = (cursor.set_range(profile_key_bytes(after + 1)) if after is not None
                else cursor.first())
        while more:
            key, buf = cursor.item()
            yield int.from_bytes(key, "big"), buf
            more = cursor.next()


class ProfileStore:
    """The LMDB environment and its named databases."""

    def __init__(self, path: str | Path, map_size: int = 1 << 30, readonly: bool = False,
                 durable: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=16, max_readers=1024,
                readonly=readonly, sync=durable, metasync=durable, readahead=False, lock=True,
            )
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open the profile store: {exc}") from None
        self._gate = _MapGate()
        self.clear_stale_readers()
        (self.profiles_db, self.identity_db, self.events_db, self.triggers_db,
         self.schedule_db, self.pending_db, self.meta_db, self.decisions_db, self.owners_db,
         self.outcomes_db, self.labels_db, self.label_index_db, self.models_db) = (
            self.env.open_db(name.encode(), create=not readonly) for name in SUB_DATABASES)
        self.committed = threading.Condition()  # notified after every write commit
        self._offer_tables: dict[str, list] = {}  # catalog version -> decision records' offers

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------- transactions
    def reader(self) -> Reader:
        return Reader(self)

    def write(self, work: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``work(txn)`` in one durable write transaction and return its result.

        If the map is full the transaction is aborted, the map doubled and ``work``
        run again from scratch, so ``work`` must only touch the store through ``txn``.
        """
        while True:
            self._gate.enter()
            try:
                seen = self.env.info()["map_size"]
                with self.env.begin(write=True) as txn:
                    result = work(txn)
                with self.committed:  # wake in-process watchers (trigger log readers)
                    self.committed.notify_all()
                return result
            except lmdb.MapFullError:
                resize = functools.partial(self._grow, seen)
            except lmdb.MapResizedError:
                resize = self._adopt_map_size
            finally:
                self._gate.leave()
            resize()

    def _grow(self, seen: int) -> None:
        """Double the map, unless another thread already grew it past ``seen``."""
        def double() -> None:
            if self.env.info()["map_size"] == seen:
                self.env.set_mapsize(seen * 2)
        self._gate.exclusive(double)

    def _adopt_map_size(self) -> None:
        self._gate.exclusive(lambda: self.env.set_mapsize(0))

    def clear_stale_readers(self) -> int:
        """Release reader slots of processes that died inside a read transaction (a
        killed worker): they would pin old pages and make the file grow. Returns how
        many were cleared."""
        return self.env.reader_check()

    @property
    def map_size(self) -> int:
        return self.env.info()["map_size"]

    # ------------------------------------------------------------- schema
    def ensure_schema(self, feature_names: tuple[str, ...]) -> None:
        """Record the feature vector layout, or check it matches the recorded one."""

        def work(txn: lmdb.Transaction) -> None:
            raw = txn.get(b"schema", db=self.meta_db)
            if raw is None:
                txn.put(b"schema", msgpack.packb(
                    {"layout": LAYOUT_VERSION, "features": list(feature_names)}), db=self.meta_db)
                return
            schema = msgpack.unpackb(raw)
            if schema.get("layout") != LAYOUT_VERSION:
                raise StoreError(f"{self.path}: profile layout {schema.get('layout')} is not "
                                 f"supported by this server (layout {LAYOUT_VERSION})")
            stored = tuple(schema.get("features", ()))
            if stored != tuple(feature_names):
                raise StoreError(
                    f"{self.path}: the store's feature vector is {list(stored)} but the catalog "
                    f"declares profile.features = {list(feature_names)}; keep the catalog's "
                    "features in the stored order or use a new data directory"
                )

        self.write(work)

    # ------------------------------------------------------------- catalog version
    def publish_catalog(self, version: str) -> None:
        """Record the catalog version every process should serve (see Engine)."""
        self.write(lambda txn: txn.put(b"catalog_version", version.encode(), db=self.meta_db))

    def published_catalog(self) -> str | None:
        with self.reader() as r:
            return r.published_catalog()

    def published_catalog_in(self, txn: lmdb.Transaction) -> str | None:
        raw = txn.get(b"catalog_version", db=self.meta_db)
        return None if raw is None else bytes(raw).decode("utf-8", "replace")

    # ------------------------------------------------------------- profiles
    def reserve_keys(self, txn: lmdb.Transaction, next_key: int) -> None:
        """Keys below ``next_key`` are taken (profiles written with keys of their own:
        the demo's bulk load); ``allocate_key`` continues from there."""
        txn.put(b"next_key", profile_key_bytes(next_key), db=self.meta_db)

    def allocate_key(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"next_key", db=self.meta_db)
        key = 1 if raw is None else int.from_bytes(raw, "big")
        txn.put(b"next_key", profile_key_bytes(key + 1), db=self.meta_db)
        return key

    def load(self, txn: lmdb.Transaction, key: int) -> ProfileRecord | None:
        raw = txn.get(profile_key_bytes(key), db=self.profiles_db)
        return None if raw is None else decode(raw, key)

    def save(self, txn: lmdb.Transaction, record: ProfileRecord, link: bool = True) -> None:
        """Write the profile; with ``link``, also point each of its identifiers at it
        (needed when identifiers were added or profiles merged, not for an event)."""
        txn.put(profile_key_bytes(record.key), encode(record), db=self.profiles_db)
        if link:
            for kind, value in record.identifiers:
                txn.put(identity_key(kind, value), profile_key_bytes(record.key),
                        db=self.identity_db)

    def profile_value(self, txn: lmdb.Transaction, key: int):
        """The stored profile value (a buffer valid in ``txn``), or None."""
        return txn.get(profile_key_bytes(key), db=self.profiles_db)

    def drop_profile(self, txn: lmdb.Transaction, key: int) -> None:
        """Delete a profile's value only: a profile merged into another, whose
        identifiers the survivor's ``save`` re-points."""
        txn.delete(profile_key_bytes(key), db=self.profiles_db)

    def unlink_identifier(self, txn: lmdb.Transaction, kind: str, value: str) -> None:
        txn.delete(identity_key(kind, value), db=self.identity_db)

    def delete_profile(self, txn: lmdb.Transaction, record: ProfileRecord) -> int:
        """Delete a profile and the identifiers still pointing at it; return how many
        identifiers were removed (ones re-pointed to another profile are kept)."""
        txn.delete(profile_key_bytes(record.key), db=self.profiles_db)
        removed = 0
        mine = profile_key_bytes(record.key)
        for kind, value in record.identifiers:
            if txn.get(identity_key(kind, value), db=self.identity_db) == mine:
                txn.delete(identity_key(kind, value), db=self.identity_db)
                removed += 1
        return removed

    def delete_undecodable_profile(self, txn: lmdb.Transaction, key: int) -> tuple[int, int]:
        """Erase a profile whose value cannot be decoded (so its identifiers and merged
        keys are unknown): the value, every identifier pointing at it (a scan) and its
        event and trigger records. Returns (identifiers removed, event records removed)."""
        txn.delete(profile_key_bytes(key), db=self.profiles_db)
        target = profile_key_bytes(key)
        doomed = [k for k, v in txn.cursor(db=self.identity_db) if v == target]
        for k in doomed:
            txn.delete(k, db=self.identity_db)
        return len(doomed), self.delete_event_records(txn, {key})

    def delete_event_records(self, txn: lmdb.Transaction, keys: set[int]) -> int:
        """Delete the applied-event and trigger records of the profile ``keys``; return
        how many event records went (scans: erasure is rare, and neither log is indexed
        by profile; about 0.3 s per million records, holding the writer lock)."""
        events = self._delete_where(txn, self.events_db, 0, keys)
        self._delete_where(txn, self.triggers_db, 2, keys)
        for key in keys:
            for name in self.pending_actions(txn, key):
                self.cancel_action(txn, key, name)
        return events

    @staticmethod
    def _delete_where(txn: lmdb.Transaction, db, position: int, keys: set[int]) -> int:
        """Delete the entries of ``db`` whose msgpack list holds one of ``keys`` at
        ``position``."""
        doomed = [k for k, v in txn.cursor(db=db) if owner(v, position) in keys]
        for k in doomed:
            txn.delete(k, db=db)
        return len(doomed)

    # ------------------------------------------------------------- applied events
    def applied_event(self, txn: lmdb.Transaction, dedupe_key: bytes) -> int | None:
        """The profile key an event with this id was applied to, or None (not seen)."""
        seen = txn.get(dedupe_key, db=self.events_db)
        return None if seen is None else event_profile(seen)

    def record_event(self, txn: lmdb.Transaction, dedupe_key: bytes, key: int,
                     now_ms: int) -> None:
        txn.put(dedupe_key, pack_event(key, now_ms), db=self.events_db)

    # ------------------------------------------------------------- trigger log
    def log_triggers(self, txn: lmdb.Transaction, record: ProfileRecord, entered, left,
                     at_ms: int, fired=(), event_id: str = "") -> None:
        """Append the triggers of one profile write (segments entered and left, event
        patterns fired) to the log, inside its transaction."""
        for kind, names in ((SEGMENT_ENTER, entered), (SEGMENT_LEAVE, left), (EVENT, fired)):
            for name in names:
                self.append_trigger(txn, pack_trigger(kind, name, record.key,
                                                      record.identifiers, at_ms, event_id))

    def log_action(self, txn: lmdb.Transaction, record: ProfileRecord, name: str, at_ms: int,
                   event_id: str, decision: dict | None) -> int:
        """Append a delayed action that came due (with its decision) to the log."""
        return self.append_trigger(txn, pack_trigger(ACTION, name, record.key,
                                                     record.identifiers, at_ms, event_id,
                                                     decision))

    def append_trigger(self, txn: lmdb.Transaction, value: bytes) -> int:
        raw = txn.get(b"next_trigger", db=self.meta_db)
        cursor = 1 if raw is None else int.from_bytes(raw, "big")
        txn.put(b"next_trigger", profile_key_bytes(cursor + 1), db=self.meta_db)
        txn.put(profile_key_bytes(cursor), value, db=self.triggers_db)
        return cursor

    def trigger_log_end(self) -> int:
        """The cursor the next trigger will get."""
        with self.reader() as r:
            raw = r.meta(b"next_trigger")
        return 1 if raw is None else int.from_bytes(raw, "big")

    def triggers_from(self, cursor: int, limit: int) -> list[Trigger]:
        """Up to ``limit`` log entries from ``cursor`` on, in order."""
        out = []
        with self.reader() as r:
            c = r._txn.cursor(db=self.triggers_db)
            if c.set_range(profile_key_bytes(cursor)):
                for k, v in c:
                    out.append(unpack_trigger(int.from_bytes(k, "big"), v))
                    if len(out) >= limit:
                        break
        return out

    # ------------------------------------------------------------- delayed actions
    def schedule_action(self, txn: lmdb.Transaction, due_ms: int,
                        action: ScheduledAction) -> None:
        """Schedule (or move) the customer's pending action to ``due_ms``."""
        key, name = action.profile_key, action.name
        self.cancel_action(txn, key, name)
        row = profile_key_bytes(max(0, due_ms)) + profile_key_bytes(key) + name.encode()
        txn.put(row, pack_action(action), db=self.schedule_db)
        txn.put(profile_key_bytes(key) + name.encode(), row, db=self.pending_db)

    def cancel_action(self, txn: lmdb.Transaction, key: int, name: str) -> bool:
        """Delete the customer's pending action ``name``; False when there was none."""
        pending = profile_key_bytes(key) + name.encode()
        row = txn.get(pending, db=self.pending_db)
        if row is None:
            return False
        txn.delete(bytes(row), db=self.schedule_db)
        txn.delete(pending, db=self.pending_db)
        return True

    def pending_actions(self, txn: lmdb.Transaction,
                        key: int) -> dict[str, tuple[int, ScheduledAction | None]]:
        """The customer's pending actions: {name: (due ms, the action; None where its
        schedule row is missing)}."""
        prefix = profile_key_bytes(key)
        out = {}
        c = txn.cursor(db=self.pending_db)
        if c.set_range(prefix):
            for k, row in c:
                k, row = bytes(k), bytes(row)
                if not k.startswith(prefix):
                    break
                value = txn.get(row, db=self.schedule_db)
                out[k[KEY_BYTES:].decode()] = (int.from_bytes(row[:KEY_BYTES], "big"),
                                               None if value is None else unpack_action(value))
        return out

    def move_actions(self, txn: lmdb.Transaction, old: int, new: int) -> None:
        """A merged-away profile's pending actions continue on the survivor; where both
        have the same action pending, the one due first stays."""
        ours = self.pending_actions(txn, new)
        for name, (due_ms, action) in self.pending_actions(txn, old).items():
            self.cancel_action(txn, old, name)
            if name in ours and ours[name][0] <= due_ms:
                continue
            scheduled_ms, event_id = (due_ms, "") if action is None else action[2:]
            self.schedule_action(txn, due_ms, ScheduledAction(name, new, scheduled_ms, event_id))

    def take_due(self, txn: lmdb.Transaction, now_ms: int,
                 limit: int) -> list[tuple[int, ScheduledAction]]:
        """Remove and return up to ``limit`` (due ms, action) of the actions due at
        ``now_ms``, earliest first."""
        rows = []
        c = txn.cursor(db=self.schedule_db)
        if c.first():
            for row, value in c:
                if int.from_bytes(bytes(row)[:KEY_BYTES], "big") > now_ms or len(rows) >= limit:
                    break
                rows.append((bytes(row), bytes(value)))
        for row, _ in rows:
            txn.delete(row, db=self.schedule_db)
            txn.delete(row[KEY_BYTES:], db=self.pending_db)
        return [(int.from_bytes(row[:KEY_BYTES], "big"), unpack_action(value))
                for row, value in rows]

    def next_due_ms(self) -> int | None:
        """When the earliest pending action is due, or None."""
        with self.reader() as r:
            c = r._txn.cursor(db=self.schedule_db)
            return int.from_bytes(bytes(c.key())[:KEY_BYTES], "big") if c.first() else None

    def wait_for_commit(self, timeout: float) -> None:
        """Sleep until this process commits a write, or ``timeout`` (writes by other
        processes are only seen by looking again: callers poll with a short timeout)."""
        with self.committed:
            self.committed.wait(timeout)

    def resolve_in(self, txn: lmdb.Transaction, kind: str, value: str) -> int | None:
        raw = txn.get(identity_key(kind, value), db=self.identity_db)
        if raw is None:
            return None
        if len(raw) != KEY_BYTES:  # not written by us: CorruptProfile (DATA_LOSS)
            raise CorruptProfile(f"identifier {kind} {value!r}: its stored link ({len(raw)} "
                                 "bytes) is not a profile key")
        return int.from_bytes(raw, "big")

    def get(self, key: int) -> ProfileRecord | None:
        with self.reader() as r:
            buf = r.profile_buffer(key)
            return None if buf is None else decode(buf, key)

    def count(self) -> int:
        with self.reader() as r:
            return r._txn.stat(self.profiles_db)["entries"]

    # ------------------------------------------------------------- decision records
    def record_decisions(self, txn: lmdb.Transaction, rows: list[tuple]) -> None:
        """Write (decision id, owner, value from ``records.pack_decision_value``) rows
        (``putmulti``: the loop runs in C)."""
        keys = [decision_id.encode() for decision_id, _, _ in rows]
        txn.cursor(db=self.decisions_db).putmulti(
            [(key, value) for key, (_, _, value) in zip(keys, rows)])
        txn.cursor(db=self.owners_db).putmulti(
            [(who + key, b"") for key, (_, who, _) in zip(keys, rows)])

    def record_offer_table(self, version: str, offers: list[tuple[str, float, float]],
                           facts: dict | None = None) -> None:
        """Keep a catalog version's (offer id, value, lever) table: records name offers
        by their index in it (written once per version); and ``facts``, what a replay
        of its records must hold equal (``catalog_facts``)."""
        key = f"offers\x1f{version}".encode()

        facts_key = f"catalog\x1f{version}".encode()

        def work(txn):
            if txn.get(key, db=self.meta_db) is None:
                txn.put(key, msgpack.packb([list(o) for o in offers]), db=self.meta_db)
            if facts is not None and txn.get(facts_key, db=self.meta_db) is None:
                txn.put(facts_key, msgpack.packb(facts), db=self.meta_db)

        self.write(work)

    def catalog_facts(self, version: str) -> dict | None:
        """The facts ``record_offer_table`` kept for a catalog version (None: none)."""
        with self.reader() as r:
            raw = r._txn.get(f"catalog\x1f{version}".encode(), db=self.meta_db)
            return None if raw is None else msgpack.unpackb(raw)

    def _offer_table(self, txn: lmdb.Transaction):
        """A lookup of catalog version -> offer table, cached (tables never change)."""
        cache = self._offer_tables

        def table(version: str):
            if version not in cache:
                raw = txn.get(f"offers\x1f{version}".encode(), db=self.meta_db)
                if raw is None:
                    return None
                cache[version] = [tuple(o) for o in msgpack.unpackb(raw)]
            return cache[version]

        return table

    def decision(self, txn: lmdb.Transaction, decision_id: str) -> DecisionRecord | None:
        """The record of a decision; None when unknown or erased."""
        raw = txn.get(decision_id.encode(), db=self.decisions_db)
        return None if not raw else unpack_decision(decision_id, raw, self._offer_table(txn))

    def erased_decision(self, txn: lmdb.Transaction, decision_id: str) -> bool:
        """Whether the decision was recorded, then erased (``delete_decisions`` leaves
        an empty value until the retention expires it)."""
        raw = txn.get(decision_id.encode(), db=self.decisions_db)
        return raw is not None and len(raw) == 0

    def decisions_between(self, from_ms: int, to_ms: int, limit: int) -> list[DecisionRecord]:
        """The records decided in [from_ms, to_ms), oldest first, at most ``limit``."""
        out = []
        with self.reader() as r:
            c = r._txn.cursor(db=self.decisions_db)
            if c.set_range(f"{max(0, from_ms) & 0xFFFFFFFFFFFF:012x}".encode()):
                end = f"{max(0, to_ms) & 0xFFFFFFFFFFFF:012x}".encode()
                for k, v in c:
                    if bytes(k)[:12] >= end or len(out) >= limit:
                        break
                    if v:  # an empty value: erased
                        out.append(unpack_decision(bytes(k).decode(), v,
                                                   self._offer_table(r._txn)))
        return out

    def decision_values(self, from_ms: int, to_ms: int, after: bytes = b"",
                        limit: int = 100_000) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` raw (id, value) of the records decided in [from_ms, to_ms)
        whose id sorts after ``after`` (paging), oldest first; erased ones left out.
        For the analytical export, which decodes them in bulk."""
        out = []
        with self.reader() as r:
            c = r._txn.cursor(db=self.decisions_db)
            start = max(f"{max(0, from_ms) & 0xFFFFFFFFFFFF:012x}".encode(), after + b"\x00")
            if c.set_range(start):
                end = f"{max(0, to_ms) & 0xFFFFFFFFFFFF:012x}".encode()
                for k, v in c:
                    k = bytes(k)
                    if k[:12] >= end or len(out) >= limit:
                        break
                    if v:
                        out.append((k, bytes(v)))
        return out

    def offer_table(self, version: str) -> list | None:
        """A catalog version's decision-record offer table (see ``record_offer_table``)."""
        with self.reader() as r:
            return self._offer_table(r._txn)(version)

    def delete_decisions(self, txn: lmdb.Transaction, owners: list[bytes]) -> int:
        """Erase the decision records filed under ``owners``; return how many. Each
        leaves an empty value (kept until the retention expires it), so an outcome that
        names it is refused as erased rather than waited for."""
        removed = 0
        c = txn.cursor(db=self.owners_db)
        for prefix in owners:
            doomed = []
            if c.set_range(prefix):
                for k, _ in c:
                    k = bytes(k)
                    if not k.startswith(prefix):
                        break
                    doomed.append(k)
            for k in doomed:
                txn.delete(k, db=self.owners_db)
                txn.put(k[len(prefix):], b"", db=self.decisions_db)
                removed += 1
        return removed

    def expire_decisions(self, txn: lmdb.Transaction, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` of the records decided before ``before_ms``."""
        end = f"{max(0, before_ms) & 0xFFFFFFFFFFFF:012x}".encode()
        doomed = []
        c = txn.cursor(db=self.decisions_db)
        if c.first():
            for k, v in c:
                k = bytes(k)
                if k >= end or len(doomed) >= limit:
                    break
                doomed.append((k, decision_owner(v) if v else None))
        for k, who in doomed:
            txn.delete(k, db=self.decisions_db)
            if who is not None:
                txn.delete(who + k, db=self.owners_db)
        return len(doomed)

    # ------------------------------------------------------------- outcomes
    def append_outcome(self, txn: lmdb.Transaction, outcome: OutcomeRecord) -> int:
        raw = txn.get(b"next_outcome", db=self.meta_db)
        cursor = 1 if raw is None else int.from_bytes(raw, "big")
        txn.put(b"next_outcome", profile_key_bytes(cursor + 1), db=self.meta_db)
        txn.put(profile_key_bytes(cursor), pack_outcome(outcome), db=self.outcomes_db)
        return cursor

    def outcomes_from(self, txn: lmdb.Transaction, cursor: int,
                      limit: int) -> list[tuple[int, OutcomeRecord]]:
        out = []
        c = txn.cursor(db=self.outcomes_db)
        if c.set_range(profile_key_bytes(cursor)):
            for k, v in c:
                out.append((int.from_bytes(k, "big"), unpack_outcome(v)))
                if len(out) >= limit:
                    break
        return out

    def expire_outcomes(self, txn: lmdb.Transaction, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` of the oldest outcomes while they happened before
        ``before_ms`` (the log is kept for the records' retention: the learner and the
        analytical export read it by cursor)."""
        c = txn.cursor(db=self.outcomes_db)
        removed = 0
        while removed < limit and c.first() and unpack_outcome(c.value()).at_ms < before_ms:
            c.delete()
            removed += 1
        return removed

    def erase_outcomes(self, txn: lmdb.Transaction, keys: set[int]) -> int:
        """Delete the outcomes of the profiles ``keys`` (``ForgetCustomer``): a scan of
        the log, which the retention bounds."""
        doomed = [bytes(k) for k, v in txn.cursor(db=self.outcomes_db)
                  if unpack_outcome(v).profile_key in keys]
        for k in doomed:
            txn.delete(k, db=self.outcomes_db)
        return len(doomed)

    # ------------------------------------------------------------- merges, erasures
    # Two logs in ``meta`` for the analytical export (``decision.analytics.export``):
    # which profile keys a merge folded into which survivor (attribution follows the
    # customer across identities), and the erasures the export has still to apply to
    # the Parquet files it manages (each entry is deleted once applied, so nothing of
    # the customer stays). Keys: prefix + at ms (8 bytes) + 8 distinguishing bytes;
    # values: msgpack.
    _MERGES, _ERASURES = b"merge\x1f", b"erased\x1f"

    def log_merge(self, txn: lmdb.Transaction, at_ms: int, survivor: int,
                  merged: list[int]) -> None:
        """Record that the profiles ``merged`` are now ``survivor`` (in the merge's
        transaction)."""
        txn.put(self._MERGES + at_ms.to_bytes(8, "big") + profile_key_bytes(survivor)
                + os.urandom(4), msgpack.packb(sorted(merged)), db=self.meta_db)

    def log_erasure(self, txn: lmdb.Transaction, at_ms: int, keys: list[int],
                    owners: list[bytes]) -> None:
        """Record an erasure's profile keys and record owners for the export to apply
        (in the erasure's transaction), and remove the erased keys from the merge log."""
        c = txn.cursor(db=self.meta_db)
        doomed = []
        if c.set_range(self._MERGES):
            for k, v in c:
                k = bytes(k)
                if not k.startswith(self._MERGES):
                    break
                survivor = int.from_bytes(k[len(self._MERGES) + 8:len(self._MERGES) + 16],
                                          "big")
                if survivor in keys or set(msgpack.unpackb(v)) & set(keys):
                    doomed.append(k)
        for k in doomed:
            txn.delete(k, db=self.meta_db)
        txn.put(self._ERASURES + at_ms.to_bytes(8, "big") + os.urandom(8),
                msgpack.packb([sorted(keys), sorted(owners)]), db=self.meta_db)

    def _log(self, prefix: bytes, since_ms: int) -> list[tuple[int, bytes, object]]:
        out = []
        with self.reader() as r:
            c = r._txn.cursor(db=self.meta_db)
            if c.set_range(prefix + max(0, since_ms).to_bytes(8, "big")):
                for k, v in c:
                    k = bytes(k)
                    if not k.startswith(prefix):
                        break
                    at = int.from_bytes(k[len(prefix):len(prefix) + 8], "big")
                    out.append((at, k[len(prefix) + 8:], msgpack.unpackb(v)))
        return out

    def merges_since(self, since_ms: int) -> list[tuple[int, int, list[int]]]:
        """(at ms, survivor, merged keys) of the merges at or after ``since_ms``."""
        return [(at, int.from_bytes(tail[:8], "big"), merged)
                for at, tail, merged in self._log(self._MERGES, since_ms)]

    def pending_erasures(self) -> list[tuple[bytes, list[int], list[bytes]]]:
        """(entry, profile keys, owners) of the erasures the export has not applied yet."""
        return [(at.to_bytes(8, "big") + tail, keys, owners) for at, tail, (keys, owners) in
                self._log(self._ERASURES, 0)]

    def drop_erasures(self, entries: list[bytes]) -> None:
        """Forget the erasures the export applied (nothing of the customer remains)."""
        self.write(lambda txn: [txn.delete(self._ERASURES + e, db=self.meta_db)
                                for e in entries])

    # ------------------------------------------------------------- labels
    def label(self, txn: lmdb.Transaction, decision_id: str, offer_id: str) -> Label | None:
        row = txn.get(f"{decision_id}\x1f{offer_id}".encode(), db=self.label_index_db)
        if row is None:
            return None
        row = bytes(row)
        return unpack_label(row, bytes(txn.get(row, db=self.labels_db) or b"\x00"))

    def put_label(self, txn: lmdb.Transaction, label: Label) -> None:
        row = label_key(label.deadline_ms, label.decision_id, label.offer_id)
        txn.put(row, b"\x01" if label.done else b"\x00", db=self.labels_db)
        txn.put(row[8:], row, db=self.label_index_db)

    def take_expired_labels(self, txn: lmdb.Transaction, now_ms: int,
                            limit: int) -> list[Label]:
        """Remove and return up to ``limit`` labels whose deadline is at or before
        ``now_ms``, earliest first."""
        rows = []
        c = txn.cursor(db=self.labels_db)
        if c.first():
            for row, value in c:
                row = bytes(row)
                if int.from_bytes(row[:8], "big") > now_ms or len(rows) >= limit:
                    break
                rows.append(unpack_label(row, bytes(value)))
        for label in rows:
            row = label_key(label.deadline_ms, label.decision_id, label.offer_id)
            txn.delete(row, db=self.labels_db)
            txn.delete(row[8:], db=self.label_index_db)
        return rows

    def count_labels(self, txn: lmdb.Transaction) -> int:
        return txn.stat(self.labels_db)["entries"]

    # ------------------------------------------------------------- models
    def put_model(self, txn: lmdb.Transaction, name: str, entry: ModelEntry) -> None:
        txn.put(name.encode(), pack_model(entry), db=self.models_db)

    def models(self, txn: lmdb.Transaction) -> dict[str, ModelEntry]:
        return {bytes(k).decode(): unpack_model(v) for k, v in txn.cursor(db=self.models_db)}

    def meta_value(self, txn: lmdb.Transaction, name: str):
        """A msgpack meta value (``model_version``, ``learner``, ``learner_state``)."""
        raw = txn.get(name.encode(), db=self.meta_db)
        return None if raw is None else msgpack.unpackb(raw)

    def put_meta_value(self, txn: lmdb.Transaction, name: str, value) -> None:
        txn.put(name.encode(), msgpack.packb(value), db=self.meta_db)

    def model_version(self) -> list | None:
        """``[version, published ms, examples]`` of the models last published."""
        with self.reader() as r:
            return self.meta_value(r._txn, "model_version")
