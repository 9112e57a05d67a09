"""Server configuration: one validated, immutable object with documented defaults.

Built once at start-up from command-line flags (``decision serve --help``); nothing
reads the environment or the command line after that. Invalid values raise
``ConfigError`` at start-up, never on a request.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from decision.errors import ConfigError

DEFAULT_IDENTIFIER_KINDS = (
    "customer_id",
    "cookie",
    "device_id",
    "email_sha256",
    "loyalty_id",
    "phone_sha256",
)
#: default --max-in-flight per --threads: Track callers mostly wait for a group commit,
#: so a process usefully works on more requests than it has cores or threads
IN_FLIGHT_PER_THREAD = 4
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may carry; over a bound is INVALID_ARGUMENT."""

    default_offers: int = 5  #: offers returned when a Decide request sets no limit
    max_offers: int = 100  #: largest ``limit`` a Decide request may ask for
    max_context_entries: int = 64  #: entries in a request's context map
    max_string_bytes: int = 256  #: identifier values, context keys and string values
    max_attributes: int = 256  #: attributes on one profile (and set by one upsert)
    max_identifiers: int = 32  #: identifiers on one profile (and sent in one upsert)
    max_events_per_message: int = 5000  #: events in one TrackStream message
    max_message_bytes: int = 4 * 1024 * 1024  #: gRPC message size, both directions
    max_batch: int = 1000  #: decisions in one DecideBatch call

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ConfigError(f"limits.{name} must be > 0, got {getattr(self, name)}")
        if self.default_offers > self.max_offers:
            raise ConfigError(
                f"limits.default_offers ({self.default_offers}) must not exceed "
                f"limits.max_offers ({self.max_offers})"
            )


@dataclass(frozen=True)
class Settings:
    """Everything a server process needs to start.

    ``data_dir``        the LMDB environment (created if missing).
    ``catalog_path``    the offer catalog, TOML (see ``decision.config.catalog``).
    ``address``         listen address, ``host:port``; port 0 picks a free port.
    ``workers``         server processes sharing the port (SO_REUSEPORT) and the store.
    ``threads``         gRPC handler threads per process.
    ``map_size``        initial LMDB map size in bytes; the map doubles when full.
    ``durable``         fsync every commit (True) or leave it to the OS (False: fast,
                        survives a killed process, not a machine crash).
    ``identifier_kinds`` the kinds of customer identifiers the store accepts.
    ``campaign_dir``    where RunCampaign writes its files (default: ``campaigns``
                        beside the data directory).
    ``tls_cert``, ``tls_key`` PEM server certificate chain and private key: serve TLS.
    ``tls_client_ca``   PEM CA bundle: require client certificates signed by it (mTLS).
    ``credentials``     TOML file of clients, tokens and roles (``decision.edge.auth``);
                        None: no authentication.
    ``allow_unauthenticated`` serve without credentials on a non-loopback address.
    ``max_in_flight``   requests worked on at once per process (default
                        ``IN_FLIGHT_PER_THREAD * threads``); beyond, RESOURCE_EXHAUSTED
                        at once.
    ``metrics_address`` ``host:port`` of the Prometheus endpoint (None: none); worker
                        *i* of ``workers`` serves on port + *i*.
    ``log_format``      ``text`` or ``json`` (JSON lines).
    ``access_log_sample`` fraction of successful requests logged (failures always).
    ``port_file``       write the bound port (a number and a newline) there once
                        serving, atomically; removed when serving stops (None: none).
    """

    data_dir: Path
    catalog_path: Path
    address: str = "127.0.0.1:50051"
    workers: int = 1
    threads: int = 8
    map_size: int = 1 << 30
    durable: bool = True
    identifier_kinds: tuple[str, ...] = DEFAULT_IDENTIFIER_KINDS
    limits: Limits = field(default_factory=Limits)
    campaign_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    credentials: Path | None = None
    allow_unauthenticated: bool = False
    max_in_flight: int | None = None
    metrics_address: str | None = None
    log_format: str = "text"
    access_log_sample: float = 0.0
    port_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "catalog_path", Path(self.catalog_path))
        object.__setattr__(self, "campaign_dir", Path(self.campaign_dir) if self.campaign_dir
                           else self.data_dir.parent / "campaigns")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "credentials", "port_file"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.max_in_flight is None:
            object.__setattr__(self, "max_in_flight", IN_FLIGHT_PER_THREAD * self.threads)
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if not 0.0 <= self.access_log_sample <= 1.0:
            raise ConfigError(
                f"access_log_sample must be between 0 and 1, got {self.access_log_sample}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.map_size < 1 << 20:
            raise ConfigError(f"map_size must be at least 1 MiB, got {self.map_size}")
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"address must be host:port, got {self.address!r}")
        if self.workers > 1 and int(port) == 0:
            raise ConfigError("workers > 1 need a fixed port (they share it with SO_REUSEPORT)")
        if self.port_file is not None and not self.port_file.parent.is_dir():
            raise ConfigError(f"--port-file {self.port_file}: no directory "
                              f"{self.port_file.parent} to write it in")
        if self.metrics_address is not None:
            m_host, m_sep, m_port = self.metrics_address.rpartition(":")
            if not m_sep or not m_host or not m_port.isdigit() or int(m_port) > 65535:
                raise ConfigError(
                    f"metrics address must be host:port, got {self.metrics_address!r}")
            if self.workers > 1 and (int(m_port) == 0 or int(m_port) + self.workers > 65536):
                raise ConfigError("workers > 1 need a fixed metrics port (worker i serves "
                                  "on port + i)")
        if (self.credentials is None and not self.allow_unauthenticated
                and not is_loopback(host)):
            raise ConfigError(
                f"refusing to serve {self.address} without credentials: anyone who can "
                "reach it could read, change and erase customer profiles. Pass "
                "--credentials FILE (clients, tokens, roles), or --allow-unauthenticated "
                "if a network boundary already restricts who can connect")
        for kind in self.identifier_kinds:
            if not _KIND.match(kind):
                raise ConfigError(
                    f"identifier kind {kind!r} must be lowercase letters, digits and '_'"
                )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
