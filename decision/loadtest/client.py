"""One client process: sends the load on schedule and reports latency per interval.

Open loop (``rate``): request *i* is due at ``start + i / rate`` and is sent then,
whether or not the earlier ones have returned (gRPC futures: any number in flight).
Its latency is measured from that *scheduled* time, not from when it actually left,
so a server (or client) stall shows up in the latency of every request that was due
during it: no coordinated omission. Closed loop (``concurrency``): that many requests
are outstanding at all times, each sent as another returns, latency measured from the
send, which is how a fixed pool of callers sees the server (and what hides stalls).

Every ``interval_s`` the process drains the completions into fresh HDR histograms
(microseconds) and hands them, encoded, to a sink: the parent merges the processes'
intervals and totals from those.
"""

from __future__ import annotations

import collections
import gc
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from hdrh.histogram import HdrHistogram

from decision.loadtest.workload import METHODS, Requests, Workload
from decision.v1 import decision_pb2_grpc as pb_grpc

LOWEST_US, HIGHEST_US, DIGITS = 1, 120_000_000, 3  # 1 us .. 2 min, 3 significant digits


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class LoadTestError(RuntimeError):
    """The load test cannot run as asked (cannot connect, bad option); says why."""


@dataclass(frozen=True)
class Target:
    """Where to send, and how: plaintext by default; a bearer token and TLS when set."""

    address: str
    token: str | None = None  #: sent as ``authorization: Bearer <token>`` on every call
    tls_ca: str | None = None  #: PEM root certificate(s): TLS with these roots
    tls_server_name: str | None = None  #: expected name in the server's certificate
    options: tuple = ()  #: extra gRPC channel options, (key, value) pairs

    def metadata(self) -> tuple | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def channel(self) -> grpc.Channel:
        # each channel its own connection (a local subchannel pool): with N
        # connections, SO_REUSEPORT spreads them over the server's workers
        options = [("grpc.use_local_subchannel_pool", 1), *self.options]
        if self.tls_ca is None:
            return grpc.insecure_channel(self.address, options=options)
        try:
            with open(self.tls_ca, "rb") as f:
                roots = f.read()
        except OSError as exc:
            raise LoadTestError(f"--tls-ca {self.tls_ca}: {exc.strerror}") from None
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(roots), options)


@dataclass(frozen=True)
class Load:
    """How hard and how long. ``rate`` (open loop) or ``concurrency`` (closed loop) is
    the total over all client processes; each process takes its share."""

    rate: float = 0.0  #: requests/s, open loop; 0: closed loop
    concurrency: int = 0  #: requests outstanding, closed loop
    duration_s: float = 10.0  #: measured time, after the warm-up
    warmup_s: float = 1.0  #: load sent first and not counted
    requests: int = 0  #: stop after this many requests in all (warm-up included); 0: no cap
    timeout_s: float = 10.0  #: per-request deadline (DEADLINE_EXCEEDED beyond)
    processes: int = 1
    connections: int = 1  #: gRPC channels (TCP connections) per process
    interval_s: float = 0.25  #: time-series resolution
    max_in_flight: int = 50_000  #: per process; past it the sender waits (still charged)
    #: the client process's GIL switch interval: the sender, gRPC's completion thread and
    #: the recorder share one GIL, and Python's default 5 ms lets one hold up the others
    switch_interval_s: float = 0.0002

    def __post_init__(self) -> None:
        if (self.rate > 0) == (self.concurrency > 0):
            raise LoadTestError("give either a rate (open loop) or a concurrency "
                                "(closed loop), not both")
        if self.rate < 0 or self.concurrency < 0:
            raise LoadTestError("rate and concurrency must be positive")
        if self.processes < 1 or self.connections < 1:
            raise LoadTestError("--processes and --connections must be >= 1")
        if self.concurrency and self.concurrency < self.processes:
            raise LoadTestError(f"--concurrency {self.concurrency} is less than --processes "
                                f"{self.processes}: each process needs at least one")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.interval_s <= 0:
            raise LoadTestError("--duration must be > 0, --warmup >= 0")
        if self.timeout_s <= 0:
            raise LoadTestError("--timeout must be > 0")

    @property
    def open_loop(self) -> bool:
        return self.rate > 0

    def share(self, index: int) -> tuple[float, int, int]:
        """This process's (rate, concurrency, request cap)."""
        p = self.processes

        def split(n: int) -> int:
            return n // p + (1 if index < n % p else 0)

        return self.rate / p, split(self.concurrency), split(self.requests)


class _Sender:
    """Issues requests as futures; completions land in a deque (thread-safe append)."""

    def __init__(self, target: Target, load: Load, workload: Workload, index: int):
        self.load = load
        self.requests = Requests(workload, index)
        self.channels = [target.channel() for _ in range(load.connections)]
        self.calls = []
        for ch in self.channels:
            stub = pb_grpc.DecisionServiceStub(ch)
            self.calls.append({k: getattr(stub, METHODS[k]).future for k in workload.mix})
        self.metadata = target.metadata()
        self.completions: collections.deque = collections.deque()
        self.lags: collections.deque = collections.deque()
        self.sent = 0
        self.stop = threading.Event()
        self.finished_ns = 0  # when the last request was sent

    def connect(self, address: str, timeout: float = 10.0) -> None:
        for ch in self.channels:
            try:
                grpc.channel_ready_future(ch).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                raise LoadTestError(f"cannot connect to {address} within {timeout:g} s "
                                    "(is a server listening there?)") from None

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    def _send(self, due_ns: int) -> None:
        kind, msg = self.requests.next()
        calls = self.calls[self.sent % len(self.calls)]
        self.sent += 1
        done = self.completions.append
        clock = time.monotonic_ns
        future = calls[kind](msg, timeout=self.load.timeout_s, metadata=self.metadata)
        future.add_done_callback(lambda f: done((kind, due_ns, clock(), f.code())))

    def open_loop(self, start_ns: int, end_ns: int, rate: float, cap: int) -> None:
        """Send request i at start + i/rate, no matter what is still in flight."""
        period = 1e9 / rate
        clock, sleep = time.monotonic_ns, time.sleep
        lags = self.lags.append
        max_in_flight = self.load.max_in_flight
        i = 0
        while not self.stop.is_set():
            due = start_ns + int(i * period)
            if due >= end_ns or (cap and i >= cap):
                break
            now = clock()
            if due - now > 30_000:
                sleep((due - now) / 1e9)
            while self.sent - self._completed_hint() >= max_in_flight:
                sleep(0.0005)  # the wait is charged: latency counts from `due`
            lags(clock() - due)
            self._send(due)
            i += 1
        self.finished_ns = clock()

    def closed_loop(self, end_ns: int, concurrency: int, cap: int) -> None:
        """Keep ``concurrency`` requests outstanding until ``end_ns`` (or ``cap``)."""
        clock = time.monotonic_ns
        local = threading.local()
        lock = threading.Lock()

        def issue() -> None:
            # a callback can run inside add_done_callback (the call already failed):
            # loop instead of recursing
            if getattr(local, "active", False):
                local.pending += 1
                return
            local.active, local.pending = True, 1
            try:
                while local.pending:
                    local.pending -= 1
                    with lock:
                        if self.stop.is_set() or clock() >= end_ns or (cap and self.sent >= cap):
                            if not self.finished_ns:
                                self.finished_ns = clock()
                            continue
                        kind, msg = self.requests.next()
                        calls = self.calls[self.sent % len(self.calls)]
                        self.sent += 1
                    t = clock()
                    future = calls[kind](msg, timeout=self.load.timeout_s,
                                         metadata=self.metadata)
                    future.add_done_callback(
                        lambda f, kind=kind, t=t: (self.completions.append(
                            (kind, t, clock(), f.code())), issue()))
            finally:
                local.active = False

        for _ in range(concurrency):
            issue()

    drained = 0

    def _completed_hint(self) -> int:
        return self.drained + len(self.completions)


def run_client(target: Target, load: Load, workload: Workload, index: int, sink, go) -> None:
    """Run one client process's share of the load.

    ``sink(message)`` receives ``("ready", index)`` once connected, then ``("tick",
    dict)`` every interval and ``("done", dict)`` at the end (``("error", index, text)``
    instead if it cannot run). ``go()`` blocks until the parent says start and returns
    the common start time (``time.monotonic_ns``, the same clock in every process).
    """
    try:
        sender = _Sender(target, load, workload, index)
        sender.connect(target.address, timeout=min(10.0, load.timeout_s))
    except LoadTestError as exc:
        sink(("error", index, str(exc)))
        return
    sys.setswitchinterval(load.switch_interval_s)
    gc.collect()
    gc.freeze()  # what exists now is never scanned again: short collections while measuring
    sink(("ready", index))
    start_ns = go()
    cpu0 = time.process_time()
    rate, concurrency, cap = load.share(index)
    interval_ns = int(load.interval_s * 1e9)
    end_ns = start_ns + int((load.warmup_s + load.duration_s) * 1e9)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            if load.open_loop:
                sender.open_loop(start_ns, end_ns, rate, cap)
            else:
                time.sleep(max(0, start_ns - time.monotonic_ns()) / 1e9)
                sender.closed_loop(end_ns, concurrency, cap)
        except BaseException as exc:  # reported to the parent, never lost in a thread
            failure.append(exc)
            sender.stop.set()
            sender.finished_ns = sender.finished_ns or time.monotonic_ns()

    thread = threading.Thread(target=send, name="loadtest-sender", daemon=True)
    thread.start()

    drain_deadline = None
    tick = 0
    while True:
        wake = start_ns + (tick + 1) * interval_ns
        delay = (wake - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        sending = thread.is_alive() or (not load.open_loop and not sender.finished_ns)
        in_flight = sender.sent - sender.drained - len(sender.completions)
        last = not sending and in_flight == 0
        if not sending and drain_deadline is None:
            drain_deadline = time.monotonic_ns() + int((load.timeout_s + 2) * 1e9)
        if drain_deadline is not None and time.monotonic_ns() > drain_deadline:
            last = True  # deadlines make this unreachable in practice; never hang
        sink(("tick", _tick(sender, index, tick, load)))
        tick += 1
        if last:
            break
    stuck = sender.sent - sender.drained
    sender.close()
    if failure:
        sink(("error", index, f"client process {index} failed: {failure[0]!r}"))
        return
    sink(("done", {"process": index, "sent": sender.sent, "unfinished": stuck,
                   "cpu_s": time.process_time() - cpu0,
                   "wall_s": (time.monotonic_ns() - start_ns) / 1e9,
                   "sending_ended_s": ((sender.finished_ns or time.monotonic_ns())
                                       - start_ns) / 1e9}))


def _tick(sender: _Sender, index: int, tick: int, load: Load) -> dict:
    hists: dict[str, HdrHistogram] = {}
    errors: Counter = Counter()
    completions = sender.completions
    n = len(completions)
    for _ in range(n):
        kind, t0, t1, code = completions.popleft()
        if code is grpc.StatusCode.OK:
            h = hists.get(kind)
            if h is None:
                h = hists[kind] = histogram()
            h.record_value(max(LOWEST_US, (t1 - t0 + 999) // 1000))
        else:
            errors[f"{kind}:{code.name}"] += 1
    sender.drained += n
    lag = histogram()
    lags = sender.lags
    for _ in range(len(lags)):
        lag.record_value(max(LOWEST_US, lags.popleft() // 1000))
    return {"process": index, "tick": tick, "t_end_s": (tick + 1) * load.interval_s,
            "hists": {k: h.encode() for k, h in hists.items()},
            "lag": lag.encode() if lag.get_total_count() else None,
            "errors": dict(errors), "sent": sender.sent,
            "in_flight": sender.sent - sender.drained}
