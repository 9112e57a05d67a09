"""The package's exceptions: one base, specific subclasses, one status each.

Each exception carries the gRPC status *name* it maps to (``status``), so the core
stays free of gRPC imports; ``decision.edge.gate.status_of`` turns the name into a
status code in one place. Messages say where the bad value is and what was expected.
"""

from __future__ import annotations


class DecisionError(Exception):
    """Base class of every error this package raises on purpose."""

    status = "INTERNAL"


class InvalidArgument(DecisionError):
    """A request field is wrong; the message names the field and what to send."""

    status = "INVALID_ARGUMENT"


class NotFound(DecisionError):
    """The request names something that does not exist (a profile, an offer)."""

    status = "NOT_FOUND"


class FailedPrecondition(DecisionError):
    """The request is well-formed but the stored state forbids it."""

    status = "FAILED_PRECONDITION"


class Unavailable(DecisionError):
    """The server cannot take the request right now (shutting down); retry."""

    status = "UNAVAILABLE"


class ResourceExhausted(DecisionError):
    """A bounded resource is in use (a campaign already running, say): retry later."""

    status = "RESOURCE_EXHAUSTED"


class CatalogError(InvalidArgument):
    """The catalog file cannot be loaded; the message names the offer and the reason."""


class RuleError(CatalogError):
    """An eligibility or segment rule does not parse or does not type-check."""


class StoreError(DecisionError):
    """The profile store is unusable (wrong layout version, foreign data)."""

    status = "FAILED_PRECONDITION"


class CorruptProfile(StoreError):
    """A stored profile value cannot be decoded; the message names the profile key."""

    status = "DATA_LOSS"


class ConfigError(DecisionError):
    """Invalid server configuration: raised at start-up, never on a request."""

    status = "INVALID_ARGUMENT"
