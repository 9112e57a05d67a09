"""The gate every ``DecisionService`` call passes, and the one map of errors to status.

``Gate.wrap`` gives each unary-reply method one plain function that, in the handler
thread and before any work, checks the credentials (``decision.edge.auth``), the
caller's deadline and the admission bound, then runs the servicer's method and turns
what it raised into a status with ``status_of``, which server-streaming handlers use
too. Request bytes that do not parse as the method's message reach the handler as an
``Undecodable`` (``parser``), answered INVALID_ARGUMENT like any other bad field.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid

import grpc
from google.protobuf.message import DecodeError

from decision.errors import DecisionError, InvalidArgument
from decision.logs import ACCESS

log = logging.getLogger("decision.edge.gate")

INTERNAL = "internal error (incident {}; details in the server log)"
MAX_DETAILS_BYTES = 1500  # of a status message: it travels percent-encoded in a trailer
REFUSED_LOG_INTERVAL_S = 1.0  # refused credentials: at most one access-log line this often
note = threading.local()  # what a handler tells the access log (Decide: decision_id)


def details(message: str) -> str:
    """``message`` cut to fit gRPC's trailer limit (8 KiB by default): a message that
    echoes a huge or non-ASCII request value would otherwise be dropped by the client,
    which then sees RESOURCE_EXHAUSTED instead of the real status."""
    raw = message.encode()
    if len(raw) <= MAX_DETAILS_BYTES:
        return message
    return (f"{raw[:MAX_DETAILS_BYTES].decode(errors='ignore')}... (message cut, "
            f"{len(raw)} bytes)")


def status_of(name: str, exc: BaseException) -> tuple[str, str]:
    """The status (name) and message a client gets for ``exc`` raised by method
    ``name``: a package error maps to its own status with its message; a cancelled
    client stream is CANCELLED; anything else is INTERNAL with an incident id whose
    stack trace goes to the server log (never to the client)."""
    if isinstance(exc, DecisionError):
        return exc.status, details(str(exc))
    if isinstance(exc, grpc.RpcError):  # the client cancelled (its stream ended)
        return "CANCELLED", f"{name}: the client cancelled the call"
    incident = uuid.uuid4().hex[:12]
    log.error("internal error in %s (incident %s)", name, incident, exc_info=exc)
    return "INTERNAL", INTERNAL.format(incident)


class Undecodable:
    """Stands for a request message that did not parse (see ``parser``)."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def parser(message_cls):
    """``message_cls.FromString``, except that bytes which are not a valid message give
    an ``Undecodable``: the handler answers INVALID_ARGUMENT (grpcio itself would
    answer INTERNAL and log a stack trace for each such request)."""
    parse = message_cls.FromString
    name = message_cls.DESCRIPTOR.full_name

    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(f"request: not a valid {name} message ({exc})")

    return deserialize


def decoded(messages):
    """The messages of a client stream; an undecodable one ends it: INVALID_ARGUMENT."""
    for n, message in enumerate(messages):
        if message.__class__ is Undecodable:
            raise InvalidArgument(f"stream message {n}: {message.message}")
        yield message


class Gate:
    """Every DecisionService call passes here, in the handler thread, before any work:

    1. credentials (``decision.edge.auth``): UNAUTHENTICATED / PERMISSION_DENIED;
    2. the caller's deadline: already passed -> DEADLINE_EXCEEDED, no work done;
    3. admission: at most ``max_in_flight`` requests worked on at once, beyond that
       RESOURCE_EXHAUSTED at once (never queued until the client gives up);
    then errors map to their status (``status_of``), and the latency goes to the
    metrics and, failures always and successes sampled, the access log. Unknown
    tokens are counted in the metrics like any call, but logged at most once a second
    (with the count refused since): a client guessing tokens cannot flood the log.
    One plain function per method, the method -> role table precomputed: no gRPC
    interceptor on the hot path.
    """

    def __init__(self, auth, metrics, max_in_flight: int, access_sample: float):
        self.auth = auth
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.access_sample = access_sample
        self.in_flight = 0
        self._lock = threading.Lock()
        self._last_shed_log = 0.0
        self._last_refused_log = -REFUSED_LOG_INTERVAL_S
        self._refused_unlogged = 0
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
                note.decision_id = None
            if auth is not None:
                client, status, message = auth.check(name, context.invocation_metadata())
                if status is not None:
                    self._refuse(name, status, started, client, context, message)
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
                if request.__class__ is Undecodable:  # bytes that are not the message
                    raise InvalidArgument(request.message)
                return method(request, context)
            except Exception as exc:
                code, message = status_of(name, exc)
            finally:
                with lock:
                    self.in_flight -= 1
                if observe is not None:
                    observe(name, code, clock() - started)
                if code == "OK" and log_ok and rnd() < sample:
                    self._log(name, code, started, client, context, "")
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
            self._refuse(name, status, time.perf_counter(), client, context, message)
        return client

    def fail_stream(self, name: str, exc: BaseException, started: float, client,
                    context) -> None:
        """End a server-streaming call with the status of ``exc`` (``status_of``),
        counted and logged like the unary calls' failures."""
        code, message = status_of(name, exc)
        self._finish(name, code, started, client, context, message)
        context.abort(grpc.StatusCode[code], message)

    def _refuse(self, name, status, started, client, context, message) -> None:
        """End a call whose credentials were refused: counted always; an unknown or
        missing token (UNAUTHENTICATED: what guessing produces) logged at most once per
        ``REFUSED_LOG_INTERVAL_S``, a known client lacking a role always."""
        if self.metrics is not None:
            self.metrics.observe(name, status, time.perf_counter() - started)
        now = time.monotonic()
        unlogged = 0
        with self._lock:
            quiet = (status == "UNAUTHENTICATED"
                     and now - self._last_refused_log < REFUSED_LOG_INTERVAL_S)
            if quiet:
                self._refused_unlogged += 1
            elif status == "UNAUTHENTICATED":
                self._last_refused_log = now
                unlogged, self._refused_unlogged = self._refused_unlogged, 0
        if not quiet:
            more = (f" ({unlogged} more refused since the last line, not logged)"
                    if unlogged else "")
            self._log(name, status, started, client, context, message + more)
        context.abort(grpc.StatusCode[status], message)

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
            fields["decision_id"] = getattr(note, "decision_id", None)
            note.decision_id = None
        if message:
            fields["error"] = message
        self._access.log(logging.INFO if code == "OK" else logging.WARNING,
                         "%s %s", name, code, extra={"fields": fields})
