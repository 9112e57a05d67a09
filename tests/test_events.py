"""Event ingestion through gRPC: Track, TrackStream, idempotency, durability."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import TEST_CATALOG, ServerProcess, free_port, ident, num, text, two_servers


def purchase(who: str, amount: float, event_id: str = "", sku: str = "SKU-1",
             timestamp_ms: int = 0) -> pb.Event:
    return pb.Event(type="purchase", customer=ident(who), event_id=event_id,
                    timestamp_ms=timestamp_ms, channel="web",
                    attributes={"amount": num(amount), "sku": text(sku)})


def batches(events, size):
    return iter([pb.EventBatch(events=events[i:i + size]) for i in range(0, len(events), size)])


def test_an_over_limit_stream_message_is_rejected_and_the_rest_applied(stub):
    big = [purchase("lou", 1.0) for _ in range(5001)]
    summary = stub.TrackStream(iter([pb.EventBatch(events=[purchase("lou", 2.0)]),
                                     pb.EventBatch(events=big),
                                     pb.EventBatch(events=[purchase("lou", 3.0)])]))
    assert (summary.received, summary.applied) == (5003, 2)
    assert summary.rejected_count == 5001 and len(summary.rejected) == 1000  # listed: 1,000
    assert summary.rejected[0].index == 1
    assert summary.rejected[0].message.startswith("events: 5001 in one message, at most 5000")
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("lou")))
    assert got.counters["revenue"] == 5.0


def test_track_applies_the_declared_effects_at_once(stub):
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("eve")],
                                               features={"recency": 5.0, "monetary": 1.0}))
    reply = stub.Track(purchase("eve", 120.0, timestamp_ms=1_790_000_000_000, sku="A7"))
    assert not reply.duplicate
    stub.Track(purchase("eve", 30.0, sku="B2"))
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("eve")))
    assert got.profile_key == reply.profile_key
    assert got.counters["purchases"] == 2
    assert got.counters["revenue"] == 150.0
    assert got.attributes["last_purchase_ms"].number_value > 1_790_000_000_000  # 2nd: now
    assert got.attributes["last_sku"].string_value == "B2"
    assert got.features["monetary"] == pytest.approx(1.0 + 1.5)  # scale 0.01
    assert got.features["recency"] == 0.0


def test_the_profile_remembers_its_last_twenty_events(stub):
    stub.Track(purchase("rita", 10.0, sku="A1"))
    for i in range(24):
        stub.Track(pb.Event(type="page_view", customer=ident("rita"), channel="web",
                            attributes={"page": text(f"p{i}")}))
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("rita"))).recent_events
    assert len(got) == 20  # the purchase and the first four page views are forgotten
    assert [e.type for e in got] == ["page_view"] * 20
    assert got[0].at_ms >= got[-1].at_ms and got[0].channel == "web"  # newest first


def test_next_decision_sees_the_event(stub):
    ask = pb.DecideRequest(customer=ident("fay"), channel="web", context={"country": text("FR")})
    stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("fay")], attributes={"tier": num(1), "country": text("FR")}))
    assert "gold-upgrade" not in [o.offer_id for o in stub.Decide(ask).offers]
    stub.Track(pb.Event(type="tier_change", customer=ident("fay"),
                        attributes={"tier": num(3)}))
    assert stub.Decide(ask).offers[0].offer_id == "gold-upgrade"


def test_an_unknown_customer_gets_a_profile(stub):
    reply = stub.Track(pb.Event(type="page_view", customer=ident("ck-1", "cookie"),
                                attributes={"page": text("home")}))
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("ck-1", "cookie")))
    assert got.profile_key == reply.profile_key
    assert got.counters["page_views"] == 1


def test_duplicate_deliveries_apply_once(stub):
    first = stub.Track(purchase("gus", 10.0, event_id="order-1"))
    again = stub.Track(purchase("gus", 10.0, event_id="order-1"))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.profile_key == first.profile_key
    summary = stub.TrackStream(iter([pb.EventBatch(events=[
        purchase("gus", 10.0, event_id="order-1"), purchase("gus", 5.0, event_id="order-2")]),
        pb.EventBatch(events=[purchase("gus", 5.0, event_id="order-2")])]))
    assert (summary.applied, summary.duplicates) == (1, 2)
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("gus")))
    assert got.counters["purchases"] == 2 and got.counters["revenue"] == 15.0


@pytest.mark.parametrize("event, field", [
    (pb.Event(type="refund", customer=ident("h")), "type"),
    (pb.Event(customer=ident("h")), "type"),
    (pb.Event(type="page_view"), "customer.value"),
    (pb.Event(type="page_view", customer=ident("h", "passport")), "customer.kind"),
    (pb.Event(type="purchase", customer=ident("h"), attributes={"sku": text("x")}),
     "attributes['amount']"),
    (pb.Event(type="purchase", customer=ident("h"),
              attributes={"amount": text("12"), "sku": text("x")}), "attributes['amount']"),
    (pb.Event(type="purchase", customer=ident("h"),
              attributes={"amount": num(float("nan")), "sku": text("x")}),
     "attributes['amount']"),
    (pb.Event(type="page_view", customer=ident("h"), timestamp_ms=int(time.time() * 1000)
              + 3_600_000), "timestamp_ms"),
    (pb.Event(type="page_view", customer=ident("h"), timestamp_ms=-5), "timestamp_ms"),
    (pb.Event(type="page_view", customer=ident("h"), channel="fax"), "channel"),
    (pb.Event(type="page_view", customer=ident("h"), event_id="e" * 300), "event_id"),
])
def test_bad_events_are_invalid_argument_naming_the_field(stub, event, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Track(event)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # nothing was applied
        stub.GetProfile(pb.GetProfileRequest(customer=ident("h")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_stream_applies_the_valid_events_and_reports_the_rest(stub):
    events = []
    for i in range(3000):
        if i % 500 == 7:
            events.append(pb.Event(type="purchase", customer=ident(f"s{i % 10}"),
                                   attributes={"amount": text("oops"), "sku": text("x")}))
        elif i == 1234:
            events.append(pb.Event(type="nope", customer=ident("s1"), event_id="bad-type"))
        else:
            events.append(purchase(f"s{i % 10}", 1.0, event_id=f"ev-{i}"))
    summary = stub.TrackStream(batches(events, 64))
    assert summary.received == 3000
    assert [r.index for r in summary.rejected] == [7, 507, 1007, 1234, 1507, 2007, 2507]
    assert summary.rejected[0].message.startswith("attributes['amount']: expected a number")
    assert summary.rejected[3].event_id == "bad-type"
    assert summary.rejected[3].message.startswith("type: unknown event type 'nope'")
    assert summary.applied == 3000 - 7 and summary.duplicates == 0
    total = sum(stub.GetProfile(pb.GetProfileRequest(customer=ident(f"s{c}"))).counters[
        "purchases"] for c in range(10))
    assert total == summary.applied


def test_concurrent_tracks_share_commits_and_lose_nothing(stub):
    def send(worker: int) -> None:
        for i in range(50):
            stub.Track(purchase("crowd", 1.0, event_id=f"w{worker}-{i}"))

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("crowd")))
    assert got.counters["purchases"] == 400


def test_the_other_process_sees_the_event_at_once(tmp_path):
    with two_servers(tmp_path / "store", TEST_CATALOG) as (stub_a, stub_b):
        stub_a.UpsertProfile(pb.UpsertProfileRequest(
            identifiers=[ident("ivy")], attributes={"country": text("FR"), "tier": num(0)}))
        ask = pb.DecideRequest(customer=ident("ivy"), channel="kiosk",
                               context={"country": text("FR")})
        for step in range(5):
            stub_a.Track(pb.Event(type="seat_change", customer=ident("ivy"),
                                  attributes={"seat": text(f"{step + 1}A")}))
            # the kiosk (process b) sees the seat on its very next request
            seat = stub_b.GetProfile(pb.GetProfileRequest(customer=ident("ivy")))
            assert seat.attributes["seat"].string_value == f"{step + 1}A"
        stub_a.Track(pb.Event(type="tier_change", customer=ident("ivy"),
                              attributes={"tier": num(3)}))
        assert stub_b.Decide(ask).offers[0].offer_id == "gold-upgrade"


def test_acknowledged_events_survive_kill_9(tmp_path):
    store = tmp_path / "store"
    server = ServerProcess(store, TEST_CATALOG, free_port())
    acked = 0
    stop = threading.Event()
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            summary = stub.TrackStream(batches([purchase("kim", 1.0, event_id=f"s-{i}")
                                                for i in range(2000)], 100))
            assert summary.applied == 2000
            counts = [0] * 4

            def hammer(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        stub.Track(purchase("kim", 1.0, event_id=f"t{worker}-{i}"), timeout=5)
                        counts[worker] += 1
                    except grpc.RpcError:
                        return  # the server is gone: this one was not acknowledged
                    i += 1

            threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            os.kill(server.proc.pid, signal.SIGKILL)  # mid-flight
            server.proc.wait()
            stop.set()
            for t in threads:
                t.join()
            acked = 2000 + sum(counts)
            sent_upper_bound = acked + 4  # at most one unacknowledged call per thread
    finally:
        server.stop()
    assert acked > 2000 + 50  # the load really ran while the process was killed

    restarted = ServerProcess(store, TEST_CATALOG, free_port())
    try:
        restarted.wait_ready()
        with grpc.insecure_channel(restarted.address) as ch:
            got = pb_grpc.DecisionServiceStub(ch).GetProfile(
                pb.GetProfileRequest(customer=ident("kim")))
        assert acked <= got.counters["purchases"] <= sent_upper_bound
    finally:
        restarted.stop()


def test_the_same_event_id_for_two_customers_is_two_events(stub):
    alice = stub.Track(purchase("alice", 10.0, event_id="1"))
    bob = stub.Track(purchase("bob", 20.0, event_id="1"))
    assert not bob.duplicate and bob.profile_key != alice.profile_key
    assert stub.Track(purchase("bob", 20.0, event_id="1")).duplicate  # bob's retry
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("bob")))
    assert got.counters["revenue"] == 20.0


def test_an_event_that_would_overflow_a_total_is_rejected_alone(stub):
    stub.Track(purchase("max", 1.0))
    with pytest.raises(grpc.RpcError) as err:  # the float32 feature would be inf
        stub.Track(purchase("max", 1e308))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "would make feature.monetary inf" in err.value.details()
    summary = stub.TrackStream(batches([purchase("max", 1e308), purchase("min", 1.0)], 10))
    assert (summary.applied, summary.rejected_count) == (1, 1)  # the other one applied
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("max")))
    assert got.counters["revenue"] == 1.0 and got.counters["purchases"] == 1


def test_a_long_stream_of_rejections_keeps_the_summary_small(stub):
    bad = [pb.Event(type="nope", customer=ident("x")) for _ in range(30_000)]
    summary = stub.TrackStream(batches(bad + [purchase("ok", 1.0)], 5000))
    assert (summary.received, summary.applied, summary.rejected_count) == (30_001, 1, 30_000)
    assert len(summary.rejected) == 1000


def test_an_identifier_left_dangling_gets_a_working_profile(stub, running):
    """An identity entry whose profile is gone (foreign damage): the next event makes a
    new profile and re-links the identifier to it, so the one after finds it."""
    from decision.store.database import identity_key, profile_key_bytes

    store = running.engine.store
    store.write(lambda txn: txn.put(identity_key("customer_id", "ghost"),
                                    profile_key_bytes(999_999), db=store.identity_db))
    first = stub.Track(purchase("ghost", 1.0))
    second = stub.Track(purchase("ghost", 2.0))
    assert first.profile_key == second.profile_key != f"{999_999:016x}"
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("ghost")))
    assert got.counters["purchases"] == 2
