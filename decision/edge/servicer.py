"""The servicer: one engine call per RPC, between ``decision.edge.wire``'s conversions.

Each method turns its request into the core's values (``wire``), makes one call on
the ``Engine`` and turns the result into the reply; errors it raises become statuses
in the ``Gate`` (``decision.edge.gate``). ``Decide``, ``DecideBatch`` and
``ListOffers`` reply with bytes already serialised (``add_to_server`` registers them
so).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import grpc

from decision.config.catalog import Catalog
from decision.core.engine import Engine
from decision.core.ingest import TooManyInMessage
from decision.core.inspire import FORMATS, CampaignSpec, run_campaign
from decision.core.profiles import ProfileUpdate
from decision.core.respond import Decision
from decision.edge import wire
from decision.edge.gate import Gate, Undecodable, decoded, details, note, parser
from decision.errors import DecisionError, InvalidArgument
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

log = logging.getLogger("decision.edge.servicer")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
PRE_ENCODED = ("Decide", "DecideBatch", "ListOffers")  # handlers that return wire bytes
MAX_CACHED_LISTINGS = 256  # ListOffers answers kept per process (channel x placement)
TRIGGER_BATCH = 256  # log entries read per transaction by a watcher
TRIGGER_POLL_S = 0.005  # how often a watcher looks for other processes' triggers
CURSOR_METADATA = "decision-cursor"  # WatchTriggers' initial metadata: its first cursor
_CAMPAIGN_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$")


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    """Decide answers with pre-encoded bytes (``decision.edge.wire``); see ``add_to_server``."""

    def __init__(self, engine: Engine, max_watchers: int = 4, gate: Gate | None = None):
        self.engine = engine
        self.gate = gate or Gate(None, None, 1 << 30, 0.0)
        self.metrics = self.gate.metrics
        self.max_watchers = max_watchers
        self.closing = threading.Event()  # set at shutdown: watchers end their streams
        self._watchers = 0
        self._watchers_lock = threading.Lock()
        self._encodings: dict[Catalog, wire.OfferEncodings] = {}
        self._listings: dict[tuple, bytes] = {}  # (catalog, channel, placement) -> reply
        engine.on_catalog(self._prepare_encodings)

    def _prepare_encodings(self, catalog: Catalog) -> None:
        """Runs before ``catalog`` is swapped in: keep the active catalog's encodings
        for the requests still in flight on it."""
        active = self.engine.catalog
        kept = {c: e for c, e in self._encodings.items() if c is active}
        self._encodings = {**kept, catalog: wire.OfferEncodings(catalog)}
        self._listings = {}  # ListOffers answers of older catalogs go

    def Decide(self, request: pb.DecideRequest, context) -> bytes:
        decision = self.engine.decide(wire.query(request))
        note.decision_id = decision.decision_id
        if self.metrics is not None:
            offers = decision.prepared.catalog.offers
            self.metrics.decided(request.channel, [offers[i].id for i in decision.offer_index])
        return wire.encode_decision(decision, self._encodings_for(decision))

    def _encodings_for(self, decision: Decision) -> wire.OfferEncodings:
        encodings = self._encodings.get(decision.prepared.catalog)
        if encodings is None:  # a request that outlived two reloads: rare, still right
            encodings = wire.OfferEncodings(decision.prepared.catalog)
        return encodings

    def DecideBatch(self, request: pb.DecideBatchRequest, context) -> bytes:
        queries = [wire.query(r) for r in request.requests]
        decisions = self.engine.decide_many(queries)
        if self.metrics is not None:
            for query, d in zip(queries, decisions):
                offers = d.prepared.catalog.offers
                self.metrics.decided(query.channel, [offers[i].id for i in d.offer_index])
        return wire.encode_batch([wire.encode_decision(d, self._encodings_for(d))
                                  for d in decisions])

    def GetProfile(self, request: pb.GetProfileRequest, context) -> pb.Profile:
        record = self.engine.get_profile(wire.identifier(request.customer))
        return wire.profile(record, self.engine.catalog.feature_names)

    def UpsertProfile(self, request: pb.UpsertProfileRequest, context) -> pb.Profile:
        record = self.engine.upsert_profile(ProfileUpdate(
            identifiers=tuple(wire.identifier(i) for i in request.identifiers),
            attributes=wire.values(request.attributes),
            features=dict(request.features),
        ))
        return wire.profile(record, self.engine.catalog.feature_names)

    def ListOffers(self, request: pb.ListOffersRequest, context) -> bytes:
        catalog, offers = self.engine.list_offers(request.channel, request.placement)
        cache = self._listings  # per catalog version: the answers do not change
        key = (catalog, request.channel, request.placement)
        reply = cache.get(key)
        if reply is None:
            reply = pb.ListOffersResponse(offers=[wire.offer_info(o) for o in offers],
                                          catalog_version=catalog.version).SerializeToString()
            if len(cache) >= MAX_CACHED_LISTINGS:
                cache.clear()
            cache[key] = reply
        return reply

    def Track(self, request: pb.Event, context) -> pb.TrackResponse:
        try:
            outcome = self.engine.track(wire.event(request))
        except InvalidArgument:
            if self.metrics is not None:
                self.metrics.events_rejected.inc()
            raise
        if self.metrics is not None:
            (self.metrics.events_duplicate if outcome.duplicate
             else self.metrics.events_applied).inc()
        return pb.TrackResponse(profile_key=f"{outcome.profile_key:016x}",
                                duplicate=outcome.duplicate)

    def TrackStream(self, request_iterator, context) -> pb.TrackSummary:
        limit = self.engine.limits.max_events_per_message
        summary = self.engine.track_many(
            wire.event(e) if len(batch.events) <= limit else
            TooManyInMessage(len(batch.events), limit)
            for batch in decoded(request_iterator) for e in batch.events)
        if self.metrics is not None:
            self.metrics.events_applied.inc(summary.applied)
            self.metrics.events_duplicate.inc(summary.duplicates)
            self.metrics.events_rejected.inc(summary.rejected_count)
        return pb.TrackSummary(
            received=summary.received, applied=summary.applied,
            duplicates=summary.duplicates, rejected_count=summary.rejected_count,
            rejected=[pb.Rejection(index=i, event_id=eid, message=details(m))
                      for i, eid, m in summary.rejected])

    def Identify(self, request: pb.IdentifyRequest, context) -> pb.IdentifyResponse:
        record, merged = self.engine.identify(
            tuple(wire.identifier(i) for i in request.identifiers))
        return pb.IdentifyResponse(
            profile=wire.profile(record, self.engine.catalog.feature_names),
            merged_profile_keys=[f"{k:016x}" for k in merged])

    def ForgetCustomer(self, request: pb.ForgetCustomerRequest,
                       context) -> pb.ForgetCustomerResponse:
        key, identifiers, events = self.engine.forget(wire.identifier(request.customer))
        forget_in_export(self.engine.store, self.engine.settings.data_dir / "exports")
        return pb.ForgetCustomerResponse(profile_key=f"{key:016x}",
                                         identifiers_removed=identifiers,
                                         events_removed=events)

    def WatchTriggers(self, request: pb.WatchTriggersRequest, context):
        """Replay the trigger log from the cursor, then follow it until cancelled.

        Each subscriber holds one handler thread while connected, so at most half of
        them may watch (RESOURCE_EXHAUSTED beyond: raise --threads). They are not
        counted against --max-in-flight: subscribers cannot starve other calls."""
        started = time.perf_counter()
        client = self.gate.check_stream("WatchTriggers", context)
        if request.__class__ is Undecodable:
            self.gate.fail_stream("WatchTriggers", InvalidArgument(request.message), started,
                                  client, context)
        with self._watchers_lock:
            if self._watchers >= self.max_watchers:
                if self.metrics is not None:
                    self.metrics.shed("WatchTriggers", "watchers")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"WatchTriggers: {self._watchers} subscribers already on this "
                              f"server process, at most {self.max_watchers} (half of "
                              "--threads; raise --threads or use another process)")
            self._watchers += 1
        try:
            yield from self._follow_triggers(request, context)
        except Exception as exc:
            self.gate.fail_stream("WatchTriggers", exc, started, client, context)
        finally:
            with self._watchers_lock:
                self._watchers -= 1

    def _follow_triggers(self, request: pb.WatchTriggersRequest, context):
        store = self.engine.store
        cursor = store.trigger_log_end() if request.from_end else max(1, request.from_cursor)
        # the sign that the stream is live: every trigger from `cursor` on reaches it
        # (a from_end client that waits for this before acting misses nothing)
        try:
            context.send_initial_metadata(((CURSOR_METADATA, str(cursor)),))
        except grpc.RpcError:
            return  # the client went away already
        while context.is_active() and not self.closing.is_set():
            batch = store.triggers_from(cursor, TRIGGER_BATCH)
            for t in batch:
                yield wire.trigger(t, self.engine.catalog)
                cursor = t.cursor + 1
            if not batch:  # woken by a commit here; another process's is seen by polling
                store.wait_for_commit(TRIGGER_POLL_S)

    def RunCampaign(self, request: pb.CampaignRequest, context) -> pb.CampaignSummary:
        if not _CAMPAIGN_NAME.match(request.name):
            raise InvalidArgument("name: the file's name, 1-64 letters, digits, '_', '-' or "
                                  f"'.' (not starting with '.'), got {request.name!r}")
        fmt = request.format or "csv"
        if fmt not in FORMATS:
            raise InvalidArgument(f"format: {', '.join(FORMATS)}, got {fmt!r}")
        spec = CampaignSpec(
            segment=request.segment, channel=request.channel, placement=request.placement,
            limit=request.limit if request.HasField("limit") else 1,
            context=wire.values(request.context))
        path = self.engine.settings.campaign_dir / f"{request.name}.{fmt}"
        s = run_campaign(self.engine, spec, path, fmt, cancel=self.closing)
        return pb.CampaignSummary(
            path=str(s.path), members=s.members, decided=s.decided, rows=s.rows,
            skipped=s.skipped, seconds=s.seconds, catalog_version=s.catalog_version,
            decided_at_ms=s.decided_at_ms, campaign_id=s.campaign_id)

    def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        return wire.model_info(self.engine.model_insight(request.offer_id, request.channel,
                                                         request.top_features))

    def GetDecisionRecords(self, request: pb.DecisionRecordsRequest, context):
        """One decision's record, or a time range's, oldest first (a stream)."""
        started = time.perf_counter()
        client = self.gate.check_stream("GetDecisionRecords", context)
        try:
            if request.__class__ is Undecodable:
                raise InvalidArgument(request.message)
            records = self.engine.decision_records(request.decision_id, request.from_ms,
                                                   request.to_ms, request.limit or 1000)
            names = list(self.engine.catalog.feature_names)
            for record in records:
                yield wire.decision_record(record, names)
        except Exception as exc:
            self.gate.fail_stream("GetDecisionRecords", exc, started, client, context)

    def GetReport(self, request: pb.ReportRequest, context) -> pb.ReportReply:
        """``decision report`` over the server's own export, brought up to date first."""
        from decision.analytics import report as rep
        from decision.analytics.export import ExportError, export

        now_ms = int(time.time() * 1000)
        query = rep.ReportRequest(
            request.from_ms, request.to_ms or now_ms + 1,
            tuple(request.dimensions) or rep.DIMENSIONS,
            request.lookback_ms or rep.ReportRequest.lookback_ms,
            request.half_life_ms or rep.ReportRequest.half_life_ms,
            request.label or "click", request.attribution)
        try:
            rep.check(query)
            directory = self.engine.settings.data_dir / "exports"
            export(self.engine.store, directory)
            out = rep.report(directory, query)
        except ExportError as exc:
            raise InvalidArgument(str(exc)) from None
        charts = {}
        if request.charts:
            from decision.analytics.charts import write_all

            with tempfile.TemporaryDirectory() as tmp:
                charts = {name: path.read_bytes()
                          for name, path in write_all(out, Path(tmp)).items()}
        return pb.ReportReply(json=json.dumps(out), charts=charts)

    def ReloadCatalog(self, request: pb.ReloadCatalogRequest, context) -> pb.CatalogInfo:
        """A catalog that fails keeps the old one serving. The client's message names
        the catalog file (and the store) by name only, not where the server keeps them;
        the server log has the full paths."""
        try:
            return wire.catalog_info(self.engine.reload_catalog())
        except DecisionError as exc:
            log.error("ReloadCatalog failed, the previous catalog keeps serving: %s", exc)
            settings = self.engine.settings
            raise type(exc)(without_paths(str(exc), settings.catalog_path,
                                          settings.data_dir)) from None


def forget_in_export(store, directory: Path) -> None:
    """The Parquet export the server manages forgets an erased customer too, before
    ``ForgetCustomer`` answers (``decision.analytics.export``); without an export, the
    erasure's note to it is dropped at once. A rewrite that fails leaves the note, which
    the next export applies: the erasure itself is committed, so the call answers."""
    if (directory / "state.json").exists():
        from decision.analytics.export import apply_erasures

        try:
            apply_erasures(store, directory)
        except Exception:  # the erasure is committed; its note stays for the next export
            log.exception("ForgetCustomer: the export in %s keeps the customer's rows until "
                          "the next decision export applies the erasure", directory.name)
    else:
        store.drop_erasures([entry for entry, _, _ in store.pending_erasures()])


def without_paths(message: str, *paths) -> str:
    """``message`` with each of ``paths`` (as given, absolute or resolved) replaced by
    its last component: what a client may see of the server's files."""
    forms = {}
    for path in paths:
        path = Path(path)
        name = path.name or path.resolve().name
        for form in (str(path), str(path.absolute()), str(path.resolve())):
            if os.sep in form and name:  # "catalog.toml" or "." alone: nothing to hide
                forms[form] = name
    for form in sorted(forms, key=len, reverse=True):  # /a/b/c.toml before /a/b
        message = message.replace(form, forms[form])
    return message


def add_to_server(servicer: DecisionServicer, server: grpc.Server) -> None:
    """Register the service like the generated ``add_DecisionServiceServicer_to_server``,
    except that Decide's reply is already serialised (bytes pass through)."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["DecisionService"].methods:
        request_cls = getattr(pb, method.input_type.name)
        reply_cls = getattr(pb, method.output_type.name)
        make = (grpc.stream_unary_rpc_method_handler if method.client_streaming
                else grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        function = getattr(servicer, method.name)
        if not method.server_streaming:
            function = servicer.gate.wrap(method.name, function)
        handlers[method.name] = make(
            function,
            request_deserializer=parser(request_cls),
            response_serializer=(bytes if method.name in PRE_ENCODED
                                 else reply_cls.SerializeToString),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
