"""Overload, deadlines, graceful shutdown and request limits, through gRPC."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decision.edge.server import create_server, start
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, free_port, ident, num, text
from tests.test_events import purchase

DECIDE = pb.DecideRequest(customer=ident("x"), channel="web")


@pytest.fixture
def small(settings):
    """A server that works on at most 2 requests at once (4 threads: 2 subscribers)."""
    running = create_server(dataclasses.replace(settings, max_in_flight=2,
                                                metrics_address="127.0.0.1:0"))
    start(running)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield running, ch
    running.stop(grace=None)


class HeldStream:
    """A TrackStream that stays in flight until released: a slow client, no test code
    in the server."""

    def __init__(self, stub, who: str):
        self.release = threading.Event()
        self.sent = threading.Event()

        def events():
            yield pb.EventBatch(events=[purchase(who, 1.0)])
            self.sent.set()
            self.release.wait(30)

        self.future = stub.TrackStream.future(events(), timeout=60)


def _wait_in_flight(running, n: int) -> None:
    deadline = time.monotonic() + 10
    while running.servicer.gate.in_flight < n:
        assert time.monotonic() < deadline, "streams never became in flight"
        time.sleep(0.01)


def _metric(port: int, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_an_overloaded_server_sheds_at_once_and_recovers(small):
    running, ch = small
    stub = pb_grpc.DecisionServiceStub(ch)
    held = [HeldStream(stub, f"held-{i}") for i in range(2)]
    for h in held:
        assert h.sent.wait(10)
    _wait_in_flight(running, 2)
    shed_times = []
    for _ in range(20):
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.Decide(DECIDE, timeout=10)
        shed_times.append(time.perf_counter() - started)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-in-flight" in err.value.details()
    assert max(shed_times) < 0.5  # answered at once, not queued until the deadline
    # the process still answers health checks while it sheds
    health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for h in held:
        h.release.set()
        assert h.future.result(timeout=10).applied == 1  # the held ones complete
    assert stub.Decide(DECIDE, timeout=10).offers  # recovered
    assert _metric(running.metrics_port, "decision_shed_requests_total",
                   method="Decide", reason="in_flight") == 20


def test_subscribers_do_not_starve_calls(settings):
    running = create_server(dataclasses.replace(settings, max_in_flight=1))  # 4 threads: 2 subs
    start(running)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            watchers = [stub.WatchTriggers(pb.WatchTriggersRequest(from_end=True), timeout=30)
                        for _ in range(2)]
            deadline = time.monotonic() + 10
            while running.servicer._watchers < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            for _ in range(5):  # two subscribers hold their threads; calls still served
                assert stub.Decide(DECIDE, timeout=5).offers
            with pytest.raises(grpc.RpcError) as err:  # a third subscriber is refused
                next(stub.WatchTriggers(pb.WatchTriggersRequest(from_end=True), timeout=5))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for w in watchers:
                w.cancel()
    finally:
        running.stop(grace=None)


# A client in its own process: it sends its Track (50 ms deadline) only when told to,
# writes when it sent it (time.monotonic, system-wide) into a shared 8-byte file, and
# prints the status it got.
_LATE_CLIENT = """
import mmap, struct, sys, time, grpc
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.test_events import purchase
with open(sys.argv[2], "r+b") as f:
    sent = mmap.mmap(f.fileno(), 8)
with grpc.insecure_channel(sys.argv[1]) as ch:
    grpc.channel_ready_future(ch).result(timeout=30)
    stub = pb_grpc.DecisionServiceStub(ch)
    print("ready", flush=True)
    sys.stdin.readline()
    future = stub.Track.future(purchase("late", 7.0, event_id="late-1"), timeout=0.05)
    sent[:8] = struct.pack("<d", time.monotonic())
    try:
        future.result()
        print("OK", flush=True)
    except grpc.RpcError as exc:
        print(exc.code().name, flush=True)
"""


def test_no_work_is_done_for_a_caller_whose_deadline_has_passed(running, stub, tmp_path):
    """The server's handler threads cannot start (this thread holds the GIL) until the
    deadline of a Track has passed; the event must not be applied (gRPC drops a call
    cancelled before its handler starts; ``Gate`` checks the deadline as one starts).

    The Track comes from another process, sent only after this thread holds the GIL
    with a 5 s switch interval, and this thread keeps it until 300 ms after the send,
    which it reads from shared memory (reading a map never releases the GIL). A client
    call from this process would release the GIL while sending, and a handler could
    win that race."""
    import mmap
    import struct
    import subprocess
    from pathlib import Path

    shared = tmp_path / "sent"
    shared.write_bytes(bytes(8))
    with shared.open("r+b") as f:
        sent = mmap.mmap(f.fileno(), 8)
    client = subprocess.Popen(
        [sys.executable, "-c", _LATE_CLIENT, f"127.0.0.1:{running.port}", str(shared)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1])
    try:
        assert client.stdout.readline().strip() == "ready"
        old = sys.getswitchinterval()
        sys.setswitchinterval(5.0)  # threads that want the GIL now wait 5 s before asking
        try:
            client.stdin.write("go\n")
            client.stdin.flush()  # the only GIL release: a pipe write, before the send
            give_up = time.monotonic() + 10
            while time.monotonic() < give_up:
                at = struct.unpack("<d", sent[:8])[0]
                if at and time.monotonic() > at + 0.3:
                    break
        finally:
            sys.setswitchinterval(old)
        out, _ = client.communicate(timeout=30)
    finally:
        client.kill()
        sent.close()
    assert out.strip() == "DEADLINE_EXCEEDED"
    time.sleep(0.2)  # a handler that ran anyway would have committed by now
    with pytest.raises(grpc.RpcError) as err:
        stub.GetProfile(pb.GetProfileRequest(customer=ident("late")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_burst_is_shed_then_served_on_retry_and_no_event_is_lost(tmp_path, catalog_file):
    """16 clients stream events at a process that works on 2 requests at once: the
    excess is shed at once, the clients retry with backoff, every stream is applied in
    the end, exactly once."""
    import random

    port, metrics_port = free_port(), free_port()
    server = ServerProcess(tmp_path / "store", catalog_file, port, "--max-in-flight", "2",
                           "--threads", "2", "--metrics-address", f"127.0.0.1:{metrics_port}")
    try:
        server.wait_ready()
        counts = {"served": 0, "shed": 0, "ceiling": 0, "other": 0}
        shed_seconds: list[float] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            with grpc.insecure_channel(server.address) as ch:
                stub = pb_grpc.DecisionServiceStub(ch)
                for r in range(6):
                    events = [purchase("burst", 1.0, event_id=f"c{c}-r{r}-{i}")
                              for i in range(300)]
                    backoff = 0.005
                    while True:
                        started = time.perf_counter()
                        try:
                            summary = stub.TrackStream(iter([pb.EventBatch(events=events)]),
                                                       timeout=30)
                            assert summary.applied == 300
                            with lock:
                                counts["served"] += 1
                            break
                        except grpc.RpcError as exc:
                            shed = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                            # shed by the server's gate, or by gRPC at the outer ceiling
                            kind = ("other" if not shed else "shed"
                                    if "--max-in-flight" in exc.details() else "ceiling")
                            with lock:
                                counts[kind] += 1
                                shed_seconds.append(time.perf_counter() - started)
                            if not shed:
                                return
                            time.sleep(backoff * random.random())
                            backoff = min(backoff * 2, 0.2)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shed_seconds.sort()
        print(f"\nburst (16 clients x 6 streams of 300 events, --max-in-flight 2): "
              f"{counts['served']} served, {counts['shed']} attempts shed "
              f"(+{counts['ceiling']} at gRPC's ceiling), shed answered in "
              f"p50 {1000 * shed_seconds[len(shed_seconds) // 2]:.2f} ms, max "
              f"{1000 * shed_seconds[-1]:.2f} ms")
        assert counts["other"] == 0 and counts["served"] == 96
        assert counts["shed"] > 0, counts
        assert shed_seconds[-1] < 1.0  # refused at once, never queued
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            got = stub.GetProfile(pb.GetProfileRequest(customer=ident("burst")), timeout=10)
            assert got.counters["purchases"] == 96 * 300  # each once: no shed stream applied
            assert stub.Decide(DECIDE, timeout=10).offers
        assert _metric(metrics_port, "decision_shed_requests_total",
                       method="TrackStream") == counts["shed"]
        assert _metric(metrics_port, "decision_request_seconds_count",
                       method="TrackStream", code="OK") == 96
        assert _metric(metrics_port, "decision_events_total", outcome="applied") == 96 * 300
    finally:
        server.stop()


def test_sigterm_drains_and_loses_no_acknowledged_event(tmp_path, catalog_file):
    port = free_port()
    store = tmp_path / "store"
    server = ServerProcess(store, catalog_file, port)
    acked: list[set[str]] = [set() for _ in range(4)]
    server.wait_ready()
    stop = threading.Event()

    def client(c: int) -> None:
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            i = 0
            while not stop.is_set():
                event_id = f"c{c}-{i}"
                try:
                    stub.Track(purchase(f"drain-{c}", 1.0, event_id=event_id), timeout=5)
                    acked[c].add(event_id)
                except grpc.RpcError:
                    if server.proc.poll() is not None:
                        return
                    time.sleep(0.01)
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    held_channel = grpc.insecure_channel(server.address)
    release, sent = threading.Event(), threading.Event()

    def held_events():  # a stream in flight when the signal comes, finishing after it
        yield pb.EventBatch(events=[purchase("drain-held", 1.0, event_id="h-0")])
        sent.set()
        release.wait(10)
        yield pb.EventBatch(events=[purchase("drain-held", 1.0, event_id="h-1")])

    held = pb_grpc.DecisionServiceStub(held_channel).TrackStream.future(held_events(),
                                                                         timeout=30)
    assert sent.wait(10)
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.proc.poll() is None  # draining: the held stream is still in flight
    release.set()
    assert held.result(timeout=10).applied == 2  # finished during the drain
    held_channel.close()
    assert server.proc.wait(timeout=30) == 0
    stop.set()
    for t in threads:
        t.join()
    log = server.stop()
    assert "draining" in log
    assert all(acked), "every client got events acknowledged before the signal"
    server = ServerProcess(store, catalog_file, port)
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            held = stub.GetProfile(pb.GetProfileRequest(customer=ident("drain-held")))
            assert held.counters["purchases"] == 2
            for c in range(4):
                got = stub.GetProfile(pb.GetProfileRequest(customer=ident(f"drain-{c}")))
                # every acknowledged event is there; one may be applied but unacknowledged
                assert len(acked[c]) <= got.counters["purchases"] <= len(acked[c]) + 1
                for event_id in list(acked[c])[:20]:  # a resend is a duplicate: stored
                    assert stub.Track(purchase(f"drain-{c}", 1.0, event_id=event_id)).duplicate
    finally:
        server.stop()


def test_limits_are_set_by_serve_flags_and_named_when_broken(tmp_path, catalog_file):
    server = ServerProcess(
        tmp_path / "store", catalog_file, free_port(), "--max-offers", "4",
        "--max-context-entries", "2", "--max-string-bytes", "16", "--max-attributes", "2",
        "--max-identifiers", "3", "--max-events-per-message", "3",
        "--max-message-bytes", "65536")
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)

            def refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT):
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=10)
                assert err.value.code() == code, err.value.details()
                return err.value.details()

            assert len(stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web",
                                                    limit=4)).offers) <= 4
            assert "between 1 and 4" in refused(stub.Decide, pb.DecideRequest(
                customer=ident("x"), channel="web", limit=5))
            assert "at most 2" in refused(stub.Decide, pb.DecideRequest(
                customer=ident("x"), channel="web",
                context={"a": num(1), "b": num(2), "c": num(3)}))
            assert "longer than 16 bytes" in refused(stub.Decide, pb.DecideRequest(
                customer=ident("x" * 17), channel="web"))
            assert "longer than 16 bytes" in refused(stub.Decide, pb.DecideRequest(
                customer=ident("x"), channel="web", context={"country": text("F" * 17)}))
            assert "at most 3" in refused(stub.UpsertProfile, pb.UpsertProfileRequest(
                identifiers=[ident("a"), ident("b", "cookie"), ident("c", "device_id"),
                             ident("d", "loyalty_id")]))
            assert "at most 2" in refused(stub.UpsertProfile, pb.UpsertProfileRequest(
                identifiers=[ident("a")], attributes={"tier": num(1), "country": text("FR"),
                                                      "vip": pb.Value(bool_value=True)}))
            summary = stub.TrackStream(iter([pb.EventBatch(events=[
                purchase("ev", 1.0) for _ in range(4)])]), timeout=10)
            assert summary.applied == 0 and summary.rejected_count == 4
            assert "at most 3" in summary.rejected[0].message
            assert "max_events_per_message" in summary.rejected[0].message
            assert "65536" in refused(stub.Decide, pb.DecideRequest(
                customer=ident("x"), channel="web", context={"blob": text("x" * 70000)}),
                grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web")).offers
    finally:
        server.stop()
