"""One server process: assembled, started, and served until a signal.

``create_server`` builds a ready (warm) server bound to an address and returns it
with its port, so tests bind port 0 and talk to a real server; ``start`` starts it
with its housekeeping threads (catalog follower, delayed-action scheduler); ``serve``
runs one process until SIGTERM/SIGINT. ``decision.edge.supervisor`` runs several.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from decision.core.engine import Engine
from decision.edge.auth import Authenticator
from decision.edge.gate import Gate
from decision.edge.metrics import Metrics
from decision.edge.servicer import SERVICE_NAME, DecisionServicer, add_to_server
from decision.errors import ConfigError, DecisionError
from decision.settings import Settings, is_loopback

log = logging.getLogger("decision.edge.server")


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
    learning: threading.Thread | None = None
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
        for thread in (self.follower, self.scheduler, self.learning):
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


def _run_learning(running: Running) -> None:
    """The learning loop (``decision.core.learning``): every process tries the store's
    learner lease and serves the latest published models; twice per publish interval
    (so a labelled example is served within it), and every 0.25 s at most when the
    catalog does not learn (it may start to, on a reload)."""
    engine = running.engine
    while True:
        learning = engine.catalog.learning
        period = learning.publish_interval_ms / 2000 if learning.enabled else 0.25
        if running.stopping.wait(min(0.25, max(0.02, period))):
            return
        try:
            engine.learning_step()
        except Exception:  # keep learning whatever happened; the log has the trace
            log.exception("learning: unexpected error")


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
    running.learning = threading.Thread(target=_run_learning, args=(running,),
                                        name="decision-learning", daemon=True)
    running.learning.start()
    for name in ("", SERVICE_NAME):
        running.health.set(name, health_pb2.HealthCheckResponse.SERVING)


def serve(settings: Settings, reuse_port: bool = False, ready=None) -> None:
    """Run one server process until SIGTERM/SIGINT; SIGHUP reloads the catalog.

    With ``settings.port_file``, the bound port is written there once the server is
    SERVING and removed when it stops serving (see ``write_port_file``)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is in place
    running = create_server(settings, reuse_port=reuse_port)
    start(running)
    host = settings.address.rpartition(":")[0]
    catalog = running.engine.catalog
    security = ("mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert
                else "plaintext") + (", tokens" if settings.credentials else
                                     ", no credentials")
    profiles = running.engine.store.count()
    announce(settings, f"serving on {host}:{running.port} (pid {os.getpid()}, catalog "
             f"{catalog.version}, {len(catalog.offers)} offers, {profiles} profiles in "
             f"{settings.data_dir}; {security})",
             address=f"{host}:{running.port}", port=running.port, pid=os.getpid(),
             catalog=catalog.version, offers=len(catalog.offers), profiles=profiles,
             data_dir=str(settings.data_dir), security=security)
    if running.metrics_port is not None:
        url = (f"http://{settings.metrics_address.rpartition(':')[0]}:{running.metrics_port}"
               "/metrics")
        announce(settings, f"metrics on {url}", metrics_url=url,
                 metrics_port=running.metrics_port)
    if settings.credentials and not settings.tls_cert and not is_loopback(host):
        log.warning("tokens are sent in clear text: serve TLS (--tls-cert, --tls-key) on "
                    "a non-loopback address")
    if settings.port_file is not None:
        try:
            write_port_file(settings.port_file, running.port)
        except OSError as exc:
            running.stop(grace=None)
            raise ConfigError(f"--port-file {settings.port_file}: cannot write it: "
                              f"{exc.strerror or exc}") from None
    try:
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
    finally:  # the file says "serving on this port": gone as the shutdown starts
        if settings.port_file is not None:
            remove_port_file(settings.port_file, running.port)
    log.info("shutting down: draining requests in flight")
    running.stop(grace=5.0)


def announce(settings: Settings, text: str, **fields) -> None:
    """A start-up line: printed as ``decision: <text>`` on stdout in text mode (scripts
    and the README's demo read it), a log record with ``fields`` in JSON mode, so that
    every line is JSON there."""
    if settings.log_format == "json":
        log.info("%s", text, extra={"fields": fields})
    else:
        print(f"decision: {text}", flush=True)


def write_port_file(path, port: int) -> None:
    """Write ``port`` and a newline to ``path`` atomically: to a file beside it, then
    renamed over it, so a reader sees the whole number or no file."""
    path = os.fspath(path)
    aside = f"{path}.{os.getpid()}.tmp"
    try:
        with open(aside, "w", encoding="ascii") as f:
            f.write(f"{port}\n")
        os.replace(aside, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise


def remove_port_file(path, port: int) -> None:
    """Remove the port file if it still holds ``port`` (not one another server wrote
    since); a file already gone is fine."""
    try:
        with open(path, "rb") as f:
            if f.read(64).strip() != str(port).encode():
                return
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the port file %s: %s", path, exc)


def _reload(engine: Engine) -> None:
    try:
        catalog = engine.reload_catalog()
        log.info("catalog reloaded: %s (%d offers)", catalog.version, len(catalog.offers))
    except DecisionError as exc:
        log.error("catalog reload failed, the previous catalog keeps serving: %s", exc)
