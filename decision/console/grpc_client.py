"""The console's client of the decision server: a thin wrapper over the gRPC API.

The console is a caller like any other (a web backend, a kiosk): it reaches the server
through one gRPC channel (plaintext, or TLS with a CA and optionally a client
certificate), sends its bearer token with every call, and never touches the store.
The token stays here, in the console process: no page, fragment or error message
carries it.

What the pages need, as coroutines (``grpc.aio``, on the web server's loop):

- ``profile(who)``: the profile an identifier reaches, or ``None`` when none does;
- ``decide(who, channel, limit, context)``: the ranked, explained offers;
- ``record(who, channel, offer_id, decision_id, outcome)``: one outcome event
  (``impression``, ``click``, ``dismissal``, ``conversion``), idempotent per decision,
  offer and outcome;
- ``report(from_ms, to_ms, ...)``: the server's report over a time range (``GetReport``:
  the figures as JSON, and PNG charts when asked), for the results view;
- ``close()``.

A failed call raises ``ServerError`` (the status code and the server's message, which
names what to fix) or its subclass ``ServerUnavailable`` (no server answers: down,
unreachable, or the deadline passed), which the pages turn into a clear message and
HTTP 503 instead of a stack trace. The roles the console's token needs are ``decide``
(Decide, GetProfile) and ``ingest`` (Track) for the agent desk and the kiosk, and
``report`` for the results view (GetReport: every channel's and arm's figures, no
customer's data; never ``admin``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc

from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

#: the outcome event types an agent or a kiosk can send (decision.config.policies.OUTCOMES)
OUTCOMES = ("impression", "click", "conversion", "dismissal")

#: per-call deadline: a page waits at most this long for the server, then says so
DEFAULT_TIMEOUT_S = 3.0
#: a report's deadline: it exports the store's news and draws charts first
REPORT_TIMEOUT_S = 60.0

_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ServerError(Exception):
    """A call the server refused or failed: ``code`` (a ``grpc.StatusCode`` name) and the
    server's message (already free of secrets and paths: the server's errors are written
    for clients)."""

    def __init__(self, method: str, code: str, details: str):
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


class ServerUnavailable(ServerError):
    """No answer from the server: it is down, unreachable, or too slow (deadline)."""


class Who(NamedTuple):
    """A customer as the pages address them: an identifier kind and value."""

    kind: str
    value: str

    def identifier(self) -> pb.Identifier:
        return pb.Identifier(kind=self.kind, value=self.value)


@dataclass(frozen=True)
class ServerTarget:
    """Where the decision server is and how to reach it.

    ``address``: host:port. ``token``: sent as ``authorization: Bearer <token>`` on
    every call (roles ``decide`` and ``ingest``). ``tls_ca``: PEM roots; setting it (or
    ``tls``) makes the channel TLS, trusting the system's roots when ``tls_ca`` is None.
    ``client_cert``/``client_key``: PEM for mutual TLS. ``tls_server_name``: the name to
    expect in the server's certificate when it differs from the address's host.
    """

    address: str
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: bytes | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    tls_server_name: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_files(cls, address: str, token_file: str | Path | None = None,
                   tls_ca: str | Path | None = None, client_cert: str | Path | None = None,
                   client_key: str | Path | None = None, tls: bool = False,
                   tls_server_name: str | None = None) -> ServerTarget:
        """A target from the CLI's files; an unreadable file raises ``ValueError``
        naming the flag and the file."""
        def read(flag: str, path) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"{flag} {path}: {exc.strerror}") from None

        if (client_cert is None) != (client_key is None):
            raise ValueError("--client-cert and --client-key go together")
        token = read("--token-file", token_file)
        token_text = token.decode().strip() if token is not None else None
        if token is not None and not token_text:
            raise ValueError(f"--token-file {token_file}: the file is empty")
        return cls(address=address, token=token_text,
                   tls=tls or tls_ca is not None or client_cert is not None,
                   tls_ca=read("--tls-ca", tls_ca), client_cert=read("--client-cert", client_cert),
                   client_key=read("--client-key", client_key), tls_server_name=tls_server_name)

    @property
    def secured(self) -> bool:
        return self.tls

    def metadata(self) -> tuple | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def channel(self) -> grpc.aio.Channel:
        """A new ``grpc.aio`` channel; create it on the loop that will use it."""
        options = [("grpc.max_reconnect_backoff_ms", 2000)]  # back soon after a restart
        if not self.tls:
            return grpc.aio.insecure_channel(self.address, options=options)
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca, private_key=self.client_key,
            certificate_chain=self.client_cert)
        return grpc.aio.secure_channel(self.address, credentials, options=options)


class DecisionClient:
    """The console's calls to the server, over one channel opened on first use.

    Not thread-safe: one instance per event loop (the console has one).
    """

    def __init__(self, target: ServerTarget):
        self.target = target
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.DecisionServiceStub | None = None
        self._metadata = target.metadata()

    def _service(self) -> pb_grpc.DecisionServiceStub:
        if self._stub is None:
            self._channel = self.target.channel()
            self._stub = pb_grpc.DecisionServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._stub = None

    async def _call(self, method: str, request, timeout_s: float | None = None):
        rpc = getattr(self._service(), method)
        try:
            return await rpc(request, timeout=timeout_s or self.target.timeout_s,
                             metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            error = ServerUnavailable if code in _UNAVAILABLE else ServerError
            raise error(method, code.name, exc.details() or "") from None

    async def profile(self, who: Who) -> pb.Profile | None:
        """The profile ``who`` reaches, or None when no profile holds that identifier."""
        try:
            return await self._call("GetProfile", pb.GetProfileRequest(customer=who.identifier()))
        except ServerError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise

    async def decide(self, who: Who, channel: str, limit: int,
                     context: dict[str, str | float | bool] | None = None) -> pb.DecideResponse:
        """The next best offers for ``who`` on ``channel``, now."""
        return await self._call("Decide", pb.DecideRequest(
            customer=who.identifier(), channel=channel, limit=limit,
            context={k: _value(v) for k, v in (context or {}).items()}))

    async def record(self, who: Who, channel: str, offer_id: str, decision_id: str,
                     outcome: str) -> bool:
        """Send one outcome event for an offer of a decision; True when the server had
        already applied it (the same decision, offer and outcome sent twice: a double
        click, a retry), which it then does not apply again."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: one of {', '.join(OUTCOMES)}, got {outcome!r}")
        reply = await self._call("Track", pb.Event(
            event_id=outcome_event_id(decision_id, offer_id, outcome), type=outcome,
            customer=who.identifier(), channel=channel, offer_id=offer_id,
            decision_id=decision_id))
        return reply.duplicate

    async def report(self, from_ms: int, to_ms: int, dimensions: tuple[str, ...],
                     attribution: bool = False, charts: bool = False,
                     label: str = "click") -> pb.ReportReply:
        """The server's report over [from_ms, to_ms): grouped by ``dimensions`` (offer,
        channel, placement, segment, arm, day), with attribution and PNG charts when
        asked. Role ``report``."""
        return await self._call("GetReport", pb.ReportRequest(
            from_ms=from_ms, to_ms=to_ms, dimensions=list(dimensions), label=label,
            attribution=attribution, charts=charts),
            timeout_s=max(self.target.timeout_s, REPORT_TIMEOUT_S))


def outcome_event_id(decision_id: str, offer_id: str, outcome: str) -> str:
    """The idempotency key of an outcome: one per decision, offer and outcome type (a
    digest of them when that would pass the server's 256 bytes)."""
    key = f"console:{decision_id}:{offer_id}:{outcome}"
    if len(key.encode()) <= 256:
        return key
    return "console:" + hashlib.sha256(key.encode()).hexdigest()


def _value(v: str | float | bool) -> pb.Value:
    if isinstance(v, bool):
        return pb.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return pb.Value(number_value=float(v))
    return pb.Value(string_value=str(v))
