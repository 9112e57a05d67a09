"""``Prepared``: a catalog as the decision path reads it, computed once per version.

The engine keeps one ``Prepared`` as its active catalog and swaps it by reference on
reload, so a request in flight finishes with the catalog it started with. Everything
a decision needs that does not depend on the request is here: the kernel arrays, the
context plan, the reasons' texts, the cold-start verdicts and the memo of profile
tails (``decision.core.tails``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from decision.config.catalog import Catalog
from decision.core.tails import TailMemo
from kernels.decide import new_verdicts, rule_table
from kernels.eligibility import programs_reading

N_FEATURE_REASONS = 3  # the features that moved an offer's score most, per offer
_NAN = math.nan


class Reason(NamedTuple):
    code: str  # ELIGIBLE | FEATURE | COLD_START | POLICY
    detail: str
    weight: float = 0.0


COLD_START = Reason("COLD_START", "no profile: the model's prior")


class Prepared:
    """Per-catalog values the hot path needs, computed once per catalog version."""

    __slots__ = ("catalog", "channel_bits", "placement_bits", "eligible_reason",
                 "zero_features", "n_features", "n_slots", "profile_slots",
                 "policies", "has_policies", "later", "policy_reasons", "context_plan",
                 "visit", "no_slots", "zone_index", "read_tail", "tails", "profile_only",
                 "no_verdicts", "cold_verdicts", "planner")

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.channel_bits = catalog.channel_bits
        self.placement_bits = catalog.placement_bits
        self.eligible_reason = tuple(Reason("ELIGIBLE", o.rule or "no rule")
                                     for o in catalog.offers)
        zero = np.zeros(len(catalog.feature_names), dtype="<f4")
        zero.flags.writeable = False  # same numba type as a view over the map
        self.zero_features = zero
        self.n_features = zero.shape[0]
        self.n_slots = catalog.fields.size
        used = catalog.context_fields  # the context keys some rule reads: their slots
        self.context_plan = {f.name: (f.type, used[f.name].slot if f.name in used else -1)
                             for f in catalog.fields.of("context")}
        self.profile_slots = tuple((f.namespace, f.name, f.slot, f.type)
                                   for f in catalog.profile_fields)
        self.policies = catalog.policies.arrays
        self.visit = tuple(catalog.visit)  # a plain tuple: numba types it fastest
        self.no_slots = [_NAN] * self.n_slots  # every slot missing, copied per request
        self.has_policies = bool(catalog.policies.policies)
        self.later = {c: p for c, p in catalog.pace.items() if p.later}
        zones = tuple(sorted({p.timezone_attribute for p in self.later.values()
                              if p.timezone_attribute}))
        # per channel paced in local time: the index of its zone attribute in ``tails``
        self.zone_index = {c: zones.index(p.timezone_attribute)
                           for c, p in self.later.items() if p.timezone_attribute}
        self.read_tail = bool(self.profile_slots or zones)
        self.tails = TailMemo(self.profile_slots, zones)
        # The rule programs that read no context field give the same verdict for every
        # decision over the same stored profile: ``tails`` keeps them per profile
        # version. Without a profile (or a rule reading one), every profile field is
        # missing: those verdicts are the same for everyone, computed here once.
        rules = catalog.visit.rules
        self.profile_only = ~programs_reading(
            catalog.code, rules, {f.slot for f in catalog.fields.of("context")})
        self.no_verdicts = new_verdicts(self.visit)
        cold = rule_table(catalog.code, catalog.consts, np.full((1, self.n_slots), _NAN),
                          self.visit)[0]
        self.cold_verdicts = np.where(self.profile_only, cold, -1).astype(np.int8)
        self.policy_reasons = tuple(Reason("POLICY", p.describe())
                                    for p in catalog.policies.policies)
        # a catalog that learns, explores or runs experiments: the engine sets a
        # ``decision.core.experiments.Planner`` here (and swaps it per model version);
        # None: the catalog's [model], greedy, nothing recorded
        self.planner = None
