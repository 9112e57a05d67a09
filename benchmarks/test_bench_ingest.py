"""Event ingestion over loopback, against a real server process (durable commits).

Budgets (issue 4, enforced): Track p99 <= 2 ms with one request in flight; TrackStream
>= 20,000 events/s on the 2-core machine. Both are absolute, so both are scaled by the
machine factor (sampled before and after). Every event is fsync-durable when
acknowledged; the stream's throughput comes from group commit (many events per
transaction). The floor column is the empty-handler server reading the same stream
(the transport alone: it parses 500-event messages at over a million events/s, so it
is no bound here).

A durable Track waits on the disk, which the CPU's machine factor does not measure: a
shared disk can be ten times slower at its p99 for minutes. So Track's floor is the
disk itself, measured interleaved with the calls (one durable LMDB commit of one small
value, in the same file system, before each call), and its p99 beyond the quiet day's
(``DISK_P99_REFERENCE_US``) is added to the budget: the server is held to 2 ms of its
own, never to the disk's bad minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import lmdb
import numpy as np

from benchmarks.conftest import ENFORCED, N_CUSTOMERS, enforce, percentiles, record
from decision.demo import customer_id
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

TRACK_P99_BUDGET_US = 2000.0
DISK_P99_REFERENCE_US = 1500.0  # a durable one-value LMDB commit: p99 1.3-1.5 ms here, 2026-12
STREAM_RATE_BUDGET = 20_000.0
STREAM_EVENTS = 60_000
BATCH = 500  # events per stream message


def _events(n: int, seed: int, prefix: str) -> list[pb.Event]:
    rng = np.random.default_rng(seed)
    who = (rng.zipf(1.3, n) % N_CUSTOMERS).tolist()
    kinds = rng.integers(0, 10, n).tolist()
    out = []
    for i, (c, kind) in enumerate(zip(who, kinds)):
        customer = pb.Identifier(kind="customer_id", value=customer_id(c))
        if kind < 6:
            ev = pb.Event(type="page_view", customer=customer,
                          attributes={"page": pb.Value(string_value="home")})
        elif kind < 9:
            ev = pb.Event(type="add_to_cart", customer=customer, attributes={
                "sku": pb.Value(string_value=f"SKU-{i % 97}"),
                "price": pb.Value(number_value=19.9)})
        else:
            ev = pb.Event(type="purchase", customer=customer, attributes={
                "sku": pb.Value(string_value=f"SKU-{i % 97}"),
                "amount": pb.Value(number_value=42.0)})
        ev.event_id = f"{prefix}-{i}"
        ev.channel = "web"
        out.append(ev)
    return out


def _settle_disk() -> None:
    """Write back what earlier benchmarks left dirty in the page cache (the campaign's
    million profiles), so this durable benchmark's fsyncs do not queue behind it."""
    os.sync()


class DiskFloor:
    """Durable one-value commits to an LMDB of its own beside the server's store: what
    the disk alone costs a durable write, timed at the moment of each call."""

    def __init__(self, directory: Path):
        self.env = lmdb.open(str(directory), map_size=1 << 24, sync=True, metasync=True)
        self.times_ns: list[int] = []
        self.n = 0

    def commit(self) -> None:
        self.n += 1
        started = time.perf_counter_ns()
        with self.env.begin(write=True) as txn:
            txn.put(b"k%d" % (self.n % 64), b"v" * 64)
        self.times_ns.append(time.perf_counter_ns() - started)


def test_track_latency(benchmark, servers, bench_data, machine):
    real_addr, _ = servers
    events = _events(3000, seed=1, prefix=f"track-{time.time_ns()}")
    disk = DiskFloor(bench_data / "disk-floor")
    with grpc.insecure_channel(real_addr) as channel:
        track = pb_grpc.DecisionServiceStub(channel).Track
        for ev in events[:200]:
            track(ev)
        _settle_disk()
        it = iter(events[200:])
        benchmark.pedantic(lambda: track(next(it)), setup=disk.commit, rounds=2500,
                           iterations=1)
    disk.env.close()
    machine.sample()
    p = percentiles(np.asarray(benchmark.stats.stats.data) * 1e9)
    floor = percentiles(np.asarray(disk.times_ns, dtype=float))
    name = "Track (durable), one in flight"
    record(name, "p50", p["p50"], "us", floor=floor["p50"])
    record(name, "disk commit p99 (floor)", floor["p99"], "us")
    enforce(record(name, "p99", p["p99"], "us", kind=ENFORCED, budget=TRACK_P99_BUDGET_US,
                   machine=machine, floor=floor["p99"],
                   allowance=max(0.0, floor["p99"] - DISK_P99_REFERENCE_US)),
            detail={"track": p, "disk": floor})


def test_track_stream_throughput(benchmark, servers, machine):
    real_addr, floor_addr = servers
    rates = {}
    for name, address in (("floor", floor_addr), ("real", real_addr)):
        events = _events(STREAM_EVENTS, seed=2, prefix=f"stream-{name}-{time.time_ns()}")
        messages = [pb.EventBatch(events=events[i:i + BATCH])
                    for i in range(0, STREAM_EVENTS, BATCH)]
        with grpc.insecure_channel(address) as channel:
            stream = pb_grpc.DecisionServiceStub(channel).TrackStream
            stream(iter(messages[:2]))  # connection and caches warm (not counted)
            _settle_disk()
            started = time.perf_counter()
            summary = stream(iter(messages))
            rates[name] = STREAM_EVENTS / (time.perf_counter() - started)
        assert summary.received == STREAM_EVENTS
        if name == "real":
            assert summary.applied == STREAM_EVENTS - 2 * BATCH  # the warm-up ones repeat
            assert not summary.rejected
    benchmark.extra_info.update(rates)
    benchmark.pedantic(lambda: None, rounds=1)  # the figure is the rate above
    machine.sample()
    name = f"TrackStream (durable, {BATCH}/msg)"
    enforce(record(name, "events/s", rates["real"], "/s", kind=ENFORCED,
                   budget=STREAM_RATE_BUDGET, higher_is_better=True, machine=machine,
                   floor=rates["floor"]), detail=rates)
