"""Measured ROI at scale (issue 16): a report with attribution over 10 million decisions
and 1 million outcomes, and a what-if over 1 million decisions.

Budgets (enforced, absolute, scaled by the machine factor): ``decision report`` with
every dimension, lift and attribution (7 models, by channel and by offer) <= 20 s;
``decision whatif`` (replay through the kernels, IPS / SNIPS / DR with 200 bootstrap
resamples) <= 30 s. The data sets are built untimed, straight into the export's
Parquet schema by DuckDB (a week of decisions: 5 channels, 50 offers, 1 million
customers, an experiment with a 2% control group, segment changes and merges), and
removed at the end.
"""

from __future__ import annotations

import json
import shutil
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.conftest import ENFORCED, enforce, record
from decision.analytics import whatif as wi
from decision.analytics.export import TABLES
from decision.analytics.report import ReportRequest, report
from decision.config.catalog import load_catalog
from decision.core.recording import replay_facts
from decision.simulate import simulation_catalog
from decision.store.database import ProfileStore

DECISIONS, OUTCOMES, CUSTOMERS = 10_000_000, 1_000_000, 1_000_000
WHATIF_DECISIONS = 1_000_000
REPORT_BUDGET_S, WHATIF_BUDGET_S = 20.0, 30.0
START_MS = 1_764_547_200_000  # 2025-12-01
WEEK_MS = 7 * 86_400_000


def _copy(con, select: str, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY ({select}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")


@pytest.fixture(scope="module")
def big_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("roi-export")
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute(f"""CREATE TABLE d AS SELECT i,
        {START_MS} + (i * {WEEK_MS} // {DECISIONS}) AS decided_ms,
        (hash(i) % {CUSTOMERS} + 1)::UBIGINT AS profile_key,
        ['web', 'app', 'email', 'contact_center', 'kiosk'][1 + (hash(i * 7) % 5)::INTEGER]
            AS channel,
        (hash(i * 13) % 50)::INTEGER AS offer
        FROM range({DECISIONS}) t(i)""")
    _copy(con, """SELECT printf('%012x%08x', decided_ms, i) AS decision_id, decided_ms,
        profile_key, profile_key AS owner, channel, '' AS placement, 'v1' AS catalog_version,
        '7' AS model_version, 'nba' AS experiment,
        CASE WHEN profile_key % 50 = 0 THEN 'control' WHEN profile_key % 10 = 1 THEN 'static'
             ELSE 'learning' END AS arm, 'epsilon' AS policy, '' AS shadow_arm,
        20 AS eligible, 1::SMALLINT AS shown, [0.5::FLOAT] AS features, ''::BLOB AS support
        FROM d""", d / "decisions" / "part-1.parquet")
    _copy(con, """SELECT printf('%012x%08x', decided_ms, i) AS decision_id,
        profile_key AS owner, 'offer-' || offer AS offer_id, offer::SMALLINT AS offer_index,
        1::SMALLINT AS rank, 0.1 AS score, 0.05 AS propensity, 0.9 AS probability,
        1.0 AS value, 1.0 AS lever FROM d""", d / "shown" / "part-1.parquet")
    # outcomes: 600k impressions, 250k clicks, 150k conversions, each on a decision
    _copy(con, f"""WITH o AS (
        SELECT i AS n, (hash(i * 31) % {DECISIONS})::BIGINT AS di,
               CASE WHEN i < 600000 THEN 'impression' WHEN i < 850000 THEN 'click'
                    ELSE 'conversion' END AS kind FROM range({OUTCOMES}) t(i))
        SELECT (o.n + 1)::UBIGINT AS cursor, printf('%012x%08x', d.decided_ms, d.i) AS decision_id,
               'offer-' || d.offer AS offer_id, o.kind, d.decided_ms + 1000 + o.n % 60000 AS at_ms,
               d.channel, CASE WHEN o.kind = 'conversion' THEN 20 + o.n % 80 ELSE 0 END
                   ::DOUBLE AS revenue, d.profile_key
        FROM o JOIN d ON d.i = o.di""", d / "outcomes" / "part-1.parquet")
    _copy(con, f"""SELECT (hash(i) % {CUSTOMERS} + 1)::UBIGINT AS profile_key,
        ['high_value', 'frequent', 'lapsed'][1 + (i % 3)::INTEGER] AS segment,
        i % 4 <> 3 AS entered, {START_MS} + (i * {WEEK_MS} // 200000) AS at_ms
        FROM range(200000) t(i)""", d / "segments" / "part-1.parquet")
    _copy(con, f"""SELECT {START_MS} + i * 1000 AS at_ms,
        (hash(i) % {CUSTOMERS} + 1)::UBIGINT AS survivor,
        (hash(i + 7) % {CUSTOMERS} + 1)::UBIGINT AS merged FROM range(10000) t(i)""",
          d / "merges" / "part-1.parquet")
    for name in ("offers", "catalogs"):
        (d / name).mkdir()
    con.close()
    (d / "state.json").write_text(json.dumps({"schema": 1}))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_report_10m_decisions(big_export, machine):
    request = ReportRequest(START_MS, START_MS + WEEK_MS)
    started = time.perf_counter()
    out = report(big_export, request)
    seconds = time.perf_counter() - started
    machine.sample()
    assert out["totals"]["decisions"] == DECISIONS
    assert out["attribution"]["channel"]["conversions"] == 150_000
    assert {r["arm"] for r in out["lift"]} == {"learning", "static"}
    name = "report + attribution: 10M decisions, 1M outcomes"
    enforce(record(name, "seconds", seconds, "s", kind=ENFORCED, budget=REPORT_BUDGET_S,
                   machine=machine), detail=seconds)


@pytest.fixture(scope="module")
def whatif_data(tmp_path_factory):
    """1M replayable decisions of the simulated world's catalog (8 offers, web, epsilon
    0.3 logging), a store without learned models (the candidate's prior serves)."""
    root = tmp_path_factory.mktemp("whatif")
    catalog_path = root / "catalog.toml"
    catalog_path.write_text(simulation_catalog(8, 1, explore={
        "web": {"policy": "epsilon", "epsilon": 0.3}}))
    catalog = load_catalog(catalog_path)
    store = ProfileStore(root / "store")
    d = root / "store" / "exports"
    rng = np.random.default_rng(1)
    n, f = WHATIF_DECISIONS, len(catalog.feature_names)
    ids = np.char.add(np.char.zfill(np.arange(n).astype(str), 20), "")
    x = rng.normal(0, 1, (n, f)).astype(np.float32)
    offer = rng.integers(0, 8, n)
    for name in TABLES:
        (d / name).mkdir(parents=True)
    features = pa.ListArray.from_arrays(pa.array(np.arange(0, n * f + 1, f, dtype=np.int32)),
                                        pa.array(x.ravel()))
    keys = rng.integers(1, 100_000, n).astype(np.uint64)
    cols = {"decision_id": ids, "decided_ms": np.arange(n, dtype=np.int64) + START_MS,
            "profile_key": keys, "owner": keys, "channel": np.full(n, "web"),
            "placement": np.full(n, ""), "catalog_version": np.full(n, catalog.version),
            "model_version": np.full(n, ""), "experiment": np.full(n, ""),
            "arm": np.full(n, ""), "policy": np.full(n, "epsilon"),
            "shadow_arm": np.full(n, ""), "eligible": np.full(n, 8, dtype=np.int32),
            "shown": np.ones(n, dtype=np.int16), "features": features,
            "support": pa.array([b"\xff"] * n, pa.binary())}
    pq.write_table(pa.table(cols, schema=TABLES["decisions"]), d / "decisions" / "part-1.parquet")
    offer_ids = np.array([o.id for o in catalog.offers])[offer]
    pq.write_table(pa.table({
        "decision_id": ids, "owner": keys, "offer_id": offer_ids,
        "offer_index": offer.astype(np.int16), "rank": np.ones(n, dtype=np.int16),
        "score": np.zeros(n), "propensity": np.zeros(n),
        "probability": rng.choice([0.3 / 8, 0.7 + 0.3 / 8], n), "value": np.ones(n),
        "lever": np.ones(n)}, schema=TABLES["shown"]), d / "shown" / "part-1.parquet")
    clicked = rng.random(n) < 0.2
    pq.write_table(pa.table({
        "cursor": np.arange(clicked.sum(), dtype=np.uint64), "decision_id": ids[clicked],
        "offer_id": offer_ids[clicked], "kind": np.full(clicked.sum(), "click"),
        "at_ms": np.full(clicked.sum(), START_MS), "channel": np.full(clicked.sum(), "web"),
        "revenue": np.zeros(clicked.sum()), "profile_key": keys[clicked]},
        schema=TABLES["outcomes"]), d / "outcomes" / "part-1.parquet")
    pq.write_table(pa.table({"catalog_version": [catalog.version] * 8,
                             "offer_index": np.arange(8, dtype=np.int16),
                             "offer_id": [o.id for o in catalog.offers],
                             "value": np.ones(8), "lever": np.ones(8)},
                            schema=TABLES["offers"]), d / "offers" / "part-1.parquet")
    pq.write_table(pa.table({"catalog_version": [catalog.version],
                             "facts": [json.dumps(replay_facts(catalog))]},
                            schema=TABLES["catalogs"]), d / "catalogs" / "part-1.parquet")
    yield catalog, store, d
    store.close()
    shutil.rmtree(root, ignore_errors=True)


def test_whatif_1m_decisions(whatif_data, machine):
    catalog, store, d = whatif_data
    wi.whatif(d, catalog, store, wi.WhatIfRequest(START_MS, START_MS + 1000))  # compiled
    started = time.perf_counter()
    out = wi.whatif(d, catalog, store, wi.WhatIfRequest(START_MS, START_MS + WEEK_MS))
    seconds = time.perf_counter() - started
    machine.sample()
    assert out["replayed"] == WHATIF_DECISIONS
    assert 0.0 < out["estimate"]["dr"]["value"] < 1.0
    name = "whatif: 1M decisions (IPS, SNIPS, DR, 200 resamples)"
    enforce(record(name, "seconds", seconds, "s", kind=ENFORCED, budget=WHATIF_BUDGET_S,
                   machine=machine), detail=seconds)
