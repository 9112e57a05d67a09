"""Side by side with Vowpal Wabbit (issue 15, point 8): the simulator's stream through
VW's ``cb_explore_adf`` (SquareCB and epsilon-greedy) and through our kernels
(``kernels.bayes`` + ``kernels.explore``), in process, no server.

The stream is ``decision simulate``'s world (``decision.simulate.World``): 1,000
customers, 8 offers on web and the contact center (digital-only offers are web only),
the same customers in the same order for every learner, and the same delayed feedback:
an impression's label reaches the learner ``DELAY`` steps later (about a 500 ms click
window at 1,000 decisions/s; a click earlier, as the server labels it at once).

Each learner sees what the server's model sees: the customer's 6 features and the
offer's 4 features; VW gets the offer's id as a feature too (``-q CA`` crosses customer
features with offer features and ids: per-offer weights, like our per-offer models). The
reward is the click (VW's cost: 1 - click).

Figures (INFO rows; the issue's goal, "a rate at least VW's, within the run's interval,
at a tenth of its latency or less", as GOAL rows that never fail the run): expected
click rate of the shown offers (from the truth, no sampling noise) and its share of the
oracle's, the sampled click rate, and the per-decision latency (p50/p99, us): choosing
the offer (VW: predict on the text example, as its Python users call it; ours:
posterior mean and variance of the eligible offers + the exploration kernel), and the
learning time per example.

``vowpalwabbit`` is an optional extra for this comparison only (``pip install
vowpalwabbit``), never a runtime dependency: without it the module is skipped.
"""

from __future__ import annotations

import collections
import math
import time
import tomllib

import numpy as np
import pytest

from benchmarks.conftest import GOAL, record
from decision.simulate import (
    CHANNELS,
    CUSTOMER_FEATURES,
    OFFER_FEATURES,
    Plan,
    World,
    simulation_catalog,
    wilson,
)

vw_module = pytest.importorskip(
    "vowpalwabbit", reason="vowpalwabbit is not installed: the VW comparison is an optional "
    "extra (pip install vowpalwabbit)")

SEED, OFFERS, CUSTOMERS, STEPS = 1, 8, 1000, 6000
DELAY = 500  # steps between an impression and its negative label
EPSILON = 0.1
PRIOR_VARIANCE, SHARED_PRIOR_VARIANCE = 0.5, 0.1  # as decision simulate's catalog


def _stream():
    world = World(SEED, OFFERS, CUSTOMERS)
    plan = Plan.make(world, STEPS, SEED)
    truth, oracle, _ = world.expectations(plan.customer, plan.channel, plan.drifted)
    return world, plan, truth, oracle


class _Feedback:
    """Labels due later: a click at once, a miss ``DELAY`` steps after the impression."""

    def __init__(self):
        self.queue: collections.deque = collections.deque()
        self.late: list = []

    def add(self, step: int, click: bool, example) -> None:
        if click:
            self.late.append(example)
        else:
            self.queue.append((step + DELAY, example))

    def due(self, step: int) -> list:
        out, self.late = self.late, []
        while self.queue and self.queue[0][0] <= step:
            out.append(self.queue.popleft()[1])
        return out


def _outcome(name: str, world, plan, truth, oracle, shown, clicks, choose_ns, learn_ns,
             learned) -> dict:
    shown_p = truth[np.arange(plan.steps), shown]
    n = plan.steps
    k = int(clicks.sum())
    lo, hi = wilson(k, n)
    half = n // 2
    late = float(shown_p[half:].sum() / oracle[half:].sum())
    row = {"name": name, "expected_rate": float(shown_p.mean()),
           "share_of_oracle": float(shown_p.sum() / oracle.sum()), "late_share": late,
           "click_rate": k / n, "ci": (lo, hi),
           "choose_p50_us": float(np.percentile(choose_ns, 50)) / 1e3,
           "choose_p99_us": float(np.percentile(choose_ns, 99)) / 1e3,
           "learn_us": float(np.sum(learn_ns)) / 1e3 / max(1, learned)}
    bench = f"vw comparison: {name}"
    record(bench, "expected click rate", 100 * row["expected_rate"], "%")
    record(bench, "share of oracle", 100 * row["share_of_oracle"], "%")
    record(bench, "share of oracle, 2nd half", 100 * late, "%")
    record(bench, "sampled click rate", 100 * row["click_rate"], "%")
    record(bench, "choose p50", row["choose_p50_us"], "us")
    record(bench, "choose p99", row["choose_p99_us"], "us")
    record(bench, "learn per example", row["learn_us"], "us")
    return row


# ---------------------------------------------------------------------- Vowpal Wabbit
def _vw_text(world: World, c: int, channel: str, offers) -> list[str]:
    x = world.X[c]
    shared = "shared |C " + " ".join(f"{f}:{float(v):.6g}" for f, v in zip(CUSTOMER_FEATURES, x)) \
        + f" ch_{channel}"
    lines = [shared]
    for k in offers:
        feats = " ".join(f"{d}:{float(v):g}" for d, v in zip(OFFER_FEATURES, world.E[k]) if v)
        lines.append(f"|A id{k} {feats}")
    return lines


def _run_vw(args: str, world, plan, truth, oracle) -> dict:
    vw = vw_module.Workspace(f"--cb_explore_adf {args} -q CA --quiet --random_seed {SEED}")
    rng = np.random.default_rng([SEED, 97])
    shown = np.zeros(plan.steps, np.int64)
    clicks = np.zeros(plan.steps, bool)
    choose_ns, learn_ns = np.zeros(plan.steps, np.int64), []
    feedback = _Feedback()
    learned = 0
    clock = time.perf_counter_ns
    try:
        for i in range(plan.steps):
            for lines in feedback.due(i):
                t = clock()
                vw.learn(lines)
                learn_ns.append(clock() - t)
                learned += 1
            c, channel = int(plan.customer[i]), CHANNELS[plan.channel[i]]
            offers = np.flatnonzero(world.eligible[channel])
            t = clock()
            lines = _vw_text(world, c, channel, offers)
            pmf = vw.predict(lines)
            a = int(rng.choice(len(offers), p=np.asarray(pmf) / np.sum(pmf)))
            choose_ns[i] = clock() - t
            k = int(offers[a])
            shown[i] = k
            click = bool(plan.u_click[i] < truth[i, k])
            clicks[i] = click
            labelled = list(lines)
            labelled[1 + a] = f"0:{0.0 if click else 1.0}:{pmf[a]:.6g} " + lines[1 + a]
            feedback.add(i, click, labelled)
    finally:
        vw.finish()
    return _outcome(f"VW {args}", world, plan, truth, oracle, shown, clicks, choose_ns,
                    learn_ns, learned)


# ---------------------------------------------------------------------- our kernels
def _run_ours(policy_name: str, world, plan, truth, oracle) -> dict:
    bayes = pytest.importorskip("kernels.bayes", reason="kernels/bayes.py not there yet")
    explore = pytest.importorskip("kernels.explore", reason="kernels/explore.py not there yet")
    model = tomllib.loads(simulation_catalog(OFFERS, SEED, learning=False))["model"]
    F, D = len(CUSTOMER_FEATURES), len(OFFER_FEATURES)
    A = np.array([model["interactions"].get(f, [0.0] * D) for f in CUSTOMER_FEATURES])
    sm, sp = bayes.prior_from_model(model["intercept"], np.zeros(F), np.zeros(D), A,
                                    SHARED_PRIOR_VARIANCE)
    om, op = bayes.offer_prior(2, OFFERS, F, PRIOR_VARIANCE)  # group 0 shared, 1 web
    E = np.ascontiguousarray(world.E, dtype=np.float64)
    policy = explore.POLICIES[policy_name]
    param = {"epsilon": EPSILON}.get(policy_name, 0.0)
    # compile (or load from the cache) before the clock runs: on copies, learning nothing
    warm = (sm.copy(), sp.copy(), om.copy(), op.copy())
    one = np.zeros((1, F), np.float32)
    bayes.learn(*warm, E, one, np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1))
    z, s = bayes.predict(*warm, E, one, np.zeros(1, np.int32), np.zeros(1, np.int32))
    explore.choose(z, s, np.ones(1), 1, policy, param)
    explore.seed(SEED)
    shown = np.zeros(plan.steps, np.int64)
    clicks = np.zeros(plan.steps, bool)
    choose_ns, learn_ns = np.zeros(plan.steps, np.int64), []
    feedback = _Feedback()
    learned = 0
    clock = time.perf_counter_ns
    vl_cache = {}
    rows_cache = {}
    for h, channel in enumerate(CHANNELS):
        offers = np.flatnonzero(world.eligible[channel]).astype(np.int32)
        rows_cache[h] = (offers, np.full(offers.size, 1 if channel == "web" else 0, np.int32))
        vl_cache[h] = np.ones(offers.size)
    for i in range(plan.steps):
        due = feedback.due(i)
        if due:
            xs = np.ascontiguousarray(np.stack([d[0] for d in due]), dtype=np.float32)
            t = clock()
            bayes.learn(sm, sp, om, op, E, xs, np.array([d[1] for d in due], np.int32),
                        np.array([d[2] for d in due], np.int32),
                        np.array([d[3] for d in due], np.float64))
            learn_ns.append(clock() - t)
            learned += len(due)
        c, h = int(plan.customer[i]), int(plan.channel[i])
        offers, groups = rows_cache[h]
        x = world.X[c]
        t = clock()
        xs = np.broadcast_to(x, (offers.size, F))
        if policy_name == "squarecb":
            param = explore.squarecb_gamma(10.0, 0.5, learned)
        z, s = bayes.predict(sm, sp, om, op, E, np.ascontiguousarray(xs), offers, groups)
        order, _ = explore.choose(z, s, vl_cache[h], 1, policy, param)
        choose_ns[i] = clock() - t
        k = int(offers[order[0]])
        shown[i] = k
        click = bool(plan.u_click[i] < truth[i, k])
        clicks[i] = click
        feedback.add(i, click, (x, k, 1 if h == 0 else 0, 1.0 if click else 0.0))
    return _outcome(f"ours {policy_name}", world, plan, truth, oracle, shown, clicks,
                    choose_ns, learn_ns, learned)


def test_vw_side_by_side():
    world, plan, truth, oracle = _stream()
    _, _, random_rate = world.expectations(plan.customer, plan.channel, plan.drifted)
    record("vw comparison: stream", "oracle click rate", 100 * float(oracle.mean()), "%")
    record("vw comparison: stream", "random click rate", 100 * float(random_rate.mean()), "%")
    vw = {args: _run_vw(args, world, plan, truth, oracle)
          for args in ("--squarecb", f"--epsilon {EPSILON}")}
    try:
        ours = {p: _run_ours(p, world, plan, truth, oracle)
                for p in ("thompson", "squarecb", "epsilon")}
    except pytest.skip.Exception:
        ours = {}
    for row in (*vw.values(), *ours.values()):
        # every learner beats random on this stream
        assert row["expected_rate"] > float(random_rate.mean()), row
    if not ours:
        pytest.skip("our learning kernels are not there yet: VW's figures only")
    best_vw = max(vw.values(), key=lambda r: r["click_rate"])
    best_ours = max(ours.values(), key=lambda r: r["click_rate"])
    n = plan.steps
    se = math.sqrt(best_vw["click_rate"] * (1 - best_vw["click_rate"]) / n
                   + best_ours["click_rate"] * (1 - best_ours["click_rate"]) / n)
    name = f"vw comparison: {best_ours['name']} vs {best_vw['name']}"
    record(name, "click rate ratio", best_ours["click_rate"] / best_vw["click_rate"], "x",
           kind=GOAL, budget=1.0 - 1.96 * se / best_vw["click_rate"], higher_is_better=True)
    record(name, "choose p50 ratio", best_ours["choose_p50_us"] / best_vw["choose_p50_us"],
           "x", kind=GOAL, budget=0.1)
