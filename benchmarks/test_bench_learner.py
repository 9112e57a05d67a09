"""The learning kernels on their own: ``kernels.bayes.learn``'s throughput and
``kernels.explore.choose``'s time per call.

Budget: ``learn`` >= 20,000 examples/s on one core at 32 customer features x 8 offer
features (500 offers, 2 groups, 50,000 examples; the median of 5 passes, each from
the prior), absolute: divided by the machine scale. Goal: 200,000/s.

``choose`` over 150 eligible offers, k = 3 (info): microseconds per call for each
policy; Thompson sampling in three states of knowledge (log-odds variance ~U(0.0005,
0.003) "settled", ~U(0.005, 0.05) "learning", 0.3 "young": the more offers a draw can
reorder, the more competitors each winner's probability integrates over), and
"learning" drawn without the probabilities (``with_prob=False``).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.conftest import ENFORCED, GOAL, enforce, percentiles, record
from kernels.bayes import learn, offer_prior, prior_from_model
from kernels.explore import EPSILON, GREEDY, RANDOM, SQUARECB, THOMPSON, choose, seed

F, D, OFFERS, GROUPS, EXAMPLES, PASSES = 32, 8, 500, 2, 50_000, 5
LEARN_MIN_PER_S, LEARN_GOAL_PER_S = 20_000.0, 200_000.0
ELIGIBLE, K, CALLS = 150, 3, 3_000


def _learning_data(rng):
    e = rng.normal(0, 1, (OFFERS, D))
    prior = prior_from_model(-2.5, rng.normal(0, 0.2, F), rng.normal(0, 0.2, D),
                             rng.normal(0, 0.1, (F, D)), 0.1)
    offer_mean, offer_prec = offer_prior(GROUPS, OFFERS, F, 0.5)
    x = rng.normal(0, 1, (EXAMPLES, F)).astype(np.float32)
    offer = rng.integers(0, OFFERS, EXAMPLES).astype(np.int32)
    group = rng.integers(0, GROUPS, EXAMPLES).astype(np.int32)
    y = (rng.random(EXAMPLES) < 0.08).astype(np.float64)
    return (*prior, offer_mean, offer_prec), e, x, offer, group, y


def test_learner_throughput(machine):
    state, e, x, offer, group, y = _learning_data(np.random.default_rng(15))
    learn(*[a.copy() for a in state], e, x[:100], offer[:100], group[:100], y[:100])  # compiled
    seconds = []
    for _ in range(PASSES):
        fresh = [a.copy() for a in state]
        t = time.perf_counter()
        predicted = learn(*fresh, e, x, offer, group, y)
        seconds.append(time.perf_counter() - t)
        machine.sample(50)
    assert np.isfinite(predicted).all()
    rate = EXAMPLES / float(np.median(seconds))
    name = f"kernel: bayes.learn {F}x{D}"
    record(name, "examples/s (best)", EXAMPLES / min(seconds), "/s")
    row = record(name, "examples/s", rate, "/s", kind=ENFORCED, budget=LEARN_MIN_PER_S,
                 higher_is_better=True, machine=machine)
    record(name, "examples/s goal", rate, "/s", kind=GOAL, budget=LEARN_GOAL_PER_S,
           higher_is_better=True)
    enforce(row, detail={"seconds per pass": [round(s, 4) for s in seconds]})


def _time_choose(z, s, vl, policy, param, with_prob=True):
    choose(z, s, vl, K, policy, param, with_prob)
    clock = time.perf_counter_ns
    ns = []
    for _ in range(CALLS):
        t = clock()
        choose(z, s, vl, K, policy, param, with_prob)
        ns.append(clock() - t)
    return percentiles(ns)


def test_choose_per_policy(machine):
    rng = np.random.default_rng(16)
    seed(16)
    z = rng.normal(-3.0, 1.0, ELIGIBLE)
    vl = rng.uniform(1.0, 10.0, ELIGIBLE)
    learning = rng.uniform(0.005, 0.05, ELIGIBLE)
    cases = [("greedy", learning, GREEDY, 0.0, True),
             ("epsilon 0.1", learning, EPSILON, 0.1, True),
             ("squarecb gamma 100", learning, SQUARECB, 100.0, True),
             ("random", learning, RANDOM, 0.0, True),
             ("thompson settled", rng.uniform(0.0005, 0.003, ELIGIBLE), THOMPSON, 0.0, True),
             ("thompson learning", learning, THOMPSON, 0.0, True),
             ("thompson young", np.full(ELIGIBLE, 0.3), THOMPSON, 0.0, True),
             ("thompson learning, no prob", learning, THOMPSON, 0.0, False)]
    name = f"kernel: explore.choose {ELIGIBLE} k={K}"
    for label, s, policy, param, with_prob in cases:
        p = _time_choose(z, s, vl, policy, param, with_prob)
        record(name, f"{label} p50", p["p50"], "us", machine=machine)
    machine.sample()
