"""The gRPC layer: proto <-> domain, one engine call per RPC, errors -> status codes.

Nothing else lives here. ``create_server`` builds a ready (warm) server bound to an
address and returns it with its port, so tests bind port 0 and talk to a real server;
``serve`` runs one process until a signal, ``serve_workers`` runs N processes on one
port (SO_REUSEPORT) over one LMDB environment.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
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
from decision.errors import DecisionError, InvalidArgument
from decision.ingest import Event, TooManyInMessage
from decision.layout import ProfileRecord
from decision.settings import Settings
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from decision.triggers import decode as decode_trigger
from decision.wire import OfferEncodings, encode_decision

log = logging.getLogger("decision.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name


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


def _rpc(method):
    """Map package errors to their status; never send a stack trace to a client."""

    @functools.wraps(method)
    def handler(self, request, context):
        if request.__class__ is _Undecodable:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(request.message))
        try:
            return method(self, request, context)
        except DecisionError as exc:
            context.abort(grpc.StatusCode[exc.status], _details(str(exc)))
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("internal error in %s (incident %s)", method.__name__, incident)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"internal error (incident {incident}; details in the server log)")

    return handler


# ------------------------------------------------------------------ conversions
def _identifier(msg: pb.Identifier) -> Identifier:
    return Identifier(msg.kind, msg.value)


def _event(msg: pb.Event) -> Event:
    return Event(type=msg.type, customer=_identifier(msg.customer), event_id=msg.event_id,
                 timestamp_ms=msg.timestamp_ms, channel=msg.channel,
                 attributes={k: _value(v) for k, v in msg.attributes.items()})


def _value(msg: pb.Value):
    which = msg.WhichOneof("kind")
    return None if which is None else getattr(msg, which)


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
        offers=[pb.DecidedOffer(
            offer_id=r.offer.id, name=r.offer.name, rank=r.rank, score=r.score,
            propensity=r.propensity, value=r.offer.value, lever=r.offer.lever,
            creative_json=r.offer.creative_json,
            reasons=[pb.Reason(code=x.code, detail=x.detail, weight=x.weight)
                     for x in r.reasons],
        ) for r in d.offers],
    )


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

    def __init__(self, engine: Engine, max_watchers: int = 4):
        self.engine = engine
        self.max_watchers = max_watchers
        self.closing = threading.Event()  # set at shutdown: watchers end their streams
        self._watchers = 0
        self._watchers_lock = threading.Lock()
        self._encodings: dict[Catalog, OfferEncodings] = {}
        engine.on_catalog(self._prepare_encodings)

    def _prepare_encodings(self, catalog: Catalog) -> None:
        """Runs before ``catalog`` is swapped in: keep the active catalog's encodings
        for the requests still in flight on it."""
        active = self.engine.catalog
        kept = {c: e for c, e in self._encodings.items() if c is active}
        self._encodings = {**kept, catalog: OfferEncodings(catalog)}

    @_rpc
    def Decide(self, request: pb.DecideRequest, context) -> bytes:
        query = DecideQuery(
            customer=_identifier(request.customer), channel=request.channel,
            placement=request.placement,
            limit=request.limit if request.HasField("limit") else None,
            context={k: _value(v) for k, v in request.context.items()},
        )
        decision = self.engine.decide(query)
        encodings = self._encodings.get(decision.prepared.catalog)
        if encodings is None:  # a request that outlived two reloads: rare, still right
            encodings = OfferEncodings(decision.prepared.catalog)
        return encode_decision(decision, encodings)

    @_rpc
    def GetProfile(self, request: pb.GetProfileRequest, context) -> pb.Profile:
        record = self.engine.get_profile(_identifier(request.customer))
        return _profile(record, self.engine.catalog.feature_names)

    @_rpc
    def UpsertProfile(self, request: pb.UpsertProfileRequest, context) -> pb.Profile:
        record = self.engine.upsert_profile(ProfileUpdate(
            identifiers=tuple(_identifier(i) for i in request.identifiers),
            attributes={k: _value(v) for k, v in request.attributes.items()},
            features=dict(request.features),
        ))
        return _profile(record, self.engine.catalog.feature_names)

    @_rpc
    def ListOffers(self, request: pb.ListOffersRequest, context) -> pb.ListOffersResponse:
        catalog, offers = self.engine.list_offers(request.channel, request.placement)
        return pb.ListOffersResponse(offers=[_offer(o) for o in offers],
                                     catalog_version=catalog.version)

    @_rpc
    def Track(self, request: pb.Event, context) -> pb.TrackResponse:
        outcome = self.engine.track(_event(request))
        return pb.TrackResponse(profile_key=f"{outcome.profile_key:016x}",
                                duplicate=outcome.duplicate)

    @_rpc
    def TrackStream(self, request_iterator, context) -> pb.TrackSummary:
        limit = self.engine.limits.max_events_per_message
        summary = self.engine.track_many(
            _event(e) if len(batch.events) <= limit else
            TooManyInMessage(len(batch.events), limit)
            for batch in _decoded(request_iterator) for e in batch.events)
        return pb.TrackSummary(
            received=summary.received, applied=summary.applied,
            duplicates=summary.duplicates, rejected_count=summary.rejected_count,
            rejected=[pb.Rejection(index=i, event_id=eid, message=_details(m))
                      for i, eid, m in summary.rejected])

    @_rpc
    def Identify(self, request: pb.IdentifyRequest, context) -> pb.IdentifyResponse:
        record, merged = self.engine.identify(tuple(_identifier(i) for i in request.identifiers))
        return pb.IdentifyResponse(profile=_profile(record, self.engine.catalog.feature_names),
                                   merged_profile_keys=[f"{k:016x}" for k in merged])

    @_rpc
    def ForgetCustomer(self, request: pb.ForgetCustomerRequest,
                       context) -> pb.ForgetCustomerResponse:
        key, identifiers, events = self.engine.forget(_identifier(request.customer))
        return pb.ForgetCustomerResponse(profile_key=f"{key:016x}",
                                         identifiers_removed=identifiers,
                                         events_removed=events)

    def WatchTriggers(self, request: pb.WatchTriggersRequest, context):
        """Replay the trigger log from the cursor, then follow it until cancelled.

        Each subscriber holds one handler thread while connected, so at most half of
        them may watch (RESOURCE_EXHAUSTED beyond: raise --threads)."""
        if request.__class__ is _Undecodable:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(request.message))
        with self._watchers_lock:
            if self._watchers >= self.max_watchers:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"WatchTriggers: {self._watchers} subscribers already on this "
                              f"server process, at most {self.max_watchers} (half of "
                              "--threads; raise --threads or use another process)")
            self._watchers += 1
        try:
            yield from self._follow_triggers(request, context)
        except DecisionError as exc:
            context.abort(grpc.StatusCode[exc.status], _details(str(exc)))
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("internal error in WatchTriggers (incident %s)", incident)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"internal error (incident {incident}; details in the server log)")
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
                yield pb.Trigger(cursor=t.cursor, kind=t.kind, name=t.name,
                                 profile_key=f"{t.profile_key:016x}",
                                 identifiers=[pb.Identifier(kind=k, value=v)
                                              for k, v in t.identifiers],
                                 at_ms=t.at_ms, event_id=t.event_id)
                cursor = position + 1
            if not batch:  # woken by a commit here; another process's is seen by polling
                store.wait_for_commit(TRIGGER_POLL_S)

    @_rpc
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
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_parser(request_cls),
            response_serializer=bytes if method.name == "Decide" else reply_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def grpc_server(settings: Settings, reuse_port: bool) -> grpc.Server:
    """A grpc.Server with the project's transport settings (shared with the floor)."""
    size = settings.limits.max_message_bytes
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads,
                                   thread_name_prefix="decision-rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ],
    )


CATALOG_SYNC_SECONDS = 1.0
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

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop serving (draining requests in flight for ``grace`` seconds) and close
        the store once nothing can use it any more."""
        self.stopping.set()
        self.servicer.closing.set()  # trigger streams end now instead of at the grace
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.follower is not None:
            self.follower.join()
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


def create_server(settings: Settings, engine: Engine | None = None,
                  reuse_port: bool = False) -> Running:
    """Load the catalog, open the store, warm the kernels, bind; not yet started.

    The health service answers NOT_SERVING until ``start`` has run.
    """
    engine = engine or Engine(settings)
    engine.warm()
    server = grpc_server(settings, reuse_port)
    servicer = DecisionServicer(engine, max_watchers=max(1, settings.threads // 2))
    add_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address} (address in use?)")
    return Running(server, port, engine, health_servicer, threading.Event(), servicer)


def start(running: Running) -> None:
    running.server.start()
    running.follower = threading.Thread(target=_follow_catalog, args=(running,),
                                        name="decision-catalog", daemon=True)
    running.follower.start()
    for name in ("", SERVICE_NAME):
        running.health.set(name, health_pb2.HealthCheckResponse.SERVING)


def serve(settings: Settings, reuse_port: bool = False, ready=None) -> None:
    """Run one server process until SIGTERM/SIGINT; SIGHUP reloads the catalog."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is in place
    running = create_server(settings, reuse_port=reuse_port)
    start(running)
    host = settings.address.rpartition(":")[0]
    catalog = running.engine.catalog
    print(f"decision: serving on {host}:{running.port} (pid {os.getpid()}, catalog "
          f"{catalog.version}, {len(catalog.offers)} offers, {running.engine.store.count()} "
          f"profiles in {settings.data_dir})", flush=True)
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


def _worker(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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
    engine.warm()
    engine.close()
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    delay: dict[int, float] = {}
    due: dict[int, float] = {}
    stopping = threading.Event()

    def spawn(slot: int) -> None:
        p = ctx.Process(target=_worker, args=(settings,), name=f"decision-worker-{slot}")
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
