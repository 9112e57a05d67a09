"""Checks of request values shared by every core operation: identifiers and types.

Each check raises ``InvalidArgument`` naming the field (``where``) and what to send.
"""

from __future__ import annotations

from typing import NamedTuple

from decision.errors import InvalidArgument
from decision.settings import Limits


class Identifier(NamedTuple):
    kind: str
    value: str


class IdentifierCheck:
    """``check(identifier, where) -> (kind, value)``: the kind is known (empty means
    ``customer_id``), the value present and within ``max_string_bytes``."""

    __slots__ = ("kinds", "max_bytes", "_known")

    def __init__(self, kinds, limits: Limits):
        self.kinds = frozenset(kinds)
        self.max_bytes = limits.max_string_bytes
        self._known = ", ".join(sorted(self.kinds))

    def __call__(self, ident: Identifier | None, where: str) -> tuple[str, str]:
        if ident is None or not ident.value:
            raise InvalidArgument(f"{where}.value: required, the customer's identifier")
        kind = ident.kind or "customer_id"
        if kind not in self.kinds:
            raise InvalidArgument(
                f"{where}.kind: unknown identifier kind {kind!r} (known: {self._known})")
        if len(ident.value.encode()) > self.max_bytes:
            raise InvalidArgument(f"{where}.value: longer than {self.max_bytes} bytes")
        return kind, ident.value

    def distinct(self, identifiers, where: str = "identifiers") -> list[tuple[str, str]]:
        """Every identifier checked, each (kind, value) once, in the order given."""
        out: list[tuple[str, str]] = []
        for n, ident in enumerate(identifiers):
            checked = self(ident, f"{where}[{n}]")
            if checked not in out:
                out.append(checked)
        return out


def check_type(v, ftype: str, where: str) -> None:
    """``v`` is of the catalog type ``ftype`` (bool, string, number)."""
    ok = (isinstance(v, bool) if ftype == "bool" else
          isinstance(v, str) if ftype == "string" else
          isinstance(v, (int, float)) and not isinstance(v, bool))
    if not ok:
        got = "bool" if isinstance(v, bool) else "string" if isinstance(v, str) else "number"
        raise InvalidArgument(f"{where}: expected a {ftype}, got a {got}")
