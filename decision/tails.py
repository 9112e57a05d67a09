"""What a decision reads from a stored profile's msgpack tail, remembered by content.

A decision needs two things from the tail (``decision.layout``): the values of the
profile fields its rules read (attributes, counters, segments) and, on a channel
paced in the customer's local time, the time-zone attribute. Unpacking the tail
builds a dict per section and a string per key and value; on a hot customer that is
the same work on the same bytes, request after request.

``TailMemo`` keeps, per profile key, the tail's bytes and what was read from them.
A read copies the stored tail out of the map (one ``bytes``) and compares it with the
kept one: equal bytes decode to equal values, so a hit is exact, never stale: any
write to the profile, from any process, changes the bytes it is compared with. The
memo belongs to one catalog version (the fields its rules read); entries hold only
bytes, floats and strings, so the garbage collector untracks them and never walks
the memo. It holds at most ``limit`` profiles and starts afresh when full.
"""

from __future__ import annotations

import math

from decision import layout
from decision.segments import fill_slots

#: profiles remembered per catalog version (~0.5 KB each with a typical tail)
DEFAULT_LIMIT = 50_000


class TailMemo:
    """Rule slot values and time zones of profiles, per profile key."""

    __slots__ = ("profile_slots", "slot_index", "zone_attributes", "limit", "_entries")

    def __init__(self, profile_slots: tuple, zone_attributes: tuple[str, ...],
                 limit: int = DEFAULT_LIMIT):
        """``profile_slots``: (namespace, name, slot, type) of each profile field the
        rules read (``segments.fill_slots``); ``zone_attributes``: the attributes
        that hold a customer's time zone for some channel."""
        self.profile_slots = profile_slots
        self.slot_index = tuple(slot for _, _, slot, _ in profile_slots)
        self.zone_attributes = zone_attributes
        self.limit = limit
        self._entries: dict[int, tuple[bytes, tuple, tuple]] = {}

    def read(self, buf, key: int, n_features: int, tail_at: int) -> tuple[tuple, tuple]:
        """(slot values in ``slot_index`` order, zones in ``zone_attributes`` order:
        the attribute when it is a string, else None) of the profile value ``buf``."""
        tail = bytes(buf[tail_at:])
        entries = self._entries
        kept = entries.get(key)
        if kept is not None and kept[0] == tail:
            return kept[1], kept[2]
        decoded = layout.decode_tail(tail, n_features, key, 0)
        slots = [math.nan] * (max(self.slot_index) + 1 if self.slot_index else 0)
        attributes = decoded["a"]
        fill_slots(self.profile_slots, attributes, decoded["c"], decoded["s"], slots)
        values = tuple(slots[s] for s in self.slot_index)
        zones = tuple(z if isinstance(z := attributes.get(name), str) else None
                      for name in self.zone_attributes)
        if len(entries) >= self.limit:
            entries.clear()
        entries[key] = (tail, values, zones)
        return values, zones

    def forget(self, key: int) -> None:
        """Drop what is kept of profile ``key`` (erased or merged away)."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
