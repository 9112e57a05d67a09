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
bytes, floats, strings, ints and an int8 array, so the garbage collector untracks them
and never walks them.

It holds at most ``limit`` profiles, and no read pays for more than one eviction.
Once full, each profile read anew takes the place of one kept profile, chosen by a
clock (second chance): every kept profile owns one place on a ring of ``limit``
places; a hit marks its place; the hand that looks for a place clears the marks it
passes and stops at the first unmarked one, passing at most ``SWEEP`` places per read.
A profile read again within a turn of the hand stays (the hot customers); one read
once leaves at the hand's next turn, so a stream of one-off customers does not push
out the hot ones. The entries are spread over ``SHARDS`` dicts by key: a dict whose
keys come and go is rebuilt whole from time to time (CPython never reuses a deleted
entry's slot), and a rebuild of one 50,000-entry dict took 3-5 ms; a shard's takes
tens of microseconds. (A memo that emptied itself at once when full stalled the whole
process 20-30 ms at 50,000 profiles, once per 50,000 misses.)
"""

from __future__ import annotations

import math
import threading
from array import array

import numpy as np

from decision.store import layout
from decision.config.segments import fill_slots

#: profiles remembered per catalog version (~0.5 KB each with a typical tail, plus
#: ~0.1 KB + one byte per distinct rule program once verdicts are kept, plus 9 bytes
#: of ring)
DEFAULT_LIMIT = 50_000

#: the most marked places the hand passes (clearing their marks) in one read before it
#: evicts the profile it stands on, marked or not: a read's memo work stays bounded
#: when almost every kept profile is hot
SWEEP = 32

#: dicts the entries are spread over (by the key's low bits: ``key & 255`` in ``read``)
SHARDS = 256

# What is kept of one stored profile version: a plain tuple (a collection untracks a
# tuple of untracked items, not a NamedTuple), read with these indices.
TAIL, VALUES, ZONES, VERDICTS, PLACE = range(5)
# VALUES: the rule slot values in ``TailMemo.slot_index`` order; ZONES: the time zones
# in ``zone_attributes`` order (None: not a string); VERDICTS: int8[P], the verdicts
# of the programs that read only profile fields (-1 for the others), or None until a
# decision has computed them; PLACE: the profile's place on the clock's ring.

# the mark of a place on the ring
_FREE, _KEPT, _HIT = 0, 1, 2


class TailMemo:
    """Rule slot values and time zones of profiles, per profile key."""

    __slots__ = ("profile_slots", "slot_index", "zone_attributes", "limit", "_shards",
                 "_count", "_width", "_keys", "_marks", "_hand", "_free", "_lock")

    def __init__(self, profile_slots: tuple, zone_attributes: tuple[str, ...],
                 limit: int = DEFAULT_LIMIT):
        """``profile_slots``: (namespace, name, slot, type) of each profile field the
        rules read (``segments.fill_slots``); ``zone_attributes``: the attributes
        that hold a customer's time zone for some channel; ``limit``: the most
        profiles kept (at least 1)."""
        if limit < 1:
            raise ValueError(f"limit: at least 1 profile, got {limit}")
        self.profile_slots = profile_slots
        self.slot_index = tuple(slot for _, _, slot, _ in profile_slots)
        self.zone_attributes = zone_attributes
        self.limit = limit
        self._shards: tuple[dict[int, tuple], ...] = tuple({} for _ in range(SHARDS))
        self._count = 0
        self._width = max(self.slot_index) + 1 if self.slot_index else 0
        # the ring: per place, the key of the profile there (meaningful where its mark
        # is not _FREE) and its mark; neither is a container the collector walks
        self._keys = array("Q", bytes(8 * limit))
        self._marks = bytearray(limit)
        self._hand = 0
        self._free: list[int] = []  # places ``forget`` emptied, taken before the hand's
        # Hits take no lock (a mark set on a place that changed hands meanwhile only
        # gives its new profile a second chance); whatever changes which profile holds
        # which place does, as requests run on several threads.
        self._lock = threading.Lock()

    def read(self, buf, key: int, n_features: int, tail_at: int) -> tuple:
        """What is kept of the profile value ``buf`` (decoded now if its tail is not
        the one kept)."""
        tail = bytes(buf[tail_at:])
        entries = self._shards[key & 255]  # SHARDS - 1 (a literal: no global lookup)
        kept = entries.get(key)
        if kept is not None and kept[TAIL] == tail:
            self._marks[kept[PLACE]] = 2  # _HIT
            return kept
        decoded = layout.decode_tail(tail, n_features, key, 0)
        slots = [math.nan] * self._width
        attributes = decoded["a"]
        fill_slots(self.profile_slots, attributes, decoded["c"], decoded["s"], slots)
        values = tuple(slots[s] for s in self.slot_index)
        zones = tuple(z if isinstance(z := attributes.get(name), str) else None
                      for name in self.zone_attributes)
        with self._lock:
            kept = entries.get(key)
            if kept is not None:  # a new version of a kept profile: same place, read again
                place = kept[PLACE]
                self._marks[place] = _HIT
            else:
                place = self._evict()
                self._keys[place] = key
                self._marks[place] = _KEPT
                self._count += 1
            kept = entries[key] = (tail, values, zones, None, place)
        return kept

    def _evict(self) -> int:
        """A place for a profile read anew, under the lock: one ``forget`` emptied, or
        else the hand's, emptied of the profile it held (at most one); the hand moves
        past it. (A place ``forget`` emptied stays on the free list until taken from
        it: the hand only moves while that list is empty.)"""
        if self._free:
            return self._free.pop()
        marks = self._marks
        hand = self._hand
        if marks[hand] == _HIT:
            hand = self._pass(hand)
        if marks[hand] != _FREE:  # evict the profile there
            key = self._keys[hand]
            entries = self._shards[key & 255]
            kept = entries.get(key)
            if kept is not None and kept[PLACE] == hand:  # always, checked all the same
                del entries[key]
                self._count -= 1
        self._hand = hand + 1 if hand + 1 < self.limit else 0
        return hand

    def _pass(self, hand: int) -> int:
        """Where the hand stops from ``hand``, a marked place: past at most SWEEP marked
        places, clearing their marks (a second chance: evicted if not hit before the
        hand's next turn)."""
        marks, limit = self._marks, self.limit
        for _ in range(SWEEP):
            if marks[hand] != _HIT:
                break
            marks[hand] = _KEPT
            hand += 1
            if hand == limit:
                hand = 0
        return hand

    def keep_verdicts(self, key: int, kept: tuple, verdicts: np.ndarray) -> None:
        """Remember the profile-only verdicts a decision computed over ``kept`` (a
        ``read`` result), unless the profile was read anew (or evicted) since."""
        entries = self._shards[key % SHARDS]
        with self._lock:
            if entries.get(key) is kept:
                entries[key] = kept[:VERDICTS] + (verdicts, kept[PLACE])

    def peek(self, key: int) -> tuple | None:
        """What is kept of profile ``key`` (whatever bytes it is stored with now), or
        None; not a read: no hit is marked, nothing is evicted."""
        return self._shards[key % SHARDS].get(key)

    def forget(self, key: int) -> None:
        """Drop what is kept of profile ``key`` (erased or merged away)."""
        with self._lock:
            kept = self._shards[key % SHARDS].pop(key, None)
            if kept is not None:
                self._count -= 1
                self._marks[kept[PLACE]] = _FREE
                self._free.append(kept[PLACE])

    def __len__(self) -> int:
        return self._count
