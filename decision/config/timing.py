"""Durations and times of day as the catalog writes them, parsed once at load.

- a duration is a string of a whole number and a unit: ``"250ms"``, ``"45s"``, ``"30m"``,
  ``"2h"``, ``"1d"``, ``"2w"`` (or several: ``"1h30m"``);
- a time of day is ``"HH:MM"`` on a 24-hour clock (``"24:00"`` is the end of the day).

Both raise CatalogError naming the place (``where``) and what to write instead.
"""

from __future__ import annotations

import re

from decision.errors import CatalogError

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^(?:\d+(?:ms|[smhdw]))+$")
_PART = re.compile(r"(\d+)(ms|[smhdw])")
_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")
DAY_MINUTES = 24 * 60


def duration_ms(value, where: str, allow_zero: bool = False) -> int:
    """Milliseconds in a duration like ``"30m"`` or ``"7d"``."""
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise CatalogError(f"{where}: a duration like \"30m\", \"2h\", \"7d\" or \"1h30m\" "
                           f"(units ms, s, m, h, d, w), got {value!r}")
    ms = sum(int(n) * _UNIT_MS[u] for n, u in _PART.findall(value.strip()))
    if ms == 0 and not allow_zero:
        raise CatalogError(f"{where}: must be longer than zero, got {value!r}")
    return ms


def format_duration(ms: int) -> str:
    """The shortest exact form: 604800000 -> "7d", 5400000 -> "1h30m"."""
    if ms == 0:
        return "0s"
    out = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        n, ms = divmod(ms, _UNIT_MS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def minute_of_day(value, where: str) -> int:
    """Minutes after midnight of ``"HH:MM"`` (0 to 1440)."""
    m = _CLOCK.match(value) if isinstance(value, str) else None
    if m is None or int(m[2]) > 59 or int(m[1]) * 60 + int(m[2]) > DAY_MINUTES:
        raise CatalogError(f"{where}: a time of day \"HH:MM\" (24-hour clock, 00:00 to "
                           f"24:00), got {value!r}")
    return int(m[1]) * 60 + int(m[2])


def format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
