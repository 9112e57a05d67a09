"""Profile writes: read, upsert, identify (link and merge) and forget a customer.

Each write is one durable LMDB write transaction that also re-evaluates the
profile's segments and logs the changes as triggers. Events write profiles too, in
batches: ``decision.core.ingest``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import msgpack
import numpy as np

from decision.config.catalog import Catalog
from decision.config.events import FLOAT32_MAX
from decision.config.policies import trim_contacts
from decision.config.segments import refresh as refresh_segments
from decision.core.recording import owner_of
from decision.core.requests import Identifier, IdentifierCheck, check_type
from decision.errors import CorruptProfile, FailedPrecondition, InvalidArgument, NotFound
from decision.settings import Limits
from decision.store import layout
from decision.store.database import ProfileStore
from decision.store.layout import RECENT_EVENTS, AttributeValue, ProfileRecord, recent_events


class ProfileUpdate(NamedTuple):
    identifiers: tuple[Identifier, ...]
    attributes: Mapping[str, AttributeValue | None] = {}  # never mutated
    features: Mapping[str, float] = {}


class Profiles:
    """Profile reads and writes over one store, under the active catalog
    (``catalog()``: its segments, features and declared attribute types)."""

    def __init__(self, store: ProfileStore, limits: Limits, identifier: IdentifierCheck,
                 clock: Callable[[], float], catalog: Callable[[], Catalog]):
        self.store = store
        self.limits = limits
        self.identifier = identifier
        self.clock = clock
        self.catalog = catalog

    def get(self, customer: Identifier) -> ProfileRecord:
        kind, value = self.identifier(customer, "customer")
        with self.store.reader() as reader:
            key = reader.resolve(kind, value)
            buf = None if key is None else reader.profile_buffer(key)
            if buf is None:
                raise NotFound(f"customer: no profile for {kind} {value!r}")
            return layout.decode(buf, key)

    def upsert(self, update: ProfileUpdate) -> ProfileRecord:
        """Set attributes, features and identifiers on the profile the identifiers
        name (creating it if none does), in one durable write transaction."""
        limits = self.limits
        if not update.identifiers:
            raise InvalidArgument("identifiers: at least one identifier is required")
        if len(update.identifiers) > limits.max_identifiers:
            raise InvalidArgument(f"identifiers: {len(update.identifiers)} given, at most "
                                  f"{limits.max_identifiers}")
        idents = self.identifier.distinct(update.identifiers)
        catalog = self.catalog()
        attributes = self._checked_attributes(catalog, update.attributes)
        features = _checked_features(catalog, update.features)
        now_ms = int(self.clock() * 1000)
        store = self.store

        def work(txn) -> ProfileRecord:
            keys = {k for k in (store.resolve_in(txn, kind, v) for kind, v in idents) if k}
            if len(keys) > 1:
                raise FailedPrecondition(
                    "identifiers: they belong to different profiles "
                    f"({', '.join(f'{k:016x}' for k in sorted(keys))}); merge them with "
                    "Identify first"
                )
            record = store.load(txn, keys.pop()) if keys else None
            if record is None:
                record = ProfileRecord(
                    key=store.allocate_key(txn),
                    features=np.zeros(len(catalog.feature_names), dtype=np.float32),
                    created_at_ms=now_ms)
            for name, v in attributes.items():
                if v is None:
                    record.attributes.pop(name, None)
                else:
                    record.attributes[name] = v
            for j, v in features.items():
                record.features[j] = v
            for ident in idents:
                if ident not in record.identifiers:
                    record.identifiers.append(ident)
            if len(record.identifiers) > limits.max_identifiers:
                raise InvalidArgument(
                    f"identifiers: the profile would hold {len(record.identifiers)}, at most "
                    f"{limits.max_identifiers}")
            if len(record.attributes) > limits.max_attributes:
                raise InvalidArgument(
                    f"attributes: the profile would hold {len(record.attributes)}, at most "
                    f"{limits.max_attributes}")
            entered, left = refresh_segments(catalog.segments, record)
            store.log_triggers(txn, record, entered, left, now_ms)
            record.updated_at_ms = now_ms
            store.save(txn, record)
            return record

        return store.write(work)

    def identify(self, identifiers: tuple[Identifier, ...]) -> tuple[ProfileRecord, list[int]]:
        """Make ``identifiers`` one customer: link, and merge the profiles they reveal
        to be one (see ``merge_profiles``). Returns the profile and the merged keys."""
        limits = self.limits
        if len(identifiers) > limits.max_identifiers:
            raise InvalidArgument(f"identifiers: between 2 and {limits.max_identifiers} "
                                  f"are needed, got {len(identifiers)}")
        idents = self.identifier.distinct(identifiers)
        if len(idents) < 2:
            raise InvalidArgument(f"identifiers: between 2 and {limits.max_identifiers} "
                                  f"distinct ones are needed, got {len(idents)}")
        now_ms = int(self.clock() * 1000)
        store = self.store
        catalog = self.catalog()

        def work(txn):
            keys = sorted({k for k in (store.resolve_in(txn, *i) for i in idents) if k})
            records = [r for r in (store.load(txn, k) for k in keys) if r is not None]
            if not records:
                records = [ProfileRecord(
                    key=store.allocate_key(txn), created_at_ms=now_ms,
                    features=np.zeros(len(catalog.feature_names), dtype=np.float32))]
            survivor = merge_profiles(records)
            merged = [r.key for r in records if r.key != survivor.key]
            new = [i for i in idents if i not in survivor.identifiers]
            if not merged and not new:
                return survivor, []  # already one customer: idempotent, nothing written
            survivor.identifiers += new
            if len(survivor.identifiers) > limits.max_identifiers:
                raise InvalidArgument(
                    f"identifiers: the merged profile would hold {len(survivor.identifiers)}, "
                    f"at most {limits.max_identifiers}")
            for r in records:
                if r.key != survivor.key:  # its journeys end: it leaves its segments
                    store.drop_profile(txn, r.key)
                    store.log_triggers(txn, r, [], r.segments, now_ms)
                    store.move_actions(txn, r.key, survivor.key)
            if merged:  # attribution follows the customer (decision.analytics.export)
                store.log_merge(txn, now_ms, survivor.key, [
                    k for r in records if r.key != survivor.key for k in (r.key, *r.merged_keys)])
            entered, left = refresh_segments(catalog.segments, survivor)
            store.log_triggers(txn, survivor, entered, left, now_ms)
            survivor.updated_at_ms = now_ms
            store.save(txn, survivor)  # points every identifier at the survivor
            return survivor, merged

        return store.write(work)

    def forget(self, customer: Identifier) -> tuple[int, int, int]:
        """Erase the customer's profile, identifiers and event records (right to
        erasure). Returns (profile key, identifiers removed, event records removed)."""
        kind, value = self.identifier(customer, "customer")
        store = self.store

        def work(txn):
            try:
                key = store.resolve_in(txn, kind, value)
            except CorruptProfile:  # a damaged link: erase it, it names no profile
                store.unlink_identifier(txn, kind, value)
                return 0, 1, 0
            try:
                record = None if key is None else store.load(txn, key)
            except CorruptProfile:  # undecodable: erase by key, it must not block erasure
                removed = store.delete_undecodable_profile(txn, key)
                owners = [owner_of(key, ""), owner_of(0, f"{kind}\x1f{value}")]
                store.delete_decisions(txn, owners)
                store.erase_outcomes(txn, {key})
                store.log_erasure(txn, int(self.clock() * 1000), [key], owners)
                return key, *removed
            if record is None:
                raise NotFound(f"customer: no profile for {kind} {value!r}")
            removed = store.delete_profile(txn, record)
            keys = {key, *record.merged_keys}  # records filed under merged profiles too
            # decision records: the profile's, and those decided before it existed, for
            # any of its identifiers
            owners = [owner_of(k, "") for k in keys] + [
                owner_of(0, f"{k}\x1f{v}") for k, v in record.identifiers]
            store.delete_decisions(txn, owners)
            store.erase_outcomes(txn, keys)
            # the analytical export removes them from its Parquet files at its next run
            store.log_erasure(txn, int(self.clock() * 1000), sorted(keys), owners)
            return key, removed, store.delete_event_records(txn, keys)

        return store.write(work)

    def _checked_attributes(self, catalog: Catalog,
                            attributes) -> dict[str, AttributeValue | None]:
        limits = self.limits
        if len(attributes) > limits.max_attributes:
            raise InvalidArgument(
                f"attributes: {len(attributes)} entries, at most {limits.max_attributes}")
        declared = {f.name: f.type for f in catalog.fields.of("profile")}
        out: dict[str, AttributeValue | None] = {}
        for name, v in attributes.items():
            if not name or len(name.encode()) > limits.max_string_bytes:
                raise InvalidArgument(
                    f"attributes: names must be 1 to {limits.max_string_bytes} bytes")
            if isinstance(v, str) and len(v.encode()) > limits.max_string_bytes:
                raise InvalidArgument(
                    f"attributes[{name!r}]: longer than {limits.max_string_bytes} bytes")
            if v is not None and name in declared:
                check_type(v, declared[name], f"attributes[{name!r}]")
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidArgument(f"attributes[{name!r}]: must be finite")
            out[name] = float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        return out


def _checked_features(catalog: Catalog, features: Mapping[str, float]) -> dict[int, float]:
    index = {n: j for j, n in enumerate(catalog.feature_names)}
    out = {}
    for name, v in features.items():
        if name not in index:
            raise InvalidArgument(
                f"features[{name!r}]: unknown feature (known: "
                f"{', '.join(catalog.feature_names) or 'none declared'})")
        if not abs(v) <= FLOAT32_MAX:  # also NaN: the profile stores float32
            raise InvalidArgument(f"features[{name!r}]: must be a finite float32 (at most "
                                  f"{FLOAT32_MAX:.4g} in magnitude), got {v}")
        out[index[name]] = float(v)
    return out


def merge_profiles(records: list[ProfileRecord]) -> ProfileRecord:
    """One customer's profiles as one, kept under the oldest profile's key.

    Counters add up; attributes come from every profile, the most recently updated
    one winning where several have a value; features are the most recently updated
    profile's; identifiers are united (the survivor's first); contact histories are
    merged in time order (caps count every contact made with the customer). The
    first record of a single-record list is returned as is."""
    survivor = min(records, key=lambda r: (r.created_at_ms, r.key))
    if len(records) == 1:
        return survivor
    by_recency = sorted(records, key=lambda r: (r.updated_at_ms, r.key))
    counters: dict[str, float] = {}
    attributes: dict = {}
    for r in by_recency:
        attributes.update(r.attributes)
        for name, v in r.counters.items():
            counters[name] = counters.get(name, 0.0) + v
    identifiers = list(survivor.identifiers)
    for r in records:
        identifiers += [i for i in r.identifiers if i not in identifiers]
    merged_keys = [k for r in records if r.key != survivor.key for k in (r.key, *r.merged_keys)]
    contacts = trim_contacts(np.concatenate(
        [np.asarray(r.contacts, dtype=np.int64).reshape(-1, 2) for r in records]), 0, None)
    recent = [raw for _, raw in sorted(
        ((e[1], msgpack.packb(e)) for r in records for e in recent_events(r)),
        key=lambda pair: pair[0])]
    return ProfileRecord(key=survivor.key, features=by_recency[-1].features.copy(),
                         contacts=contacts, recent=recent[-RECENT_EVENTS:],
                         attributes=attributes, counters=counters, identifiers=identifiers,
                         segments=list(survivor.segments),  # changes become triggers
                         merged_keys=survivor.merged_keys + merged_keys,
                         created_at_ms=survivor.created_at_ms,
                         updated_at_ms=by_recency[-1].updated_at_ms)
