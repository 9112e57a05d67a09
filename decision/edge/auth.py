"""Who may call what: bearer-token clients with roles, checked per RPC.

The credentials file (TOML) lists the clients:

    [[client]]
    name = "web-frontend"
    token_sha256 = "9f86d081884c7d65..."   # sha256 of the token, hex (preferred)
    roles = ["decide"]

    [[client]]
    name = "ops"
    token = "a-long-random-secret"          # or the token itself (the file is a secret then)
    roles = ["admin"]

A client sends ``authorization: Bearer <token>`` as gRPC metadata. The token is hashed
(SHA-256) and compared with every client's hash with ``hmac.compare_digest``, with no
early exit, so neither the time taken nor the comparison leaks the token or its
length. A token that matched is remembered (one entry per client), so later calls
with it cost a dictionary lookup instead of a hash. Tokens are never logged; clients are named by ``name`` in logs and metrics.

Roles (``METHOD_ROLE``): ``decide`` reads (Decide, DecideBatch, GetProfile,
ListOffers), ``ingest`` writes customer data (Track, TrackStream, Identify,
UpsertProfile) and reads the trigger log (WatchTriggers), ``report`` reads what the
decisions earned (GetReport: aggregates, no customer's data), ``admin`` may call
everything (ReloadCatalog, ForgetCustomer, RunCampaign, GetDecisionRecords). Health and reflection are not part of the service and stay open.

No gRPC import here: ``check`` returns a status name and message, which
``decision.edge.server`` turns into UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from decision.errors import ConfigError

ROLES = ("decide", "ingest", "report", "admin")

#: the role each DecisionService RPC needs; ``admin`` may call every RPC.
METHOD_ROLE = {
    "Decide": "decide",
    "DecideBatch": "decide",
    "GetProfile": "decide",
    "ListOffers": "decide",
    "Track": "ingest",
    "TrackStream": "ingest",
    "Identify": "ingest",
    "UpsertProfile": "ingest",
    "WatchTriggers": "ingest",
    "ReloadCatalog": "admin",
    "ForgetCustomer": "admin",
    "RunCampaign": "admin",
    "GetModel": "decide",
    "GetDecisionRecords": "admin",  # customers' features: an auditor's or an analyst's
    "GetReport": "report",  # aggregates only (no customer's data): an analyst's, a console's
}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
MIN_TOKEN_CHARS = 16


def token_hash(token: str) -> bytes:
    """The stored form of a token: its SHA-256 digest (``token_sha256`` is its hex)."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Client:
    name: str
    digest: bytes  # sha256 of the token
    roles: frozenset[str]
    methods: frozenset[str]  # the RPCs its roles allow, precomputed


def _methods(roles: frozenset[str]) -> frozenset[str]:
    if "admin" in roles:
        return frozenset(METHOD_ROLE)
    return frozenset(m for m, role in METHOD_ROLE.items() if role in roles)


class Authenticator:
    """Resolves a request's metadata to a client and checks its role for the RPC."""

    def __init__(self, clients: list[Client]):
        if not clients:
            raise ConfigError("credentials: no [[client]] entries")
        self.clients = tuple(clients)
        # tokens already verified -> client. Only a presented token that matched a
        # client gets in (at most one entry per client), so a lookup that misses falls
        # through to the constant-time path; a hit skips hashing on the hot path.
        # str hashing is keyed per process (SipHash), so the lookup's timing says
        # nothing useful about a guessed token.
        self._verified: dict[str, Client] = {}

    @classmethod
    def load(cls, path: Path) -> "Authenticator":
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"credentials file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"credentials file {path}: {exc}") from None
        unknown = set(data) - {"client"}
        if unknown:
            raise ConfigError(f"credentials file {path}: unknown keys {sorted(unknown)}; "
                              "expected [[client]] tables")
        clients, names, digests = [], set(), set()
        for i, entry in enumerate(data.get("client", [])):
            where = f"credentials file {path}: client #{i + 1}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected a [[client]] table")
            extra = set(entry) - {"name", "token", "token_sha256", "roles"}
            if extra:
                raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
            name = entry.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(f"{where}: name must be 1-64 of A-Z a-z 0-9 _ . : @ -")
            where = f"credentials file {path}: client {name!r}"
            if name in names:
                raise ConfigError(f"{where}: defined twice")
            if ("token" in entry) == ("token_sha256" in entry):
                raise ConfigError(f"{where}: give exactly one of token, token_sha256")
            if "token" in entry:
                token = entry["token"]
                if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
                    raise ConfigError(f"{where}: token must be a string of at least "
                                      f"{MIN_TOKEN_CHARS} characters")
                digest = token_hash(token)
            else:
                hexed = entry["token_sha256"]
                if not isinstance(hexed, str) or not _HEX64.match(hexed.lower()):
                    raise ConfigError(f"{where}: token_sha256 must be 64 hex digits "
                                      "(sha256 of the token)")
                digest = bytes.fromhex(hexed)
            if digest in digests:
                raise ConfigError(f"{where}: same token as another client")
            roles = entry.get("roles")
            if (not isinstance(roles, list) or not roles
                    or not all(isinstance(r, str) and r in ROLES for r in roles)):
                raise ConfigError(f"{where}: roles must be a non-empty list of {list(ROLES)}")
            names.add(name)
            digests.add(digest)
            frozen = frozenset(roles)
            clients.append(Client(name, digest, frozen, _methods(frozen)))
        return cls(clients)

    def identify(self, metadata) -> Client | None:
        """The client whose token is in ``metadata`` (gRPC invocation metadata), or
        None. Every client's hash is compared, whatever matches first."""
        token = None
        for key, value in metadata:
            if key == "authorization":
                scheme, _, rest = value.partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
                break
        if not token:
            return None
        found = self._verified.get(token)
        if found is not None:
            return found
        digest = hashlib.sha256(token.encode()).digest()
        for client in self.clients:
            if hmac.compare_digest(digest, client.digest):
                found = client
        if found is not None and len(self._verified) < len(self.clients):
            self._verified[token] = found
        return found

    def check(self, method: str, metadata) -> tuple[Client | None, str | None, str]:
        """(client, status name or None when allowed, message)."""
        client = self.identify(metadata)
        if client is None:
            return None, "UNAUTHENTICATED", (
                "missing or unknown credentials: send metadata 'authorization: Bearer "
                "<token>' with a token from the server's credentials file")
        if method not in client.methods:
            role = METHOD_ROLE.get(method, "admin")
            return client, "PERMISSION_DENIED", (
                f"{method}: client {client.name!r} lacks the role {role!r} "
                f"(it has {', '.join(sorted(client.roles))})")
        return client, None, ""
