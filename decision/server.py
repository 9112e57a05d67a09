"""The gRPC layer: proto <-> domain, one engine call per RPC, errors -> status codes.

Nothing else lives here. ``create_server`` builds a ready (warm) server bound to an
address and returns it with its port, so tests bind port 0 and talk to a real server;
``serve`` runs one process until a signal, ``serve_workers`` runs N processes on one
port (SO_REUSEPORT) over one LMDB environment.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from decision.catalog import Catalog, Offer
from decision.engine import (
    DecideQuery, Decision, Engine, Identifier, ProfileUpdate,
)
from decision.auth import Authenticator
from decision.campaign import FORMATS, CampaignSpec, run_campaign
from decision.errors import ConfigError, DecisionError, InvalidArgument
from decision.logs import ACCESS
from decision.logs import configure as configure_logs
from decision.metrics import Metrics
from decision.ingest import Event, TooManyInMessage
from decision.layout import ProfileRecord
from decision.settings import Settings, is_loopback
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from decision.triggers import decode as decode_trigger
from decision.wire import OfferEncodings, encode_decision, field_tag, varint

log = logging.getLogger("decision.server")
_CAMPAIGN_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
PRE_ENCODED = ("Decide", "DecideBatch", "ListOffers")  # handlers that return wire bytes
MAX_CACHED_LISTINGS = 256  # ListOffers answers kept per process (channel x placement)
_T_RESPONSES = field_tag(pb.DecideBatchResponse.DESCRIPTOR.fields_by_name["responses"])


_INTERNAL = "internal error (incident {}; details in the server log)"
_note = threading.local()  # what a handler tells the access log (Decide: decision_id)

MAX_DETAILS_BYTES = 1500  # of a status message: it travels percent-encoded in a trailer


def _details(message: str) -> str:
    """``message`` cut to fit gRPC's trailer limit (8 KiB by default): a message that
    echoes a huge or non-ASCII request value would otherwise be dropped by the client,
    which then sees RESOURCE_EXHAUSTED instead of the real status."""
    raw = message.encode()
    if len(raw) <= MAX_DETAILS_BYTES:
        return message
    return (f"{raw[:MAX_DETAILS_BYTES].decode(errors='ignore')}... (message cut, "
            f"{len(raw)} bytes)")


class _Undecodable:
    """Stands for a request message that did not parse (see ``_parser``)."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _parser(message_cls):
    """``message_cls.FromString``, except that bytes which are not a valid message give
    an ``_Undecodable``: the handler answers INVALID_ARGUMENT (grpcio itself would
    answer INTERNAL and log a stack trace for each such request)."""
    parse = message_cls.FromString
    name = message_cls.DESCRIPTOR.full_name

    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(f"request: not a valid {name} message ({exc})")

    return deserialize


def _decoded(messages):
    """The messages of a client stream; an undecodable one ends it: INVALID_ARGUMENT."""
    for n, message in enumerate(messages):
        if message.__class__ is _Undecodable:
            raise InvalidArgument(f"stream message {n}: {message.message}")
        yield message



class Gate:
    """Every DecisionService call passes here, in the handler thread, before any work:

    1. credentials (``decision.auth``): UNAUTHENTICATED / PERMISSION_DENIED;
    2. the caller's deadline: already passed -> DEADLINE_EXCEEDED, no work done;
    3. admission: at most ``max_in_flight`` requests worked on at once, beyond that
       RESOURCE_EXHAUSTED at once (never queued until the client gives up);
    then package errors map to their status (never a stack trace to a client), and
    the latency goes to the metrics and, failures always and successes sampled, the
    access log. One plain function per method, the method -> role table precomputed:
    no gRPC interceptor on the hot path.
    """

    def __init__(self, auth, metrics, max_in_flight: int, access_sample: float):
        self.auth = auth
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.access_sample = access_sample
        self.in_flight = 0
        self._lock = threading.Lock()
        self._last_shed_log = 0.0
        self._access = logging.getLogger(ACCESS)

    def wrap(self, name: str, method):
        """The handler for a unary-reply RPC (unary or client-streaming request)."""
        auth, metrics, lock = self.auth, self.metrics, self._lock
        observe = metrics.observe if metrics is not None else None
        clock = time.perf_counter
        sample = self.access_sample
        log_ok = sample > 0.0
        rnd = random.random

        is_decide = name == "Decide"

        def handler(request, context):
            started = clock()
            client = None
            if is_decide:
                _note.decision_id = None
            if auth is not None:
                client, status, message = auth.check(name, context.invocation_metadata())
                if status is not None:
                    self._finish(name, status, started, client, context, message)
                    context.abort(grpc.StatusCode[status], message)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                if metrics is not None:
                    metrics.shed(name, "deadline")
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"{name}: the deadline passed before the server started it")
            with lock:
                admitted = self.in_flight < self.max_in_flight
                if admitted:
                    self.in_flight += 1
            if not admitted:
                self._shed(name, context)
            code = "OK"
            try:
                if request.__class__ is _Undecodable:  # bytes that are not the message
                    raise InvalidArgument(request.message)
                return method(request, context)
            except DecisionError as exc:
                code, message = exc.status, str(exc)
            except grpc.RpcError:  # the client cancelled (its stream ended): no bug here
                code, message = "CANCELLED", f"{name}: the client cancelled the call"
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("internal error in %s (incident %s)", name, incident)
                code, message = "INTERNAL", _INTERNAL.format(incident)
            finally:
                with lock:
                    self.in_flight -= 1
                if observe is not None:
                    observe(name, code, clock() - started)
                if code == "OK":
                    if log_ok and rnd() < sample:
                        self._log(name, code, started, client, context, "")
            message = _details(message)
            self._log(name, code, started, client, context, message)
            context.abort(grpc.StatusCode[code], message)

        handler.__name__ = name
        return handler

    def check_stream(self, name: str, context):
        """Credentials for a server-streaming RPC (WatchTriggers: bounded on its own,
        never counted against ``max_in_flight``, so streams cannot starve calls)."""
        if self.auth is None:
            return None
        client, status, message = self.auth.check(name, context.invocation_metadata())
        if status is not None:
            self._finish(name, status, time.perf_counter(), client, context, message)
            context.abort(grpc.StatusCode[status], message)
        return client

    def fail_stream(self, name: str, code: str, started: float, client, context,
                    message: str) -> None:
        """End a server-streaming call with ``code``, counted and logged like the
        unary calls' failures."""
        message = _details(message)
        self._finish(name, code, started, client, context, message)
        context.abort(grpc.StatusCode[code], message)

    def _shed(self, name: str, context) -> None:
        if self.metrics is not None:
            self.metrics.shed(name, "in_flight")
        now = time.monotonic()
        if now - self._last_shed_log > 1.0:  # at most one line a second under overload
            self._last_shed_log = now
            log.warning("overloaded: shedding requests (%d in flight, --max-in-flight %d)",
                        self.in_flight, self.max_in_flight)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"{name}: server overloaded, {self.max_in_flight} requests already in "
                      "flight on this process (--max-in-flight); retry with backoff")

    def _finish(self, name, code, started, client, context, message) -> None:
        if self.metrics is not None:
            self.metrics.observe(name, code, time.perf_counter() - started)
        self._log(name, code, started, client, context, message)

    def _log(self, name, code, started, client, context, message) -> None:
        fields = {"method": name, "code": code,
                  "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                  "client": client.name if client is not None else None,
                  "peer": context.peer()}
        if name == "Decide":
            fields["decision_id"] = getattr(_note, "decision_id", None)
            _note.decision_id = None
        if message:
            fields["error"] = message
        self._access.log(logging.INFO if code == "OK" else logging.WARNING,
                         "%s %s", name, code, extra={"fields": fields})


# ------------------------------------------------------------------ conversions
def _identifier(msg: pb.Identifier) -> Identifier:
    return Identifier(msg.kind, msg.value)


def _event(msg: pb.Event) -> Event:
    return Event(type=msg.type, customer=_identifier(msg.customer), event_id=msg.event_id,
                 timestamp_ms=msg.timestamp_ms, channel=msg.channel,
                 attributes=_values(msg.attributes), offer_id=msg.offer_id,
                 decision_id=msg.decision_id)


def _query(request: pb.DecideRequest) -> DecideQuery:
    return DecideQuery(
        customer=_identifier(request.customer), channel=request.channel,
        placement=request.placement,
        limit=request.limit if request.HasField("limit") else None,
        context=_values(request.context),
        explain=request.explain,
    )


def _values(entries) -> dict:
    """A map<string, Value> as a dict of plain values (unset: None). By key, then
    item: upb builds (key, Value) pairs for ``items()`` at about twice the cost."""
    out = {}
    for key in entries:
        msg = entries[key]
        which = msg.WhichOneof("kind")
        out[key] = None if which is None else getattr(msg, which)
    return out


def _to_value(v) -> pb.Value:
    if isinstance(v, bool):
        return pb.Value(bool_value=v)
    if isinstance(v, str):
        return pb.Value(string_value=v)
    return pb.Value(number_value=v)


def decision_message(d: Decision) -> pb.DecideResponse:
    """The DecideResponse as a message tree (reference for ``decision.wire``; clients
    in-process)."""
    return pb.DecideResponse(
        decision_id=d.decision_id, cold_start=d.cold_start, eligible_count=d.eligible_count,
        catalog_version=d.catalog_version, decided_at_ms=d.decided_at_ms,
        deliver_at_ms=d.deliver_at_ms, timing=d.timing,
        removed=[pb.RemovedOffer(offer_id=o.id, reason=pb.Reason(code=r.code, detail=r.detail))
                 for o, r in d.removed_offers],
        offers=[pb.DecidedOffer(
            offer_id=r.offer.id, name=r.offer.name, rank=r.rank, score=r.score,
            propensity=r.propensity, value=r.offer.value, lever=r.offer.lever,
            creative_json=r.offer.creative_json,
            reasons=[pb.Reason(code=x.code, detail=x.detail, weight=x.weight)
                     for x in r.reasons],
        ) for r in d.offers],
    )


def _trigger(t, catalog: Catalog) -> pb.Trigger:
    msg = pb.Trigger(cursor=t.cursor, kind=t.kind, name=t.name,
                     profile_key=f"{t.profile_key:016x}",
                     identifiers=[pb.Identifier(kind=k, value=v) for k, v in t.identifiers],
                     at_ms=t.at_ms, event_id=t.event_id)
    d = t.decision
    if d is not None:
        msg.channel = d["channel"]
        msg.decision.CopyFrom(pb.DecideResponse(
            decision_id=d["id"], decided_at_ms=t.at_ms, deliver_at_ms=d["deliver_at_ms"],
            timing=d["timing"], catalog_version=d.get("catalog", catalog.version),
            eligible_count=d.get("eligible", len(d["offers"])),
            offers=[_triggered_offer(catalog, rank, *o)
                    for rank, o in enumerate(d["offers"], 1)]))
    return msg


def _triggered_offer(catalog: Catalog, rank: int, offer_id: str, score: float,
                     propensity: float) -> pb.DecidedOffer:
    """An offer an action decided, described by the active catalog (when it still has
    the offer)."""
    msg = pb.DecidedOffer(offer_id=offer_id, rank=rank, score=score, propensity=propensity)
    index = catalog.offer_index.get(offer_id)
    if index is not None:
        o = catalog.offers[index]
        msg.name, msg.value, msg.lever, msg.creative_json = (o.name, o.value, o.lever,
                                                             o.creative_json)
    return msg


def _profile(p: ProfileRecord, feature_names: tuple[str, ...]) -> pb.Profile:
    return pb.Profile(
        profile_key=f"{p.key:016x}",
        identifiers=[pb.Identifier(kind=k, value=v) for k, v in p.identifiers],
        attributes={k: _to_value(v) for k, v in p.attributes.items()},
        features={n: float(v) for n, v in zip(feature_names, p.features.tolist())},
        counters=p.counters, segments=p.segments, created_at_ms=p.created_at_ms,
        updated_at_ms=p.updated_at_ms,
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000) if abs(seconds) != float("inf") else 0


def _offer(o: Offer) -> pb.OfferInfo:
    return pb.OfferInfo(
        offer_id=o.id, name=o.name, channels=o.channels, placements=o.placements,
        value=o.value, lever=o.lever, rule=o.rule, valid_from_ms=_ms(o.valid_from),
        valid_until_ms=_ms(o.valid_until), creative_json=o.creative_json,
    )


def _catalog_info(c: Catalog) -> pb.CatalogInfo:
    return pb.CatalogInfo(version=c.version, offer_count=len(c.offers), channels=c.channels,
                          placements=c.placements, loaded_at_ms=c.loaded_at_ms)


# ------------------------------------------------------------------ servicer
class DecisionServicer(pb_grpc.DecisionServiceServicer):
    """Decide answers with pre-encoded bytes (``decision.wire``); see ``add_to_server``."""

    def __init__(self, engine: Engine, max_watchers: int = 4, gate: Gate | None = None):
        self.engine = engine
        self.gate = gate or Gate(None, None, 1 << 30, 0.0)
        self.metrics = self.gate.metrics
        self.max_watchers = max_watchers
        self.closing = threading.Event()  # set at shutdown: watchers end their streams
        self._watchers = 0
        self._watchers_lock = threading.Lock()
        self._encodings: dict[Catalog, OfferEncodings] = {}
        self._listings: dict[tuple, bytes] = {}  # (catalog, channel, placement) -> reply
        engine.on_catalog(self._prepare_encodings)

    def _prepare_encodings(self, catalog: Catalog) -> None:
        """Runs before ``catalog`` is swapped in: keep the active catalog's encodings
        for the requests still in flight on it."""
        active = self.engine.catalog
        kept = {c: e for c, e in self._encodings.items() if c is active}
        self._encodings = {**kept, catalog: OfferEncodings(catalog)}
        self._listings = {}  # ListOffers answers of older catalogs go

    def Decide(self, request: pb.DecideRequest, context) -> bytes:
        decision = self.engine.decide(_query(request))
        _note.decision_id = decision.decision_id
        if self.metrics is not None:
            offers = decision.prepared.catalog.offers
            self.metrics.decided(request.channel, [offers[i].id for i in decision.offer_index])
        return encode_decision(decision, self._encodings_for(decision))

    def _encodings_for(self, decision: Decision) -> OfferEncodings:
        encodings = self._encodings.get(decision.prepared.catalog)
        if encodings is None:  # a request that outlived two reloads: rare, still right
            encodings = OfferEncodings(decision.prepared.catalog)
        return encodings

    def DecideBatch(self, request: pb.DecideBatchRequest, context) -> bytes:
        queries = [_query(r) for r in request.requests]
        decisions = self.engine.decide_many(queries)
        if self.metrics is not None:
            for query, d in zip(queries, decisions):
                offers = d.prepared.catalog.offers
                self.metrics.decided(query.channel, [offers[i].id for i in d.offer_index])
        parts = []
        for decision in decisions:
            encoded = encode_decision(decision, self._encodings_for(decision))
            parts += (_T_RESPONSES, varint(len(encoded)), encoded)
        return b"".join(parts)

    def GetProfile(self, request: pb.GetProfileRequest, context) -> pb.Profile:
        record = self.engine.get_profile(_identifier(request.customer))
        return _profile(record, self.engine.catalog.feature_names)

    def UpsertProfile(self, request: pb.UpsertProfileRequest, context) -> pb.Profile:
        record = self.engine.upsert_profile(ProfileUpdate(
            identifiers=tuple(_identifier(i) for i in request.identifiers),
            attributes=_values(request.attributes),
            features=dict(request.features),
        ))
        return _profile(record, self.engine.catalog.feature_names)

    def ListOffers(self, request: pb.ListOffersRequest, context) -> bytes:
        catalog, offers = self.engine.list_offers(request.channel, request.placement)
        cache = self._listings  # per catalog version: the answers do not change
        key = (catalog, request.channel, request.placement)
        reply = cache.get(key)
        if reply is None:
            reply = pb.ListOffersResponse(offers=[_offer(o) for o in offers],
                                          catalog_version=catalog.version).SerializeToString()
            if len(cache) >= MAX_CACHED_LISTINGS:
                cache.clear()
            cache[key] = reply
        return reply

    def Track(self, request: pb.Event, context) -> pb.TrackResponse:
        try:
            outcome = self.engine.track(_event(request))
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
            _event(e) if len(batch.events) <= limit else
            TooManyInMessage(len(batch.events), limit)
            for batch in _decoded(request_iterator) for e in batch.events)
        if self.metrics is not None:
            self.metrics.events_applied.inc(summary.applied)
            self.metrics.events_duplicate.inc(summary.duplicates)
            self.metrics.events_rejected.inc(summary.rejected_count)
        return pb.TrackSummary(
            received=summary.received, applied=summary.applied,
            duplicates=summary.duplicates, rejected_count=summary.rejected_count,
            rejected=[pb.Rejection(index=i, event_id=eid, message=_details(m))
                      for i, eid, m in summary.rejected])

    def Identify(self, request: pb.IdentifyRequest, context) -> pb.IdentifyResponse:
        record, merged = self.engine.identify(tuple(_identifier(i) for i in request.identifiers))
        return pb.IdentifyResponse(profile=_profile(record, self.engine.catalog.feature_names),
                                   merged_profile_keys=[f"{k:016x}" for k in merged])

    def ForgetCustomer(self, request: pb.ForgetCustomerRequest,
                       context) -> pb.ForgetCustomerResponse:
        key, identifiers, events = self.engine.forget(_identifier(request.customer))
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
        if request.__class__ is _Undecodable:
            self.gate.fail_stream("WatchTriggers", "INVALID_ARGUMENT", started, client, context,
                                  request.message)
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
        except DecisionError as exc:
            self.gate.fail_stream("WatchTriggers", exc.status, started, client, context,
                                  str(exc))
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("internal error in WatchTriggers (incident %s)", incident)
            self.gate.fail_stream("WatchTriggers", "INTERNAL", started, client, context,
                                  _INTERNAL.format(incident))
        finally:
            with self._watchers_lock:
                self._watchers -= 1

    def _follow_triggers(self, request: pb.WatchTriggersRequest, context):
        store = self.engine.store
        cursor = store.trigger_log_end() if request.from_end else max(1, request.from_cursor)
        while context.is_active() and not self.closing.is_set():
            batch = store.triggers_from(cursor, TRIGGER_BATCH)
            for position, value in batch:
                t = decode_trigger(position, value)
                yield _trigger(t, self.engine.catalog)
                cursor = position + 1
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
            context=_values(request.context))
        path = self.engine.settings.campaign_dir / f"{request.name}.{fmt}"
        s = run_campaign(self.engine, spec, path, fmt, cancel=self.closing)
        return pb.CampaignSummary(
            path=str(s.path), members=s.members, decided=s.decided, rows=s.rows,
            skipped=s.skipped, seconds=s.seconds, catalog_version=s.catalog_version,
            decided_at_ms=s.decided_at_ms, campaign_id=s.campaign_id)

    def ReloadCatalog(self, request: pb.ReloadCatalogRequest, context) -> pb.CatalogInfo:
        return _catalog_info(self.engine.reload_catalog())


# ------------------------------------------------------------------ server
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
            request_deserializer=_parser(request_cls),
            response_serializer=(bytes if method.name in PRE_ENCODED
                                 else reply_cls.SerializeToString),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


HEADROOM_RPCS = 8  # threads beyond the request and watcher bounds: health, reflection, sheds


def max_watchers(settings: Settings) -> int:
    """WatchTriggers subscribers per process (each holds a thread while connected)."""
    return max(1, settings.threads // 2)


def grpc_server(settings: Settings, reuse_port: bool) -> grpc.Server:
    """A grpc.Server with the project's transport settings (shared with the floor).

    Nothing waits in the thread pool's queue: it has a thread for every call gRPC
    admits (``maximum_concurrent_rpcs``, beyond which gRPC itself answers
    RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded", not counted in the metrics),
    that is ``max_in_flight`` requests, the trigger subscribers and as many threads
    again (at least 8) of headroom for health checks and for answering the calls
    ``Gate`` sheds, with its message and its metric. So an overloaded process answers
    at once, and a request that is admitted starts at once.
    """
    size = settings.limits.max_message_bytes
    ceiling = (settings.max_in_flight + max_watchers(settings)
               + max(HEADROOM_RPCS, settings.max_in_flight))
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=ceiling, thread_name_prefix="decision-rpc"),
        maximum_concurrent_rpcs=ceiling,
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ],
    )


CATALOG_SYNC_SECONDS = 1.0
DRAIN_HANDLERS_S = 30.0  # how long stop waits for handlers still running after the grace
SCHEDULER_POLL_S = 0.1  # how often each process looks for delayed actions come due
TRIGGER_BATCH = 256  # log entries read per transaction by a watcher
TRIGGER_POLL_S = 0.005  # how often a watcher looks for other processes' triggers


@dataclass
class Running:
    server: grpc.Server
    port: int
    engine: Engine
    health: health.HealthServicer
    stopping: threading.Event
    servicer: DecisionServicer
    follower: threading.Thread | None = None
    scheduler: threading.Thread | None = None
    metrics: Metrics | None = None
    metrics_port: int | None = None

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop serving (draining requests in flight for ``grace`` seconds) and close
        the store once nothing can use it any more."""
        self.stopping.set()
        self.servicer.closing.set()  # trigger streams end now instead of at the grace
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        # gRPC stops waiting at the grace, not its handler threads: the store stays open
        # until they are done (a campaign gives up between chunks once closing is set)
        deadline = time.monotonic() + DRAIN_HANDLERS_S
        while self.servicer.gate.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.servicer.gate.in_flight > 0:
            log.warning("%d requests still running after %.0f s; closing the store anyway",
                        self.servicer.gate.in_flight, DRAIN_HANDLERS_S)
        if self.metrics is not None:
            self.metrics.close()
        for thread in (self.follower, self.scheduler):
            if thread is not None:
                thread.join()
        with self.engine.reload_lock:  # a SIGHUP reload may still be compiling
            self.engine.close()  # queued events are committed first


def _follow_catalog(running: Running) -> None:
    """Housekeeping: stay on the catalog version published in the shared store, and
    release reader slots left by processes that died (a killed worker)."""
    while not running.stopping.wait(CATALOG_SYNC_SECONDS):
        try:
            running.engine.store.clear_stale_readers()
            catalog = running.engine.sync_catalog()
            if catalog is not None:
                log.info("catalog %s loaded (published by another process)", catalog.version)
        except DecisionError as exc:
            log.error("catalog published by another process not loaded here; "
                      "still serving %s: %s", running.engine.catalog.version, exc)
        except Exception:  # keep following whatever happened; the log has the trace
            log.exception("catalog follower: unexpected error")


def _run_scheduler(running: Running) -> None:
    """Fire delayed actions as they come due (every process does; each fires once)."""
    while not running.stopping.wait(SCHEDULER_POLL_S):
        try:
            running.engine.fire_due()
        except Exception:  # keep firing whatever happened; the log has the trace
            log.exception("scheduler: unexpected error")


def create_server(settings: Settings, engine: Engine | None = None,
                  reuse_port: bool = False) -> Running:
    """Load the catalog, open the store, warm the kernels, bind; not yet started.

    The health service answers NOT_SERVING until ``start`` has run.
    """
    auth = Authenticator.load(settings.credentials) if settings.credentials else None
    credentials = _server_credentials(settings)
    engine = engine or Engine(settings)
    engine.warm()
    server = grpc_server(settings, reuse_port)
    gate = Gate(auth, None, settings.max_in_flight, settings.access_log_sample)
    if settings.metrics_address is not None:
        gate.metrics = Metrics(engine, lambda: gate.in_flight)
    servicer = DecisionServicer(engine, max_watchers=max_watchers(settings), gate=gate)
    add_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if credentials is None:
        port = server.add_insecure_port(settings.address)
    else:
        port = server.add_secure_port(settings.address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address} (address in use?)")
    return Running(server, port, engine, health_servicer, threading.Event(), servicer,
                   metrics=gate.metrics)


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the PEM files (mutual TLS with a client CA), or None: plaintext."""
    if settings.tls_cert is None:
        return None

    def read(flag: str, path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: {exc.strerror}") from None

    key, cert = read("--tls-key", settings.tls_key), read("--tls-cert", settings.tls_cert)
    ca = read("--tls-client-ca", settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def start(running: Running) -> None:
    """Start serving (and the Prometheus endpoint if configured); health turns
    SERVING last, once the kernels are warm and the catalog loaded."""
    if running.metrics is not None:
        running.metrics_port = running.metrics.serve(running.engine.settings.metrics_address)
    running.server.start()
    running.follower = threading.Thread(target=_follow_catalog, args=(running,),
                                        name="decision-catalog", daemon=True)
    running.follower.start()
    running.scheduler = threading.Thread(target=_run_scheduler, args=(running,),
                                         name="decision-scheduler", daemon=True)
    running.scheduler.start()
    for name in ("", SERVICE_NAME):
        running.health.set(name, health_pb2.HealthCheckResponse.SERVING)


def serve(settings: Settings, reuse_port: bool = False, ready=None) -> None:
    """Run one server process until SIGTERM/SIGINT; SIGHUP reloads the catalog."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is in place
    running = create_server(settings, reuse_port=reuse_port)
    start(running)
    host = settings.address.rpartition(":")[0]
    catalog = running.engine.catalog
    security = ("mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert
                else "plaintext") + (", tokens" if settings.credentials else
                                     ", no credentials")
    print(f"decision: serving on {host}:{running.port} (pid {os.getpid()}, catalog "
          f"{catalog.version}, {len(catalog.offers)} offers, {running.engine.store.count()} "
          f"profiles in {settings.data_dir}; {security})", flush=True)
    if running.metrics_port is not None:
        print(f"decision: metrics on http://{settings.metrics_address.rpartition(':')[0]}:"
              f"{running.metrics_port}/metrics", flush=True)
    if settings.credentials and not settings.tls_cert and not is_loopback(host):
        log.warning("tokens are sent in clear text: serve TLS (--tls-cert, --tls-key) on "
                    "a non-loopback address")
    stopping = threading.Event()

    def on_stop(signum, frame):
        stopping.set()

    def on_reload(signum, frame):
        threading.Thread(target=_reload, args=(running.engine,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    if ready is not None:
        ready(running)
    stopping.wait()
    log.info("shutting down: draining requests in flight")
    running.stop(grace=5.0)


def _reload(engine: Engine) -> None:
    try:
        catalog = engine.reload_catalog()
        log.info("catalog reloaded: %s (%d offers)", catalog.version, len(catalog.offers))
    except DecisionError as exc:
        log.error("catalog reload failed, the previous catalog keeps serving: %s", exc)


def _worker(settings: Settings, slot: int) -> None:
    configure_logs(settings.log_format)
    if settings.metrics_address is not None:  # worker i: metrics port + i
        host, _, port = settings.metrics_address.rpartition(":")
        settings = dataclasses.replace(settings, metrics_address=f"{host}:{int(port) + slot}")
    serve(settings, reuse_port=True)


RESTART_BACKOFF_S = (1.0, 30.0)  # first and largest delay before restarting a worker
HEALTHY_AFTER_S = 10.0  # a worker that lived this long restarts at once


def serve_workers(settings: Settings) -> None:
    """Run ``settings.workers`` processes sharing the port; restart any that dies.

    The catalog and the store are checked here first, so a bad configuration stops
    the command with its message instead of crash-looping workers, and the kernels
    are compiled before any worker starts; a worker that dies young is restarted
    after a growing delay.
    """
    if settings.workers == 1:
        serve(settings)
        return
    # Validate the catalog and the store schema (or raise), and compile the kernels
    # into numba's on-disk cache here, once: processes that add to that cache at the
    # same moment can corrupt it, so the workers must find it complete.
    engine = Engine(settings)
    engine.warm(batch=True)
    engine.close()
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    delay: dict[int, float] = {}
    due: dict[int, float] = {}
    stopping = threading.Event()

    def spawn(slot: int) -> None:
        p = ctx.Process(target=_worker, args=(settings, slot), name=f"decision-worker-{slot}")
        p.start()
        procs[slot], started[slot] = p, time.monotonic()

    def on_signal(signum, frame):
        if signum != signal.SIGHUP:
            stopping.set()
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signum)  # workers stop on TERM/INT and reload on HUP

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by workers until ready
    for slot in range(settings.workers):
        spawn(slot)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    while not stopping.is_set():
        multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
        now = time.monotonic()
        for slot, p in list(procs.items()):
            if p.is_alive() or stopping.is_set():
                continue
            if slot not in due:
                young = now - started[slot] < HEALTHY_AFTER_S
                delay[slot] = (min(RESTART_BACKOFF_S[1], delay.get(slot, 0) * 2
                                   or RESTART_BACKOFF_S[0]) if young else 0.0)
                due[slot] = now + delay[slot]
                log.warning("worker %s (pid %s) exited with %s; restarting in %.0f s",
                            slot, p.pid, p.exitcode, delay[slot])
            if now >= due[slot]:
                del due[slot]
                spawn(slot)
    for p in procs.values():  # again: a worker spawned as the signal came missed it
        if p.is_alive():
            p.terminate()
    for p in procs.values():
        p.join(timeout=10)
        if p.is_alive():  # never leave a worker behind the supervisor
            log.warning("worker pid %s did not stop in 10 s; killing it", p.pid)
            p.kill()
            p.join()
    sys.exit(0)
