"""Benchmark fixtures: a 1,000-offer catalog over 32 features, 20,000 customers, and
real server processes (the decision server and the empty-handler floor, same settings).

Every benchmark states its budget and fails when it is broken; the figures are
collected into a table printed at the end of the run (and written to
``bench-out/summary.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from decision.demo import customer_id, ensure_demo
from decision.core.engine import DecideQuery, Engine, Identifier
from decision.settings import Settings

N_OFFERS = 1000
N_CUSTOMERS = 20_000
FIGURES: list[dict] = []


def record(name: str, figure: str, measured: float, budget: float, unit: str,
           floor: float | None = None, higher_is_better: bool = False) -> None:
    """Keep one measured figure for the summary table; the caller asserts the budget
    (a ceiling, or with ``higher_is_better`` a minimum)."""
    ok = measured >= budget if higher_is_better else measured <= budget
    FIGURES.append({"benchmark": name, "figure": figure, "measured": measured,
                    "budget": budget, "unit": unit, "floor": floor, "ok": ok,
                    "kind": "min" if higher_is_better else "max"})


def percentiles(ns) -> dict[str, float]:
    """p50/p90/p99/max of nanosecond timings, in microseconds."""
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(a.size)}


def pytest_collection_modifyitems(items):
    """A benchmark that breaks its budget is measured again, up to twice: a shared
    machine can stall for a moment, but a budget that is really broken fails all three
    runs (and every attempt's figures are in the summary table)."""
    here = Path(__file__).parent
    for item in items:
        if Path(item.fspath).parent == here:
            item.add_marker(pytest.mark.flaky(reruns=2))


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("latency budgets (measured in this run)")
    tr.write_line(f"{'benchmark':34} {'figure':22} {'measured':>12} {'budget':>14} "
                  f"{'floor':>10}  ok")
    for f in FIGURES:
        floor = f"{f['floor']:.1f}" if f["floor"] is not None else "-"
        bound = "<=" if f["kind"] == "max" else ">="
        tr.write_line(f"{f['benchmark']:34} {f['figure']:22} {f['measured']:>10.2f}{f['unit']:>2} "
                      f"{bound}{f['budget']:>10.2f}{f['unit']:>2} {floor:>10}  "
                      f"{'yes' if f['ok'] else 'NO'}")
    out = Path("bench-out")
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory) -> Path:
    """Data dir with the benchmark catalog (every offer a candidate on every channel)."""
    root = tmp_path_factory.mktemp("bench")
    ensure_demo(root, n_customers=N_CUSTOMERS, n_offers=N_OFFERS, everywhere=True,
                progress=False)
    return root


@pytest.fixture(scope="session")
def bench_settings(bench_data) -> Settings:
    return Settings(data_dir=bench_data / "profiles", catalog_path=bench_data / "catalog.toml",
                    address="127.0.0.1:0")


@pytest.fixture(scope="session")
def engine(bench_settings) -> Engine:
    e = Engine(bench_settings)
    e.warm()
    return e


def demo_queries(n_customers: int = N_CUSTOMERS) -> list[DecideQuery]:
    """Realistic requests: skewed over customers, with a context the rules read."""
    rng = np.random.default_rng(3)
    picks = (rng.zipf(1.3, 4096) % n_customers).tolist()
    devices = ["mobile", "desktop", "tablet", "kiosk"]
    return [DecideQuery(Identifier("customer_id", customer_id(i)), "web",
                        context={"country": "FR", "device": devices[i % 4], "page": "home",
                                 "language": "fr", "basket": float(i % 300)})
            for i in picks]


@pytest.fixture(scope="session")
def queries() -> list[DecideQuery]:
    return demo_queries()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], address: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "decision.cli", *args,
                                 "--address", address], stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as ch:
        while True:
            try:
                grpc.channel_ready_future(ch).result(timeout=1)
                return proc
            except grpc.FutureTimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"{args[0]} did not start: {log.read_text()}")


@pytest.fixture(scope="session")
def servers(bench_data):
    """(decision server address, floor address): separate processes, same settings."""
    real = f"127.0.0.1:{_free_port()}"
    floor = f"127.0.0.1:{_free_port()}"
    procs = [
        _spawn(["serve", "--data-dir", str(bench_data / "profiles"),
                "--catalog", str(bench_data / "catalog.toml")], real, bench_data / "serve.log"),
        _spawn(["floor"], floor, bench_data / "floor.log"),
    ]
    yield real, floor
    for p in procs:
        p.terminate()
        p.wait(timeout=20)


def issue6_budgets() -> bool:
    """Whether issue 6's tighter budgets are enforced (DECISION_LOAD_BUDGETS=1); they
    are shown in the table either way, and enforced by default once they hold on the
    2-core reference machine."""
    return os.environ.get("DECISION_LOAD_BUDGETS") == "1"


def ci_slack() -> float:
    """Budgets are for a quiet 2-core machine; BENCH_SLACK=1.5 loosens them explicitly
    (never set by default, never in CI)."""
    return float(os.environ.get("BENCH_SLACK", "1"))
