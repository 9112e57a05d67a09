"""In-process decide with more active customers than the tail memo holds
(``decision.core.tails``): 60,000 customers against the memo's default 50,000 places
(the production limit, not lowered for the test), every customer asked in turn, so
most reads miss and each miss takes the place of a kept profile.

A memo that emptied itself at once when full made the request that filled it pay for
dropping 50,000 entries: 21-32 ms holding the GIL (12-17 ms of CPU on the 2-core
machine with neighbours), every other request of the process waiting behind it. The
measured rounds are one pass over all the customers in a shuffled order: whatever the
memo held before, a pass over more distinct customers than it has places fills it, so
a memo that clears itself when full clears itself at least once here.

Budgets (absolute ones scaled by the machine factor, benchmarks/README.md):

- the worst request's own CPU time (``time.thread_time``: preemption by a neighbour
  does not count, a stall the request causes does) <= 5 ms, enforced and not scaled:
  it is the figure that separates per-request eviction (~0.4 ms at worst) from a
  clear-all (>= 12 ms);
- p99.9 of that CPU time <= 1 ms, enforced: eviction's share of a request stays small;
- p99.9 of the wall time <= 5 ms, enforced: generous, because the wall clock counts
  preemption (on the 2-core machine shared with other jobs, load average 3-4, it
  measured 4.2-8.2 ms with a machine factor of 2.1-2.4, against ~0.3 ms quiet). One
  clear-all per 50,000 misses shows in the max, not in a percentile, so this one only
  guards against every request's memo work growing;
- the worst request's wall time <= 5 ms: a goal, shown, never failing the run (on a
  shared machine a request can be preempted for longer than that).

The timed call is ``Engine.decide`` with two ``thread_time_ns`` reads around it. The
warm-up is another shuffled pass over every customer, so each page of the map has been
read once (a first read is a page fault) and the memo is full. The data set is built
for this module (~15 s, untimed) and removed after it."""

from __future__ import annotations

import gc
import shutil
import time

import numpy as np
import pytest

from benchmarks.conftest import ENFORCED, GOAL, N_OFFERS, enforce, percentiles, record
from decision.core.engine import DecideQuery, Engine, Identifier
from decision.core.tails import DEFAULT_LIMIT
from decision.demo import customer_id, ensure_demo
from decision.settings import Settings

N_CUSTOMERS = 60_000  # more than the memo holds (DEFAULT_LIMIT, 50,000)
MAX_CPU_US = 5_000.0
P999_CPU_US = 1_000.0
P999_WALL_US = 5_000.0
MAX_WALL_GOAL_US = 5_000.0
NAME = "decide, 60k customers > memo"


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """An engine over N_CUSTOMERS demo profiles (the benchmark catalog), removed after."""
    root = tmp_path_factory.mktemp("memo")
    try:
        ensure_demo(root, n_customers=N_CUSTOMERS, n_offers=N_OFFERS, everywhere=True,
                    progress=False)
        engine = Engine(Settings(data_dir=root / "profiles",
                                 catalog_path=root / "catalog.toml"))
        try:
            engine.warm()
            yield engine
        finally:
            engine.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _query(i: int) -> DecideQuery:
    devices = ("mobile", "desktop", "tablet", "kiosk")
    return DecideQuery(Identifier("customer_id", customer_id(i)), "web",
                       context={"country": "FR", "device": devices[i % 4], "page": "home",
                                "language": "fr", "basket": float(i % 300)})


def test_memo_over_capacity(benchmark, crowd, machine):
    engine = crowd
    memo = engine.active.tails
    assert memo.limit == DEFAULT_LIMIT < N_CUSTOMERS
    rng = np.random.default_rng(7)
    warm = [_query(int(i)) for i in rng.permutation(N_CUSTOMERS)]
    measured = [_query(int(i)) for i in rng.permutation(N_CUSTOMERS)]
    queries = iter(warm + measured)
    # a calibration sample every 5,000 rounds (untimed), then a few decisions to have
    # the caches back before the next timed one
    tick = machine.every(5000, then=lambda: [engine.decide(q) for q in warm[:8]])

    def one_query():
        tick()
        return (next(queries),), {}

    cpu: list[int] = []
    clock, decide = time.thread_time_ns, engine.decide

    def timed(query):
        t = clock()
        decision = decide(query)
        cpu.append(clock() - t)
        return decision

    collections: list[int] = []

    def count(phase, info):
        if phase == "start" and len(cpu) > len(warm):
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        decision = benchmark.pedantic(timed, setup=one_query, rounds=len(measured),
                                      iterations=1, warmup_rounds=len(warm))
    finally:
        gc.callbacks.remove(count)
    machine.sample()
    assert decision.offers and not decision.cold_start
    wall = np.asarray(benchmark.stats.stats.data) * 1e9
    w, c = percentiles(wall), percentiles(cpu[-len(measured):])
    w["p99.9"] = float(np.percentile(wall, 99.9)) / 1e3
    c["p99.9"] = float(np.percentile(cpu[-len(measured):], 99.9)) / 1e3
    benchmark.extra_info.update({"machine_factor": machine.factor, "cpu_us": c,
                                 "gc_collections": len(collections)})
    record(NAME, "p50", w["p50"], "us")
    record(NAME, "p99", w["p99"], "us")
    rows = (record(NAME, "max (CPU time)", c["max"], "us", kind=ENFORCED, budget=MAX_CPU_US),
            record(NAME, "p99.9 (CPU time)", c["p99.9"], "us", kind=ENFORCED,
                   budget=P999_CPU_US, machine=machine),
            record(NAME, "p99.9", w["p99.9"], "us", kind=ENFORCED, budget=P999_WALL_US,
                   machine=machine),
            record(NAME, "max", w["max"], "us", kind=GOAL, budget=MAX_WALL_GOAL_US,
                   machine=machine))
    enforce(*rows, detail={"wall": w, "cpu": c, "gc collections while measuring, by "
                           "generation": {g: collections.count(g) for g in (0, 1, 2)}})
    assert len(memo) == memo.limit  # full, and never past its limit
