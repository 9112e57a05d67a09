"""Channel pace: when an answer on a channel reaches the customer.

Web, app, kiosk and contact center are answered now. E-mail, SMS and push are
delivered later, at a moment the catalog allows::

    [pace.email]
    deliver = "later"                    # "now" (the default for every channel) | "later"
    min_delay = "30m"                    # never sooner than this after the decision
    send_window = ["08:00", "20:00"]     # local times a send may happen (may wrap midnight)
    quiet_hours = ["12:00", "14:00"]     # local times it may not (may wrap midnight)
    timezone = "Europe/Paris"            # the customer's zone when the profile has none
    timezone_attribute = "timezone"      # profile attribute holding an IANA zone name

``ChannelPace.deliver_at`` gives the first instant at or after ``decided + min_delay``
whose local time (in the customer's zone) is inside the send window and outside the
quiet hours, and says why in words. A window the quiet hours cover entirely is
refused at load. Times of day are minutes; an allowed interval is [start, end).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from decision.errors import CatalogError
from decision.config.timing import (
    DAY_MINUTES, duration_ms, format_duration, format_minute, minute_of_day,
)


class Timing(NamedTuple):
    deliver_at_ms: int
    reason: str  # "now", or why later and when


class ChannelPace:
    """One channel's pace (immutable)."""

    def __init__(self, channel: str, spec: dict):
        where = f"pace.{channel}"
        if not isinstance(spec, dict):
            raise CatalogError(f"{where}: must be a table")
        allowed = {"deliver", "min_delay", "send_window", "quiet_hours", "timezone",
                   "timezone_attribute"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise CatalogError(f"{where}: unknown key '{unknown[0]}' (allowed: "
                               f"{', '.join(sorted(allowed))})")
        self.channel = channel
        self.deliver = spec.get("deliver", "now")
        if self.deliver not in ("now", "later"):
            raise CatalogError(f"{where}.deliver: \"now\" or \"later\", got {self.deliver!r}")
        self.later = self.deliver == "later"
        if not self.later and set(spec) - {"deliver"}:
            raise CatalogError(f"{where}: {sorted(set(spec) - {'deliver'})[0]} only applies "
                               "to a channel delivered later (deliver = \"later\")")
        self.min_delay_ms = duration_ms(spec.get("min_delay", "0s"), f"{where}.min_delay",
                                        allow_zero=True)
        window = _interval(spec.get("send_window"), f"{where}.send_window")
        quiet = _interval(spec.get("quiet_hours"), f"{where}.quiet_hours")
        self.window_text = window and "-".join(map(format_minute, window))
        self.quiet_text = quiet and "-".join(map(format_minute, quiet))
        allowed_minutes = _minutes(window) if window else set(range(DAY_MINUTES))
        if quiet:
            allowed_minutes -= _minutes(quiet)
        if not allowed_minutes:
            raise CatalogError(f"{where}: the quiet hours {self.quiet_text} cover the whole send "
                               f"window {self.window_text or '00:00-24:00'}: nothing could "
                               "ever be sent; shorten the quiet hours or widen the window")
        self.allowed = tuple(m in allowed_minutes for m in range(DAY_MINUTES))
        self._quiet = frozenset(_minutes(quiet)) if quiet else frozenset()
        zone = spec.get("timezone", "UTC")
        self.zone = _zone(zone, f"{where}.timezone")
        self.zone_name = zone
        attribute = spec.get("timezone_attribute", "")
        if not isinstance(attribute, str):
            raise CatalogError(f"{where}.timezone_attribute: an attribute name")
        self.timezone_attribute = attribute

    def deliver_at(self, decided_ms: int, zone_name: str | None = None) -> Timing:
        """When to deliver an answer decided at ``decided_ms`` to a customer living in
        ``zone_name`` (None, empty or unknown: the channel's default zone).

        The search steps through UTC instants, reading each one's local time: across a
        daylight-saving change the result is still the first allowed instant at or
        after ``decided_ms + min_delay`` (never before it, never in a skipped hour)."""
        if not self.later:
            return Timing(decided_ms, "now")
        zone, zone_note = self.zone, self.zone_name
        if zone_name:
            zone_found = _profile_zone(zone_name)
            if zone_found is None:
                zone_note = f"{self.zone_name}, the profile's zone {zone_name!r} is unknown"
            else:
                zone, zone_note = zone_found, zone_name
        earliest = decided_ms + self.min_delay_ms
        parts = [f"{self.channel} is delivered later"]
        if self.min_delay_ms:
            parts.append(f"at least {format_duration(self.min_delay_ms)} after the decision")
        at = datetime.fromtimestamp(earliest / 1000, tz=timezone.utc)
        local = at.astimezone(zone)
        minute = local.hour * 60 + local.minute
        if self.allowed[minute]:
            return Timing(earliest, "; ".join(parts))
        why = (f"in the quiet hours {self.quiet_text}" if minute in self._quiet
               else f"outside the send window {self.window_text}")
        first_local = local
        for _ in range(8):  # a DST change can move the wall clock once more
            step = 1
            while not self.allowed[(minute + step) % DAY_MINUTES]:
                step += 1
            target = (minute + step) % DAY_MINUTES
            at = at.replace(second=0, microsecond=0) + timedelta(minutes=step)
            local = at.astimezone(zone)
            minute = local.hour * 60 + local.minute
            ahead = (minute - target) % DAY_MINUTES
            if 0 < ahead <= 180:  # the clock sprang forward over the target minute:
                back = at - timedelta(minutes=ahead)  # the first instant past the gap
                back_local = back.astimezone(zone)
                back_minute = back_local.hour * 60 + back_local.minute
                if back.timestamp() * 1000 >= earliest and self.allowed[back_minute]:
                    at, local, minute = back, back_local, back_minute
            if self.allowed[minute]:
                break
        parts.append(f"{first_local:%H:%M} ({zone_note}) is {why}: moved to "
                     f"{local:%Y-%m-%d %H:%M} local time")
        return Timing(int(at.timestamp() * 1000), "; ".join(parts))


def _profile_zone(name: str) -> ZoneInfo | None:
    """The zone a profile names, or None when it names none (``"Europe"`` is a
    directory of the zone database, not a zone: OSError, not only ZoneInfoNotFound)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        return None


def parse_pace(table, channels: tuple[str, ...]) -> dict[str, ChannelPace]:
    """Every channel's pace (``now`` unless ``[pace.<channel>]`` says otherwise)."""
    if not isinstance(table, dict):
        raise CatalogError("pace: must be a table of [pace.<channel>] tables")
    for name in table:
        if name not in channels:
            raise CatalogError(f"pace.{name}: unknown channel '{name}' (catalog channels: "
                               f"{', '.join(channels)})")
    return {c: ChannelPace(c, table.get(c, {})) for c in channels}


def _interval(value, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise CatalogError(f"{where}: two times of day, [\"from\", \"until\"], like "
                           f"[\"08:00\", \"21:00\"], got {value!r}")
    start, end = (minute_of_day(v, where) for v in value)
    if start % DAY_MINUTES == end % DAY_MINUTES:
        raise CatalogError(f"{where}: from and until are the same time ({value[0]}); "
                           "leave it out for the whole day")
    return start, end


def _minutes(interval: tuple[int, int]) -> set[int]:
    start, end = interval
    if start < end:
        return set(range(start, end))
    return set(range(start, DAY_MINUTES)) | set(range(0, end % DAY_MINUTES))


def _zone(name, where: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise CatalogError(f"{where}: unknown time zone {name!r} (an IANA name like "
                           "\"Europe/Paris\" or \"UTC\")") from None
