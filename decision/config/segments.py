"""Segments: named rules over a profile, kept up to date on the profile itself.

Declared in the catalog, in the rule language of offer eligibility::

    [segments]
    high_value = "counter.revenue >= 1000 or profile.tier >= 3"
    app_user   = "profile.has_app"

A segment rule reads ``profile.<attribute>`` and ``counter.<name>`` (there is no request
context when a profile changes). Every write to a profile (an event, an upsert, a
merge) re-evaluates all segments with the rule VM kernel and stores the membership
on the profile; offers target members with ``segment.<name>`` at no cost per request,
and a change of membership is what triggers journeys (``decision.config.triggers``).
After a catalog reload, a profile's stored membership follows the new definitions at
its next write.
"""

from __future__ import annotations

import math

import numpy as np

from decision.errors import RuleError
from decision.store.layout import ProfileRecord
from decision.config.rules import FieldTable, ProgramBuilder, string_id
from kernels.eligibility import eligible_mask, eligible_rows

_NAN = math.nan


class RuleSet:
    """Named rules over a stored profile (no request context), compiled once per
    catalog version and evaluated together by the rule VM kernel: segment
    definitions, trigger conditions."""

    def __init__(self, definitions: dict[str, str], fields: FieldTable, what: str,
                 namespaces: tuple[str, ...] = ("profile", "counter")):
        self.names = tuple(definitions)
        builder = ProgramBuilder(fields, namespaces=namespaces)
        programs = []
        for name, text in definitions.items():
            try:
                programs.append(builder.add(text))
            except RuleError as exc:
                raise RuleError(f"{what} '{name}': {exc}") from None
        self.code, self.consts = builder.arrays()
        n = len(self.names)
        self.programs = np.array(programs, dtype=np.int32).reshape(n, 2)
        self.masks = np.ones((n, 2), dtype=np.int64)  # every channel, any placement
        self.masks[:, 1] = 0
        self.window = np.tile([-np.inf, np.inf], (n, 1))
        self.n_slots = fields.size
        self._empty = np.full(self.n_slots, _NAN)  # copied per evaluation
        self.inputs = tuple(sorted(((f.namespace, f.name, f.slot, f.type) for f in builder.used),
                                   key=lambda t: t[2]))
        for array in (self.code, self.consts, self.programs, self.masks, self.window):
            array.flags.writeable = False

    def evaluate(self, record: ProfileRecord) -> list[str]:
        """The names of the rules that hold for ``record``, in declaration order."""
        if not self.names:
            return []
        slots = self._empty.copy()
        self._fill(record, slots)
        member = eligible_mask(self.code, self.programs, self.consts, slots, self.masks,
                               self.window, 1, 0, 0.0)
        return [name for name, m in zip(self.names, member.tolist()) if m]

    def evaluate_many(self, records: list[ProfileRecord]) -> list[list[str]]:
        """``evaluate`` for many records in one kernel call (bulk loads)."""
        if not self.names:
            return [[] for _ in records]
        slots = np.full((len(records), self.n_slots), _NAN)
        for row, record in zip(slots, records):
            self._fill(record, row)
        members = eligible_rows(self.code, self.programs, self.consts, slots, self.masks,
                                self.window, 1, 0, 0.0).tolist()
        names = self.names
        return [[n for n, m in zip(names, row) if m] for row in members]

    def _fill(self, record: ProfileRecord, slots: np.ndarray) -> None:
        fill_slots(self.inputs, record.attributes, record.counters, record.segments, slots)


class SegmentSet(RuleSet):
    """The compiled segments of one catalog version (immutable)."""

    def __init__(self, definitions: dict[str, str], fields: FieldTable):
        super().__init__(definitions, fields, "segment")


def refresh(segments: SegmentSet, record: ProfileRecord) -> tuple[list[str], list[str]]:
    """Re-evaluate ``record``'s segments in place; return (entered, left)."""
    now = segments.evaluate(record)
    before = record.segments
    entered = [name for name in now if name not in before]
    left = [name for name in before if name not in now]
    record.segments = now
    return entered, left


def fill_slots(inputs, attributes: dict, counters: dict, segments, slots: np.ndarray) -> None:
    """Put a profile's values into the rule slots ``inputs`` names ((namespace, name,
    slot, type) each), because this runs on every decision and every profile write. A
    missing value, or one of another type than the catalog declares (stored before it
    was declared), reads as missing (NaN); strings become their ``string_id``."""
    for namespace, name, slot, ftype in inputs:
        if namespace == "counter":
            v = counters.get(name, 0.0)
            t = type(v)
            slots[slot] = v if t is float or t is int else _NAN
        elif namespace == "segment":
            slots[slot] = 1.0 if name in segments else 0.0
        else:
            v = attributes.get(name)
            t = type(v)
            if ftype == "number":
                slots[slot] = v if t is float or t is int else _NAN
            elif ftype == "string":
                slots[slot] = string_id(v) if t is str else _NAN
            else:
                slots[slot] = (1.0 if v else 0.0) if t is bool else _NAN
