"""The decision engine: the plain-Python core every front end calls.

``Engine.decide`` is the hot path, in the order of ``../shared/DESIGN.md``:

1. validate the request against the active catalog (channel, placement, limit,
   context) and fill the rule slots that come from the context;
2. in one LMDB read transaction: resolve the identifier to a profile key, read the
   profile value in place, view its feature vector without copying, decode the
   attributes the rules read;
3. one call into ``kernels.decide.decide_offers`` (eligibility, propensity,
   arbitration, top-k, feature reasons);
4. build the ``Decision`` (a handful of Python objects, k of them).

Per-request values are NamedTuples: immutable and several times cheaper to build than
frozen dataclasses (a decision builds a few dozen of them).
The engine imports nothing from gRPC: the server, the CLI and the benchmarks share it.
The active catalog is an immutable object swapped by reference on reload, so a request
in flight finishes with the catalog it started with.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import collections
from concurrent.futures import Future
from typing import Callable, Iterable, Mapping, NamedTuple

import msgpack
import numpy as np

from decision import layout
from decision.catalog import Catalog, Offer, load_catalog
from decision.errors import (
    CorruptProfile, DecisionError, FailedPrecondition, InvalidArgument, NotFound,
)
from decision.ingest import (
    Event, GroupCommitter, Outcome, TooManyInMessage, ValidEvent, validate,
)
from decision.layout import AttributeValue, ProfileRecord
from decision.policies import trim_contacts
from decision.rules import string_id
from decision.segments import refresh as refresh_segments
from decision.triggers import record_action, record_changes
from decision.settings import Limits, Settings
from decision.store import ProfileStore, identity_key, profile_key_bytes
from decision.tails import VALUES, VERDICTS, ZONES, TailMemo
from kernels.decide import decide_each, decide_offers, new_verdicts, rule_table
from kernels.eligibility import eligible_mask, programs_reading

log = logging.getLogger("decision.engine")
_random_bits = random.getrandbits  # decision ids must be unique, not secret (os.urandom: 1 us)
N_FEATURE_REASONS = 3
_NAN = math.nan


class Identifier(NamedTuple):
    kind: str
    value: str


class DecideQuery(NamedTuple):
    customer: Identifier
    channel: str
    placement: str = ""
    limit: int | None = None  # None: the server's default
    context: Mapping[str, AttributeValue | None] = {}  # never mutated
    explain: bool = False  # also list the offers a contact policy removed, and why


class Reason(NamedTuple):
    code: str  # ELIGIBLE | FEATURE | COLD_START
    detail: str
    weight: float = 0.0


class RankedOffer(NamedTuple):
    offer: Offer
    rank: int
    score: float
    propensity: float
    reasons: tuple[Reason, ...]


class Decision:
    """One answer. The ranking stays as the kernel produced it: ``ranked``, float64[r,
    3 + 2 * N_FEATURE_REASONS], one row per offer, best first, ``[offer index, score,
    propensity, feature indices..., feature weights...]`` (-1 = no feature), so front
    ends encode it without intermediate objects (``decision.wire``); ``offers``
    builds the ``RankedOffer`` view on demand."""

    __slots__ = ("decision_id", "cold_start", "eligible_count", "catalog_version",
                 "decided_at_ms", "prepared", "ranked", "deliver_at_ms", "timing", "removed")

    def __init__(self, decision_id: str, cold_start: bool, eligible_count: int,
                 decided_at_ms: int, prepared: "_Prepared", ranked: np.ndarray,
                 deliver_at_ms: int, timing: str, removed: tuple = ()):
        self.decision_id = decision_id
        self.cold_start = cold_start
        self.eligible_count = eligible_count
        self.catalog_version = prepared.catalog.version
        self.decided_at_ms = decided_at_ms
        self.prepared = prepared
        self.ranked = ranked
        self.deliver_at_ms = deliver_at_ms  # = decided_at_ms on a channel answered now
        self.timing = timing  # "now", or why later (decision.pace)
        self.removed = removed  # explain: (offer index, Reason) a policy removed

    @property
    def offer_index(self) -> list[int]:
        return [int(i) for i in self.ranked[:, 0].tolist()]

    @property
    def removed_offers(self) -> tuple[tuple[Offer, "Reason"], ...]:
        offers = self.prepared.catalog.offers
        return tuple((offers[i], reason) for i, reason in self.removed)

    @property
    def offers(self) -> tuple["RankedOffer", ...]:
        prepared = self.prepared
        offers = prepared.catalog.offers
        names = prepared.catalog.feature_names
        n = N_FEATURE_REASONS
        ranked = []
        for r, row in enumerate(self.ranked.tolist()):
            i = int(row[0])
            if self.cold_start:
                reasons = (prepared.eligible_reason[i], COLD_START)
            else:
                reasons = (prepared.eligible_reason[i], *[
                    Reason("FEATURE", names[int(j)], w)
                    for j, w in zip(row[3:3 + n], row[3 + n:3 + 2 * n]) if j >= 0])
            ranked.append(RankedOffer(offers[i], r + 1, row[1], row[2], reasons))
        return tuple(ranked)


COLD_START = Reason("COLD_START", "no profile: the model's prior")


MAX_CHUNKS_IN_FLIGHT = 8
MAX_REPORTED_REJECTIONS = 1000


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


class ProfileUpdate(NamedTuple):
    identifiers: tuple[Identifier, ...]
    attributes: Mapping[str, AttributeValue | None] = {}  # never mutated
    features: Mapping[str, float] = {}


class _Prepared:
    """Per-catalog values the hot path needs, computed once per catalog version."""

    __slots__ = ("catalog", "channel_bits", "placement_bits", "eligible_reason",
                 "zero_features", "n_features", "n_slots", "profile_slots",
                 "policies", "has_policies", "later", "policy_reasons", "context_plan",
                 "visit", "no_slots", "zone_index", "read_tail", "tails", "profile_only",
                 "no_verdicts", "cold_verdicts")

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.channel_bits = catalog.channel_bits
        self.placement_bits = catalog.placement_bits
        self.eligible_reason = tuple(Reason("ELIGIBLE", o.rule or "no rule")
                                     for o in catalog.offers)
        zero = np.zeros(len(catalog.feature_names), dtype="<f4")
        zero.flags.writeable = False  # same numba type as a view over the map
        self.zero_features = zero
        self.n_features = zero.shape[0]
        self.n_slots = catalog.fields.size
        used = catalog.context_fields  # the context keys some rule reads: their slots
        self.context_plan = {f.name: (f.type, used[f.name].slot if f.name in used else -1)
                             for f in catalog.fields.of("context")}
        self.profile_slots = tuple((f.namespace, f.name, f.slot, f.type)
                                   for f in catalog.profile_fields)
        self.policies = catalog.policies.arrays
        self.visit = tuple(catalog.visit)  # a plain tuple: numba types it fastest
        self.no_slots = [_NAN] * self.n_slots  # every slot missing, copied per request
        self.has_policies = bool(catalog.policies.policies)
        self.later = {c: p for c, p in catalog.pace.items() if p.later}
        zones = tuple(sorted({p.timezone_attribute for p in self.later.values()
                              if p.timezone_attribute}))
        # per channel paced in local time: the index of its zone attribute in ``tails``
        self.zone_index = {c: zones.index(p.timezone_attribute)
                           for c, p in self.later.items() if p.timezone_attribute}
        self.read_tail = bool(self.profile_slots or zones)
        self.tails = TailMemo(self.profile_slots, zones)
        # The rule programs that read no context field give the same verdict for every
        # decision over the same stored profile: ``tails`` keeps them per profile
        # version. Without a profile (or a rule reading one), every profile field is
        # missing: those verdicts are the same for everyone, computed here once.
        rules = catalog.visit.rules
        self.profile_only = ~programs_reading(
            catalog.code, rules, {f.slot for f in catalog.fields.of("context")})
        self.no_verdicts = new_verdicts(self.visit)
        cold = rule_table(catalog.code, catalog.consts, np.full((1, self.n_slots), _NAN),
                          self.visit)[0]
        self.cold_verdicts = np.where(self.profile_only, cold, -1).astype(np.int8)
        self.policy_reasons = tuple(Reason("POLICY", p.describe())
                                    for p in catalog.policies.policies)


class Engine:
    """Decisions and profile operations over one store and one (swappable) catalog."""

    def __init__(self, settings: Settings, store: ProfileStore | None = None,
                 clock: Callable[[], float] = time.time, publish: bool = True):
        """``publish``: record this catalog's version in the store as the one every
        server process serves (False for batch jobs that only read: a campaign)."""
        self.settings = settings
        self.limits: Limits = settings.limits
        self.kinds = frozenset(settings.identifier_kinds)
        self.clock = clock
        self.store = store or ProfileStore(settings.data_dir, settings.map_size,
                                           durable=settings.durable)
        self.reload_lock = threading.Lock()
        self._catalog_listeners: list[Callable[[Catalog], None]] = []
        self._active = self._prepare(load_catalog(settings.catalog_path))
        self._unreachable: str | None = None
        if publish:
            self.store.publish_catalog(self.catalog.version)
        self._ingest = GroupCommitter(self.store, len(self.catalog.feature_names), clock,
                                      lambda: self.catalog)

    def close(self) -> None:
        """Finish queued events, then close the store."""
        self._ingest.close()
        self.store.close()

    # ------------------------------------------------------------- catalog
    @property
    def catalog(self) -> Catalog:
        return self._active.catalog

    def _prepare(self, catalog: Catalog) -> _Prepared:
        self.store.ensure_schema(catalog.feature_names)
        for listener in self._catalog_listeners:
            listener(catalog)
        return _Prepared(catalog)

    def on_catalog(self, listener: Callable[[Catalog], None]) -> None:
        """Call ``listener(catalog)`` now and for every new catalog, before it is
        swapped in (front ends prepare their per-catalog caches off the request path)."""
        self._catalog_listeners.append(listener)
        listener(self.catalog)

    def reload_catalog(self, publish: bool = True) -> Catalog:
        """Compile the catalog file aside, warm it, and swap it in; the old one keeps
        serving if the new one fails (the error propagates). With ``publish`` the new
        version is recorded in the store, so every other process sharing it follows
        (``sync_catalog``)."""
        with self.reload_lock:
            prepared = self._prepare(load_catalog(self.settings.catalog_path))
            self._warm(prepared)
            self._active = prepared
            if publish:
                self.store.publish_catalog(prepared.catalog.version)
            return prepared.catalog

    def sync_catalog(self) -> Catalog | None:
        """Reload if another process published a catalog version other than ours.

        Processes sharing a store thus converge on the catalog file's current content
        (a reload anywhere reaches them all) instead of serving different rule sets.
        Returns the new catalog, or None when already in step. A published version
        this process cannot reach (its file fails to load, or holds another version)
        is not chased again until a different one is published, so processes whose
        files differ do not take turns overwriting each other.
        """
        published = self.store.published_catalog()
        if published in (None, self.catalog.version, self._unreachable):
            return None
        self._unreachable = published
        catalog = self.reload_catalog(publish=False)
        if catalog.version != published:
            raise FailedPrecondition(
                f"another process published catalog {published} but "
                f"{self.settings.catalog_path} holds {catalog.version}; serving that")
        return catalog

    def warm(self, batch: bool = False) -> None:
        """Run a real decision so every kernel signature is compiled (or loaded from
        the on-disk cache) before the first request. A stored profile's features are
        typed exactly like the cold-start vector (read-only float32), so one decision
        covers both paths (tests/test_decide.py checks nothing compiles later). With
        ``batch``, the campaign kernels too (their parallel build takes seconds)."""
        self._warm(self._active)
        if batch:
            from kernels.decide import decide_batch, decide_batch_serial

            c = self.catalog
            for kernel in (decide_batch, decide_batch_serial):
                kernel(c.code, c.consts, np.full((1, self._active.n_slots), _NAN),
                       self._active.visit,
                       np.zeros((1, self._active.n_features), dtype=np.float32),
                       np.zeros((0, 2), dtype=np.int64), np.zeros(2, dtype=np.int64),
                       1, 0, self.clock(), 1, self._active.policies)

    def _warm(self, prepared: _Prepared) -> None:
        prepared.catalog.segments.evaluate(ProfileRecord(key=0, features=prepared.zero_features))
        query = DecideQuery(Identifier("customer_id", "\x00warm-up"), prepared.catalog.channels[0])
        self._decide(prepared, query)
        self._decide_many(prepared, [query])

    # ------------------------------------------------------------- decide
    def decide(self, query: DecideQuery) -> Decision:
        return self._decide(self._active, query)  # one catalog for the whole request

    def _decide(self, active: _Prepared, query: DecideQuery) -> Decision:
        kind, value, channel_bit, placement_bit, k, slots = self._request(active, query)
        now = self.clock()
        with self.store.reader() as reader:
            key = reader.resolve(kind, value)
            buf = None if key is None else reader.profile_buffer(key)
            return self._rank(active, query.channel, channel_bit, placement_bit, k, slots, key,
                              buf, now, query.explain)

    def decide_many(self, queries: list[DecideQuery]) -> list[Decision]:
        """Several decisions at one instant, over one catalog version and one read
        transaction (a page with several placements, or several customers), ranked
        in one kernel call (``decide_each``). Every query is checked first; an
        invalid one fails the call, naming its index."""
        if not 1 <= len(queries) <= self.limits.max_batch:
            raise InvalidArgument(f"requests: 1 to {self.limits.max_batch} decisions per "
                                  f"call (max_batch), got {len(queries)}")
        return self._decide_many(self._active, queries)

    def _decide_many(self, active: _Prepared, queries: list[DecideQuery]) -> list[Decision]:
        checked = []
        for n, query in enumerate(queries):
            try:
                checked.append(self._request(active, query))
            except DecisionError as exc:
                raise type(exc)(f"requests[{n}].{exc}") from None
        now = self.clock()
        m = len(queries)
        features = np.zeros((m, active.n_features), dtype=np.float32)
        histories = []
        profiles = []  # per query: (buf is None, the profile's zone or None)
        one_by_one = any(q.explain for q in queries)  # explain's removed offers
        with self.store.reader() as reader:
            for c, (query, (kind, value, bit, place, k, slots)) in enumerate(zip(queries,
                                                                                 checked)):
                key = reader.resolve(kind, value)
                buf = None if key is None else reader.profile_buffer(key)
                if one_by_one:
                    profiles.append(self._rank(active, query.channel, bit, place, k, slots,
                                               key, buf, now, query.explain))
                    continue
                x, contacts, zone, _ = self._read_profile(active, query.channel, key, buf,
                                                          slots)
                if buf is not None:
                    features[c] = x
                    if contacts.shape[0]:
                        histories.append((c, contacts))
                profiles.append((buf is None, zone))
            if one_by_one:
                return profiles
            starts = np.zeros(m + 1, dtype=np.int64)
            for c, h in histories:
                starts[c + 1] = h.shape[0]
            np.cumsum(starts, out=starts)
            # copied out of the map before the transaction ends; writable either way,
            # so the kernel has one signature
            flat = (np.concatenate([h for _, h in histories]) if histories
                    else np.zeros((0, 2), dtype=np.int64))
        eligible, filled, ranked = decide_each(
            active.catalog.code, active.catalog.consts,
            np.array([slots for *_, slots in checked], dtype=np.float64), active.visit,
            features, flat, starts, np.array([c[2] for c in checked], dtype=np.int64),
            np.array([c[3] for c in checked], dtype=np.int64), now,
            np.array([c[4] for c in checked], dtype=np.int64), N_FEATURE_REASONS,
            active.policies)
        eligible, filled = eligible.tolist(), filled.tolist()
        return [self._answer(active, query.channel, now, cold, zone, eligible[c],
                             ranked[c, :filled[c]], ())
                for c, (query, (cold, zone)) in enumerate(zip(queries, profiles))]

    def _request(self, active: _Prepared, query: DecideQuery) -> tuple:
        """Check a query against the catalog and the limits; return (identifier kind,
        value, channel bit, placement bit, k, the rule slots with the context filled:
        a list, turned into an array once the profile's slots are in)."""
        limits = self.limits
        kind, value = self._identifier(query.customer, "customer")
        channel_bit = active.channel_bits.get(query.channel)
        if channel_bit is None:
            _unknown_channel(active.catalog, query.channel)
        placement_bit = 0
        if query.placement:
            placement_bit = active.placement_bits.get(query.placement)
            if placement_bit is None:
                _unknown_placement(active.catalog, query.placement)
        k = limits.default_offers if query.limit is None else query.limit
        if not 1 <= k <= limits.max_offers:
            raise InvalidArgument(f"limit: must be between 1 and {limits.max_offers}, got {k}")
        slots = active.no_slots.copy()
        if query.context:
            self._fill_context(active, query.context, slots)
        return kind, value, channel_bit, placement_bit, k, slots

    def _read_profile(self, active: _Prepared, channel: str, key: int | None, buf,
                      slots: list) -> tuple:
        """From a profile value ``buf`` (None: cold start), read in place in a
        transaction the caller holds: (features, contacts, the customer's time zone
        when the channel's pace needs it, what ``active.tails`` keeps of the profile or
        None); the profile's rule slots go into ``slots``."""
        if buf is None:
            return active.zero_features, layout.NO_CONTACTS, None, None
        n_features, n_contacts, tail_at = layout.read_head(buf, key, active.n_features)
        x = layout.feature_view(buf, n_features)
        contacts = layout.NO_CONTACTS
        if n_contacts and active.has_policies:
            contacts = layout.contacts_view(buf, n_features, n_contacts)
        zone = kept = None
        if active.read_tail:
            kept = active.tails.read(buf, key, n_features, tail_at)
            for slot, v in zip(active.tails.slot_index, kept[VALUES]):
                slots[slot] = v
            z = active.zone_index.get(channel)
            if z is not None:
                zone = kept[ZONES][z]
        return x, contacts, zone, kept

    def _rank(self, active: _Prepared, channel: str, channel_bit: int, placement_bit: int,
              k: int, slots: list, key: int | None, buf, now: float,
              explain: bool = False) -> Decision:
        """Decide over a profile value ``buf`` (None: cold start) read in a transaction
        the caller holds: the kernel call and the answer around it."""
        catalog = active.catalog
        x, contacts, zone, kept = self._read_profile(active, channel, key, buf, slots)
        slots = np.array(slots, dtype=np.float64)
        if kept is None:  # no profile, or no rule reads one
            verdict = active.cold_verdicts.copy()
        elif kept[VERDICTS] is None:  # this profile version's first decision
            verdict = active.no_verdicts.copy()
        else:
            verdict = kept[VERDICTS].copy()
        eligible, ranked, blocked = decide_offers(
            catalog.code, catalog.consts, slots, active.visit, x, channel_bit, placement_bit, now,
            k, N_FEATURE_REASONS, contacts, active.policies, verdict)
        if kept is not None and kept[VERDICTS] is None:
            active.tails.keep_verdicts(
                key, kept, np.where(active.profile_only, verdict, -1).astype(np.int8))
        removed = ()
        if explain and active.has_policies:
            removed = self._removed(active, slots, channel_bit, placement_bit, now, blocked)
        return self._answer(active, channel, now, buf is None, zone, eligible, ranked, removed)

    def _answer(self, active: _Prepared, channel: str, now: float, cold: bool, zone,
                eligible: int, ranked: np.ndarray, removed: tuple) -> Decision:
        """The ``Decision`` for the kernel's ``ranked`` rows, with its delivery time."""
        decided_ms = int(now * 1000)
        deliver_at_ms, timing = decided_ms, "now"
        pace = active.later.get(channel)
        if pace is not None:
            deliver_at_ms, timing = pace.deliver_at(decided_ms, zone)
        return Decision(_decision_id(now), cold, eligible, decided_ms, active, ranked,
                        deliver_at_ms, timing, removed)

    def _removed(self, active: _Prepared, slots, channel_bit, placement_bit, now,
                 blocked: np.ndarray) -> tuple:
        """The offers in scope whose rule held but a policy removed (explain), at most
        ``max_offers`` of them, in catalog order."""
        catalog = active.catalog
        passed = eligible_mask(catalog.code, catalog.programs, catalog.consts, slots,
                               catalog.offer_masks, catalog.offer_window, channel_bit,
                               placement_bit, now)
        hits = np.nonzero(passed & (blocked >= 0))[0][:self.limits.max_offers]
        return tuple((int(i), active.policy_reasons[blocked[i]]) for i in hits)

    def _fill_context(self, active: _Prepared, context, slots: np.ndarray) -> None:
        """Check the request's context and put the values rules read into ``slots``
        (per key, the catalog's type and slot are looked up once: ``context_plan``)."""
        limits = self.limits
        if len(context) > limits.max_context_entries:
            raise InvalidArgument(
                f"context: {len(context)} entries, at most {limits.max_context_entries} allowed"
            )
        max_bytes = limits.max_string_bytes
        short = max_bytes // 4  # this many characters are at most max_bytes in UTF-8
        plan = active.context_plan
        for key, v in context.items():
            if len(key) > short and len(key.encode()) > max_bytes:
                raise InvalidArgument(
                    f"context: key {key[:32]!r}... longer than {max_bytes} bytes")
            t = type(v)
            if t is str and len(v) > short and len(v.encode()) > max_bytes:
                raise InvalidArgument(f"context[{key!r}]: value longer than {max_bytes} bytes")
            entry = plan.get(key)
            if entry is None or v is None:
                continue  # undeclared keys are ignored; no value means missing
            ftype, slot = entry
            if ftype == "string":
                if t is not str:
                    _check_type(v, ftype, f"context[{key!r}]")
                value = string_id(v)
            elif ftype == "number":
                if t is not float and t is not int:
                    _check_type(v, ftype, f"context[{key!r}]")
                if not math.isfinite(v):
                    raise InvalidArgument(f"context[{key!r}]: must be a finite number, got {v}")
                value = float(v)
            else:
                if t is not bool:
                    _check_type(v, ftype, f"context[{key!r}]")
                value = 1.0 if v else 0.0
            if slot >= 0:
                slots[slot] = value

    # ------------------------------------------------------------- profiles
    def _identifier(self, ident: Identifier | None, where: str) -> tuple[str, str]:
        if ident is None or not ident.value:
            raise InvalidArgument(f"{where}.value: required, the customer's identifier")
        kind = ident.kind or "customer_id"
        if kind not in self.kinds:
            raise InvalidArgument(
                f"{where}.kind: unknown identifier kind {kind!r} "
                f"(known: {', '.join(sorted(self.kinds))})"
            )
        if len(ident.value.encode()) > self.limits.max_string_bytes:
            raise InvalidArgument(
                f"{where}.value: longer than {self.limits.max_string_bytes} bytes")
        return kind, ident.value

    def get_profile(self, customer: Identifier) -> ProfileRecord:
        kind, value = self._identifier(customer, "customer")
        with self.store.reader() as reader:
            key = reader.resolve(kind, value)
            buf = None if key is None else reader.profile_buffer(key)
            if buf is None:
                raise NotFound(f"customer: no profile for {kind} {value!r}")
            return layout.decode(buf, key)

    def upsert_profile(self, update: ProfileUpdate) -> ProfileRecord:
        """Set attributes, features and identifiers on the profile the identifiers
        name (creating it if none does), in one durable write transaction."""
        limits = self.limits
        if not update.identifiers:
            raise InvalidArgument("identifiers: at least one identifier is required")
        if len(update.identifiers) > limits.max_identifiers:
            raise InvalidArgument(f"identifiers: {len(update.identifiers)} given, at most "
                                  f"{limits.max_identifiers}")
        idents = [self._identifier(ident, f"identifiers[{n}]")
                  for n, ident in enumerate(update.identifiers)]
        attributes = self._checked_attributes(update.attributes)
        features = self._checked_features(update.features)
        now_ms = int(self.clock() * 1000)
        store = self.store
        segments = self.catalog.segments

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
                    features=np.zeros(len(self.catalog.feature_names), dtype=np.float32),
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
            entered, left = refresh_segments(segments, record)
            record_changes(store, txn, record, entered, left, now_ms)
            record.updated_at_ms = now_ms
            store.save(txn, record)
            return record

        return store.write(work)

    def identify(self, identifiers: tuple[Identifier, ...]) -> tuple[ProfileRecord, list[int]]:
        """Make ``identifiers`` one customer: link, and merge the profiles they reveal
        to be one (see ``merge_profiles``). Returns the profile and the merged keys."""
        limits = self.limits
        if not 2 <= len(identifiers) <= limits.max_identifiers:
            raise InvalidArgument(f"identifiers: between 2 and {limits.max_identifiers} "
                                  f"are needed, got {len(identifiers)}")
        idents = [self._identifier(ident, f"identifiers[{n}]")
                  for n, ident in enumerate(identifiers)]
        now_ms = int(self.clock() * 1000)
        store = self.store
        segments = self.catalog.segments

        def work(txn):
            keys = sorted({k for k in (store.resolve_in(txn, *i) for i in idents) if k})
            records = [r for r in (store.load(txn, k) for k in keys) if r is not None]
            if not records:
                records = [ProfileRecord(
                    key=store.allocate_key(txn), created_at_ms=now_ms,
                    features=np.zeros(len(self.catalog.feature_names), dtype=np.float32))]
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
                    txn.delete(profile_key_bytes(r.key), db=store.profiles_db)
                    record_changes(store, txn, r, [], r.segments, now_ms)
                    _move_pending(store, txn, r.key, survivor.key)
            entered, left = refresh_segments(segments, survivor)
            record_changes(store, txn, survivor, entered, left, now_ms)
            survivor.updated_at_ms = now_ms
            store.save(txn, survivor)  # points every identifier at the survivor
            return survivor, merged

        return store.write(work)

    def forget(self, customer: Identifier) -> tuple[int, int, int]:
        """Erase the customer's profile, identifiers and event records (right to
        erasure). Returns (profile key, identifiers removed, event records removed)."""
        kind, value = self._identifier(customer, "customer")
        store = self.store

        def work(txn):
            try:
                key = store.resolve_in(txn, kind, value)
            except CorruptProfile:  # a damaged link: erase it, it names no profile
                txn.delete(identity_key(kind, value), db=store.identity_db)
                return 0, 1, 0
            try:
                record = None if key is None else store.load(txn, key)
            except CorruptProfile:  # undecodable: erase by key, it must not block erasure
                return key, *store.delete_undecodable_profile(txn, key)
            if record is None:
                raise NotFound(f"customer: no profile for {kind} {value!r}")
            removed = store.delete_profile(txn, record)
            keys = {key, *record.merged_keys}  # records filed under merged profiles too
            return key, removed, store.delete_event_records(txn, keys)

        key, removed, records = store.write(work)
        # nothing of an erased customer kept in this process (other processes' memos
        # never match a profile that is gone, and start afresh when full)
        self._active.tails.forget(key)
        return key, removed, records

    def _checked_attributes(self, attributes) -> dict[str, AttributeValue | None]:
        limits = self.limits
        if len(attributes) > limits.max_attributes:
            raise InvalidArgument(
                f"attributes: {len(attributes)} entries, at most {limits.max_attributes}")
        declared = {f.name: f.type for f in self.catalog.fields.of("profile")}
        out: dict[str, AttributeValue | None] = {}
        for name, v in attributes.items():
            if not name or len(name.encode()) > limits.max_string_bytes:
                raise InvalidArgument(
                    f"attributes: names must be 1 to {limits.max_string_bytes} bytes")
            if isinstance(v, str) and len(v.encode()) > limits.max_string_bytes:
                raise InvalidArgument(
                    f"attributes[{name!r}]: longer than {limits.max_string_bytes} bytes")
            if v is not None and name in declared:
                _check_type(v, declared[name], f"attributes[{name!r}]")
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidArgument(f"attributes[{name!r}]: must be finite")
            out[name] = float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        return out

    def _checked_features(self, features: Mapping[str, float]) -> dict[int, float]:
        index = {n: j for j, n in enumerate(self.catalog.feature_names)}
        out = {}
        for name, v in features.items():
            if name not in index:
                raise InvalidArgument(
                    f"features[{name!r}]: unknown feature (known: "
                    f"{', '.join(self.catalog.feature_names) or 'none declared'})")
            if not math.isfinite(v):
                raise InvalidArgument(f"features[{name!r}]: must be finite, got {v}")
            out[index[name]] = float(v)
        return out

    # ------------------------------------------------------------- events
    def track(self, event: Event) -> Outcome:
        """Apply one event durably (grouped with concurrent ones into one commit)."""
        valid = validate(event, self.catalog, self._identifier, int(self.clock() * 1000),
                         self.limits)
        [result] = self._ingest.submit([valid]).result()
        if isinstance(result, BaseException):
            raise result
        return result

    def track_many(self, events: Iterable[Event], chunk: int = 512) -> TrackSummary:
        """Apply a stream of events in order; invalid ones are skipped and reported.

        Chunks go to the writer as they fill, so reading the stream overlaps with
        committing it; at most ``MAX_CHUNKS_IN_FLIGHT`` wait at a time (memory stays
        bounded however long the stream), and at most ``MAX_REPORTED_REJECTIONS``
        rejections are listed (all are counted). The summary comes once all are
        durable."""
        catalog = self.catalog
        summary = _StreamTally()
        pending: collections.deque = collections.deque()
        batch: list[ValidEvent] = []
        where: list[tuple[int, str]] = []
        for index, event in enumerate(events):
            summary.received += 1
            try:
                if isinstance(event, TooManyInMessage):
                    raise event.error()
                batch.append(validate(event, catalog, self._identifier,
                                      int(self.clock() * 1000), self.limits))
                where.append((index, event.event_id))
            except DecisionError as exc:
                summary.reject(index, event.event_id, exc)
            if len(batch) >= chunk:
                pending.append((where, self._ingest.submit(batch)))
                batch, where = [], []
                if len(pending) >= MAX_CHUNKS_IN_FLIGHT:
                    summary.settle(*pending.popleft())
        if batch:
            pending.append((where, self._ingest.submit(batch)))
        while pending:
            summary.settle(*pending.popleft())
        return TrackSummary(summary.received, summary.applied, summary.duplicates,
                            tuple(sorted(summary.rejected)), summary.rejected_count)

    # ------------------------------------------------------------- delayed actions
    def fire_due(self, limit: int = 256) -> int:
        """Fire the delayed actions due by now (``decision.triggers``): in one write
        transaction, take them off the schedule, check each trigger's condition on the
        profile as it is now, decide what to send (with the catalog, rules and
        policies of this moment) and append the ``action`` trigger. Every process may
        call this: the transaction makes each action fire once. Returns how many
        fired."""
        now = self.clock()
        now_ms = int(now * 1000)
        due = self.store.next_due_ms()
        if due is None or due > now_ms:
            return 0
        active = self._active
        triggers = active.catalog.triggers
        store = self.store

        def work(txn) -> int:
            fired = 0
            behind = None  # this process's catalog lags the published one
            for due_ms, value in store.take_due(txn, now_ms, limit):
                name, key, scheduled_ms, event_id = msgpack.unpackb(value)
                spec = triggers.delayed.get(name)
                if spec is None:
                    if behind is None:
                        behind = store.published_catalog_in(txn) != active.catalog.version
                    if behind:  # another process knows this trigger: leave it to it
                        store.schedule_action(txn, key, name, due_ms, value)
                    else:
                        log.warning("delayed action %s of profile %016x dropped: the catalog "
                                    "no longer has this trigger", name, key)
                    continue
                raw = txn.get(profile_key_bytes(key), db=store.profiles_db)
                if raw is None:
                    continue  # the customer was erased
                try:
                    record = layout.decode(raw, key)
                    if not triggers.holds(name, record):
                        continue
                    decision = None
                    if spec.decide is not None:
                        decision = self._action_decision(active, spec.decide, key, raw, now)
                except DecisionError as exc:
                    log.error("delayed action %s of profile %016x dropped: %s", name, key, exc)
                    continue
                except Exception:  # one bad action must not hold back all the others
                    log.exception("delayed action %s of profile %016x dropped", name, key)
                    continue
                record_action(store, txn, record, name, now_ms, event_id, decision)
                fired += 1
            return fired

        return store.write(work)

    def _action_decision(self, active: _Prepared, spec, key: int, raw, now: float) -> dict:
        d = self._rank(active, spec.channel, active.channel_bits[spec.channel],
                       active.placement_bits.get(spec.placement, 0), spec.limit,
                       active.no_slots.copy(), key, raw, now)
        offers = active.catalog.offers
        return {"id": d.decision_id, "channel": spec.channel, "placement": spec.placement,
                "eligible": d.eligible_count, "catalog": active.catalog.version,
                "deliver_at_ms": d.deliver_at_ms, "timing": d.timing,
                "offers": [[offers[int(row[0])].id, row[1], row[2]] for row in d.ranked.tolist()]}

    def list_offers(self, channel: str = "", placement: str = "") -> tuple[Catalog, list[Offer]]:
        """The active catalog and its offers for a channel/placement (one snapshot)."""
        catalog = self.catalog
        if channel and channel not in catalog.channels:
            _unknown_channel(catalog, channel)
        if placement and placement not in catalog.placements:
            _unknown_placement(catalog, placement)
        return catalog, catalog.offers_for(channel, placement)


def _unknown_channel(catalog: Catalog, channel: str):
    raise InvalidArgument(
        f"channel: unknown channel {channel!r} (known: {', '.join(catalog.channels)})")


def _unknown_placement(catalog: Catalog, placement: str):
    raise InvalidArgument(
        f"placement: unknown placement {placement!r} "
        f"(known: {', '.join(catalog.placements) or 'none declared'})")


def merge_profiles(records: list[ProfileRecord]) -> ProfileRecord:
    """One customer's profiles as one, kept under the oldest profile's key.

    Counters add up; attributes come from every profile, the most recently updated
    one winning where several have a value; features are the most recently updated
    profile's; identifiers are united (the survivor's first); contact histories are
    merged in time order (caps count every contact made with the customer). The first record of a
    single-record list is returned as is."""
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
    return ProfileRecord(key=survivor.key, features=by_recency[-1].features.copy(),
                         contacts=contacts,
                         attributes=attributes, counters=counters, identifiers=identifiers,
                         segments=list(survivor.segments),  # changes become triggers
                         merged_keys=survivor.merged_keys + merged_keys,
                         created_at_ms=survivor.created_at_ms,
                         updated_at_ms=by_recency[-1].updated_at_ms)


def _move_pending(store, txn, old: int, new: int) -> None:
    """A merged-away profile's pending actions continue on the survivor; where both
    have the same action pending, the one due first stays."""
    ours = store.pending_actions(txn, new)
    for name, (due_ms, value) in store.pending_actions(txn, old).items():
        store.cancel_action(txn, old, name)
        if name in ours and ours[name][0] <= due_ms:
            continue
        _, _, scheduled_ms, event_id = msgpack.unpackb(value) if value else (0, 0, due_ms, "")
        store.schedule_action(txn, new, name, due_ms,
                              msgpack.packb([name, new, scheduled_ms, event_id]))


def _check_type(v, ftype: str, where: str) -> None:
    ok = (isinstance(v, bool) if ftype == "bool" else
          isinstance(v, str) if ftype == "string" else
          isinstance(v, (int, float)) and not isinstance(v, bool))
    if not ok:
        got = "bool" if isinstance(v, bool) else "string" if isinstance(v, str) else "number"
        raise InvalidArgument(f"{where}: expected a {ftype}, got a {got}")


def _decision_id(now: float) -> str:
    """28 hex characters: 48 bits of milliseconds (sortable by time) + 64 random bits."""
    return f"{int(now * 1000) & 0xFFFFFFFFFFFF:012x}{_random_bits(64):016x}"
