"""What a decision reads from a stored profile's msgpack tail, remembered by content.

A decision needs two things from the tail (``decision.store.layout``): the values of the
profile fields its rules read (attributes, counters, segments) and, on a channel
paced in the customer's local time, the time-zone attribute. Unpacking the tail
builds a dict per section and a string per key and value; on a hot customer that is
the same work on the same bytes, request after request.

``TailMemo`` keeps, per profile key, the tail's bytes and what was read from them,
and, once a decision has run them, the verdicts of the rule programs that read only
profile fields (``VERDICTS``): the same bytes give the same verdicts, whatever
the request's context.
A read copies the stored tail out of the map (one ``bytes``) and compares it with the
kept one: equal bytes decode to equal values, so a hit is exact, never stale: any
write to the profile, from any process, changes the bytes it is compared with. The
memo belongs to one catalog version (the fields its rules read); entries hold only
bytes, floats, strings and an int8 array, so the garbage collector untracks them and
never walks the memo. It holds at most ``limit`` profiles and starts afresh when full.
"""

from __future__ import annotations

import math

import numpy as np

from decision.store import layout
from decision.config.segments import fill_slots

#: profiles remembered per catalog version (~0.5 KB each with a typical tail, plus
#: ~0.1 KB + one byte per distinct rule program once verdicts are kept)
DEFAULT_LIMIT = 50_000


# What is kept of one stored profile version: a plain tuple (a collection untracks a
# tuple of untracked items, not a NamedTuple), read with these indices.
TAIL, VALUES, ZONES, VERDICTS = range(4)
# VALUES: the rule slot values in ``TailMemo.slot_index`` order; ZONES: the time zones
# in ``zone_attributes`` order (None: not a string); VERDICTS: int8[P], the verdicts
# of the programs that read only profile fields (-1 for the others), or None until a
# decision has computed them.


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
        self._entries: dict[int, tuple] = {}

    def read(self, buf, key: int, n_features: int, tail_at: int) -> tuple:
        """What is kept of the profile value ``buf`` (decoded now if its tail is not
        the one kept)."""
        tail = bytes(buf[tail_at:])
        entries = self._entries
        kept = entries.get(key)
        if kept is not None and kept[TAIL] == tail:
            return kept
        decoded = layout.decode_tail(tail, n_features, key, 0)
        slots = [math.nan] * (max(self.slot_index) + 1 if self.slot_index else 0)
        attributes = decoded["a"]
        fill_slots(self.profile_slots, attributes, decoded["c"], decoded["s"], slots)
        values = tuple(slots[s] for s in self.slot_index)
        zones = tuple(z if isinstance(z := attributes.get(name), str) else None
                      for name in self.zone_attributes)
        if len(entries) >= self.limit:
            entries.clear()
        kept = entries[key] = (tail, values, zones, None)
        return kept

    def keep_verdicts(self, key: int, kept: tuple, verdicts: np.ndarray) -> None:
        """Remember the profile-only verdicts a decision computed over ``kept`` (a
        ``read`` result), unless the profile was read anew since."""
        if self._entries.get(key) is kept:
            self._entries[key] = kept[:VERDICTS] + (verdicts,)

    def forget(self, key: int) -> None:
        """Drop what is kept of profile ``key`` (erased or merged away)."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
