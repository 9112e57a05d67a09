"""The engine: the plain-Python core every front end calls, as one small facade.

An ``Engine`` holds the store and the active catalog (a ``Prepared``, swapped by
reference on reload, so a request in flight finishes with the catalog it started
with), and hands each operation to its room:

- Respond (``Decide``, ``DecideBatch``): ``decision.core.respond``;
- Inspire (campaigns): ``decision.core.inspire``, over ``Engine.active``;
- events (``Track``, ``TrackStream``): ``decision.core.ingest``;
- profile writes and merges, erasure: ``decision.core.profiles``;
- delayed actions: ``decision.core.actions``;
- learning (decision records, the learner, the models served, experiments):
  ``decision.core.recording``, ``decision.core.learning``, ``decision.core.experiments``.

The engine imports nothing from gRPC: the server, the CLI and the benchmarks share it.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Iterable

import numpy as np

from decision.config.catalog import Catalog, Offer, load_catalog
from decision.core.actions import DelayedActions
from decision.core.ingest import Event, Ingestion, Outcome, TooManyInMessage, TrackSummary
from decision.core.prepared import Prepared
from decision.core.profiles import Profiles, ProfileUpdate
from decision.core.requests import Identifier, IdentifierCheck
from decision.core.respond import (
    WARM_UP, DecideQuery, Decision, Responder, unknown_channel, unknown_placement,
)
from decision.core.experiments import Planner
from decision.core.learning import Learner, ModelInsight, Posterior, Served, insight
from decision.core.recording import Recorder, replay_facts
from decision.errors import FailedPrecondition, InvalidArgument, NotFound
from decision.settings import Limits, Settings
from decision.store.database import ProfileStore
from decision.store.layout import ProfileRecord
from decision.store.records import DecisionRecord


class Engine:
    """Decisions and profile operations over one store and one (swappable) catalog."""

    def __init__(self, settings: Settings, store: ProfileStore | None = None,
                 clock: Callable[[], float] = time.time, publish: bool = True):
        """``publish``: record this catalog's version in the store as the one every
        server process serves (False for batch jobs that only read: a campaign)."""
        self.settings = settings
        self.limits: Limits = settings.limits
        self.clock = clock
        self.store = store or ProfileStore(settings.data_dir, settings.map_size,
                                           durable=settings.durable)
        self.reload_lock = threading.Lock()
        self._catalog_listeners: list[Callable[[Catalog], None]] = []
        self.learner: Learner | None = None  # below: _prepare reads it
        self.active = self._prepare(load_catalog(settings.catalog_path))
        self._unreachable: str | None = None
        if publish:
            self.store.publish_catalog(self.catalog.version)
        identifier = IdentifierCheck(settings.identifier_kinds, self.limits)
        catalog = lambda: self.active.catalog  # noqa: E731 (the active one at each call)
        self.recorder = Recorder(self.store)
        self.learner = Learner(self.store, catalog, clock)
        self.models_lock = threading.Lock()
        self.responder = Responder(self.store, self.limits, identifier, clock, self.recorder)
        self.refresh_models()
        self.profiles = Profiles(self.store, self.limits, identifier, clock, catalog)
        self.ingestion = Ingestion(self.store, self.limits, identifier, clock, catalog)
        self.actions = DelayedActions(self.store, self.responder, clock)

    def close(self) -> None:
        """Finish queued events and decision records, then close the store."""
        self.ingestion.close()
        self.recorder.close()
        self.store.close()

    # ------------------------------------------------------------- catalog
    @property
    def catalog(self) -> Catalog:
        return self.active.catalog

    def _prepare(self, catalog: Catalog) -> Prepared:
        self.store.ensure_schema(catalog.feature_names)
        for listener in self._catalog_listeners:
            listener(catalog)
        prepared = Prepared(catalog)
        if catalog.learning.records:
            self.store.record_offer_table(
                catalog.version, [(o.id, o.value, o.lever) for o in catalog.offers],
                replay_facts(catalog))
            prepared.planner = Planner(prepared, self._served(catalog))
        return prepared

    # ------------------------------------------------------------- learning
    def _served(self, catalog: Catalog) -> Served | None:
        """The published models, folded for ``catalog`` (None when it does not learn)."""
        if not catalog.learning.enabled:
            return None
        published = self.store.model_version()
        version = published[0] if published else 0
        learner = self.learner
        if (learner is not None and learner.version == version
                and learner.posterior is not None and learner.posterior.catalog is catalog):
            posterior = learner.posterior  # this process learned it: no need to read it back
        else:
            posterior = Posterior(catalog)
            with self.store.reader() as reader:
                entries = reader.models()
            time.sleep(0)  # publication runs beside requests: yield the interpreter often
            posterior.load(entries)
        time.sleep(0)
        return posterior.served(str(version))

    def refresh_models(self) -> bool:
        """Serve the latest published models if they are not served yet (every process
        calls this after its learner's cycle: ``learning_step``); True when swapped."""
        with self.models_lock:
            active = self.active
            planner = active.planner
            if planner is None or not active.catalog.learning.enabled:
                return False
            published = self.store.model_version()
            if published is None or str(published[0]) == planner.version:
                return False
            served = self._served(active.catalog)
            time.sleep(0)
            active.planner = Planner(active, served)
            return True

    def learning_step(self) -> int | None:
        """One learner cycle (if this process holds the store's learner lease), then
        the latest models served; the examples learned (None: another process learns
        or the catalog does not)."""
        learned = self.learner.cycle()
        self.refresh_models()
        return learned

    def model_insight(self, offer_id: str = "", channel: str = "",
                      top: int = 5) -> ModelInsight:
        """``GetModel``: what the learned models know."""
        catalog = self.catalog
        if not catalog.learning.enabled:
            raise FailedPrecondition(f"catalog {catalog.version} does not learn: set "
                                     "[learning] enabled = true")
        if offer_id and offer_id not in catalog.offer_index:
            raise NotFound(f"offer_id: no offer {offer_id!r} in catalog {catalog.version}")
        if channel and channel not in catalog.channels:
            unknown_channel(catalog, channel)
        if not 0 <= top <= 50:
            raise InvalidArgument(f"top_features: 0 to 50, got {top}")
        return insight(self.store, catalog, offer_id, channel, top or 5)

    def decision_records(self, decision_id: str = "", from_ms: int = 0, to_ms: int = 0,
                         limit: int = 1000) -> list[DecisionRecord]:
        """One decision's record by id, or those decided in [from_ms, to_ms)."""
        if decision_id:
            with self.store.reader() as reader:
                record = reader.decision(decision_id)
            if record is None:
                raise NotFound(f"decision_id: no record of decision {decision_id!r} (unknown, "
                               "erased, or past the catalog's learning.retention)")
            return [record]
        if to_ms <= from_ms:
            raise InvalidArgument(f"to_ms: must be after from_ms ({from_ms}), got {to_ms}")
        if not 1 <= limit <= 100_000:
            raise InvalidArgument(f"limit: 1 to 100000, got {limit}")
        return self.store.decisions_between(from_ms, to_ms, limit)

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
            self.active = prepared
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
        ``batch``, the campaign kernel too (its parallel build takes seconds)."""
        self._warm(self.active)
        if batch:
            from kernels.decide import decide_batch

            active = self.active
            c = active.catalog
            decide_batch(c.code, c.consts, np.full((1, active.n_slots), math.nan), active.visit,
                         np.zeros((1, active.n_features), dtype=np.float32),
                         np.zeros((0, 2), dtype=np.int64), np.zeros(2, dtype=np.int64),
                         1, 0, self.clock(), 1, active.policies)

    def _warm(self, prepared: Prepared) -> None:
        prepared.catalog.segments.evaluate(ProfileRecord(key=0, features=prepared.zero_features))
        query = DecideQuery(Identifier("customer_id", WARM_UP), prepared.catalog.channels[0])
        self.responder.decide(prepared, query)
        self.responder.decide_many(prepared, [query])

    # ------------------------------------------------------------- Respond
    def decide(self, query: DecideQuery) -> Decision:
        return self.responder.decide(self.active, query)  # one catalog for the whole request

    def decide_many(self, queries: list[DecideQuery]) -> list[Decision]:
        return self.responder.decide_many(self.active, queries)

    def list_offers(self, channel: str = "", placement: str = "") -> tuple[Catalog, list[Offer]]:
        """The active catalog and its offers for a channel/placement (one snapshot)."""
        catalog = self.catalog
        if channel and channel not in catalog.channels:
            unknown_channel(catalog, channel)
        if placement and placement not in catalog.placements:
            unknown_placement(catalog, placement)
        return catalog, catalog.offers_for(channel, placement)

    # ------------------------------------------------------------- profiles
    def get_profile(self, customer: Identifier) -> ProfileRecord:
        return self.profiles.get(customer)

    def upsert_profile(self, update: ProfileUpdate) -> ProfileRecord:
        return self.profiles.upsert(update)

    def identify(self, identifiers: tuple[Identifier, ...]) -> tuple[ProfileRecord, list[int]]:
        return self.profiles.identify(identifiers)

    def forget(self, customer: Identifier) -> tuple[int, int, int]:
        """Erase a customer (``Profiles.forget``); nothing of it is kept in this
        process (other processes' memos never match a profile that is gone)."""
        self.recorder.flush()  # a record still queued must not land after the erasure
        key, removed, records = self.profiles.forget(customer)
        self.active.tails.forget(key)
        return key, removed, records

    # ------------------------------------------------------------- events
    def track(self, event: Event) -> Outcome:
        return self.ingestion.track(event)

    def track_many(self, events: Iterable[Event | TooManyInMessage],
                   chunk: int = 512) -> TrackSummary:
        return self.ingestion.track_many(events, chunk)

    # ------------------------------------------------------------- delayed actions
    def fire_due(self, limit: int = 256) -> int:
        return self.actions.fire_due(self.active, limit)
