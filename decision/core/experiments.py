"""Which policy decides for a customer: the control group, the experiment's arm, the
channel's exploration, and the model (learned or the catalog's).

A ``Planner`` is built per (catalog, model version), off the request path, with the
``Plan`` of every (channel, arm) ready: a decision costs a hash or two and a dict
lookup. A customer's arm is ``unit_hash(salt, unit)`` where the unit is her profile
key (hex), or the identifier she was asked for when she has no profile yet
(``decision.config.learning``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from decision.config.learning import (
    GREEDY, POLICY_CODES, Arm, Exploration, Experiment, Learning, unit_hash,
)
from decision.core.learning import Served, static_served
from decision.core.prepared import Prepared

RANDOM = POLICY_CODES["random"]
CONTROL = "control"
MEMO_SIZE = 1 << 17  # customers whose plan a planner remembers


class Plan(NamedTuple):
    experiment: str
    arm: str
    policy: str  # greedy | epsilon | squarecb | thompson | random | none
    code: int  # kernels.explore's policy code
    param: float  # epsilon, or SquareCB's gamma
    visit: tuple  # the kernels' visit tuple: the model's weights, the arm's levers
    var_w: np.ndarray
    var_b: np.ndarray
    model_version: str
    empty: bool = False  # a control group that shows nothing
    shadow: "Plan | None" = None
    heads: dict = {}  # placement -> its decision records' head (decision.core.recording)

    @property
    def greedy(self) -> bool:
        return self.code == 0


class Planner:
    """The plans of one catalog and one model version."""

    def __init__(self, active: Prepared, served: Served | None):
        catalog = active.catalog
        learning: Learning = catalog.learning
        self.learning = learning
        self.control = learning.control
        static_w, static_b = static_served(catalog)
        self._static = (active.visit, static_w, static_b)
        self._served = served
        self._active = active
        self.version = served.version if served is not None else ""
        self.plans: dict[tuple[str, str], Plan] = {}
        for channel in catalog.channels:
            experiment = learning.by_channel.get(channel)
            if experiment is None:
                self.plans[(channel, "")] = self._plan(channel, None, None)
            else:
                for arm in experiment.arms:
                    self.plans[(channel, arm.name)] = self._plan(channel, experiment, arm)
            if self.control is not None:
                random = Arm(CONTROL, self.control.share, "random")
                plan = self._plan(channel, experiment, random)
                self.plans[(channel, CONTROL)] = plan._replace(
                    arm=CONTROL, empty=self.control.answer == "none",
                    policy="none" if self.control.answer == "none" else "random", heads={})
        self.needs_unit = self.control is not None or bool(learning.by_channel)
        self._memo: dict[tuple, Plan] = {}

    def plan_for(self, channel: str, key: int | None, identity: str) -> Plan:
        """``plan`` for a customer by profile key (or, without one, the identifier she
        was asked for), memoised: a returning customer's plan is one dict lookup."""
        if not self.needs_unit:
            return self.plans[(channel, "")]
        memo = (channel, key if key is not None else identity)
        plan = self._memo.get(memo)
        if plan is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            plan = self._memo[memo] = self.plan(
                channel, identity if key is None else f"{key:016x}")
        return plan

    def plan(self, channel: str, unit: str) -> Plan:
        """The plan for a customer (``unit``) on a channel (checked by the caller)."""
        control = self.control
        if control is not None and unit_hash(control.salt, unit) < control.share:
            return self.plans[(channel, CONTROL)]
        experiment = self.learning.by_channel.get(channel)
        if experiment is None:
            return self.plans[(channel, "")]
        return self.plans[(channel, experiment.arm_for(unit_hash(experiment.salt, unit)).name)]

    def _plan(self, channel: str, experiment: Experiment | None, arm: Arm | None) -> Plan:
        learning = self.learning
        served = self._served
        model = arm.model if arm is not None else ("learning" if learning.enabled else "static")
        group = learning.group_of(channel)
        if model == "learning" and served is not None:
            visit, var_w, var_b = served.visits[group], served.var_w[group], served.var_b[group]
            examples, version = served.examples[group], served.version
        else:
            (visit, var_w, var_b), examples = self._static, 0
            version = ""
        if model == "random":
            explore = Exploration("random")
        elif arm is not None and arm.explore is not None:
            explore = arm.explore
        elif model == "learning":
            explore = learning.exploration(channel)
        else:
            explore = GREEDY
        if arm is not None and arm.levers:
            visit = _with_levers(visit, self._active, arm.levers)
        shadow = None
        if experiment is not None and experiment.shadow is not None and arm is not None \
                and arm.name != CONTROL:
            shadow = self._plan(channel, None, experiment.shadow)._replace(
                experiment=experiment.name, arm=experiment.shadow.name, heads={})
        return Plan(experiment.name if experiment is not None else "",
                    arm.name if arm is not None else "", explore.policy,
                    POLICY_CODES[explore.policy], explore.param(examples), visit, var_w, var_b,
                    version, False, shadow, {})


def _with_levers(visit: tuple, active: Prepared, levers: dict[str, float]) -> tuple:
    """The visit tuple with some offers' levers replaced (rows stay in their order:
    the kernels' value x lever bound is checked per row, so any order is correct)."""
    index = active.catalog.offer_index
    value = np.array(visit[4], copy=True)
    row_of = {int(i): j for j, i in enumerate(visit[0].tolist())}
    for oid, lever in levers.items():
        value[row_of[index[oid]], 1] = lever
    value.flags.writeable = False
    return (*visit[:4], value, *visit[5:])
