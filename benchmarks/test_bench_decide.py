"""The whole in-process decide over 1,000 candidate offers: validation, LMDB read,
kernels (rules, contact policies, scoring, top-k), answer objects. Budget (issue 3):
p99 <= 100 us, in steady state; issue 6's p99 <= 50 us is shown beside it, enforced with
DECISION_LOAD_BUDGETS=1.

The warm-up asks once for every customer of the query set. A process's first read of
a profile's page of the memory map is a page fault, paid once per page per process
lifetime; measured here, that first pass alone has a p99 of about 190 us, and the
passes after it about 78 us (p50 40 us either way). The measured rounds are the
steady state a serving process is in."""

from __future__ import annotations


import numpy as np

from benchmarks.conftest import ci_slack, issue6_budgets, percentiles, record

BUDGET_P99_US = 100.0
# issue 6 halves it; shown in the table, enforced with DECISION_LOAD_BUDGETS=1 until it
# holds on the 2-core reference machine (benchmarks/README.md)
TIGHT_P99_US = 50.0


def test_in_process_decide(benchmark, engine, queries):
    it = iter(queries * 10)
    decision = benchmark.pedantic(lambda: engine.decide(next(it)), rounds=20_000,
                                  iterations=1, warmup_rounds=len(queries))
    assert decision.offers and decision.eligible_count > 100
    p = percentiles(np.asarray(benchmark.stats.stats.data) * 1e9)
    record("in-process decide (1000 offers)", "p50", p["p50"], BUDGET_P99_US, "us")
    record("in-process decide (1000 offers)", "p99", p["p99"], BUDGET_P99_US, "us")
    record("in-process decide (1000 offers)", "p99 (issue 6)", p["p99"], TIGHT_P99_US, "us")
    budget = TIGHT_P99_US if issue6_budgets() else BUDGET_P99_US
    assert p["p99"] <= budget * ci_slack(), p
