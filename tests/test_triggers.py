"""Triggers: segment changes and event patterns, in a durable log, watched live."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from decision.config.catalog import load_catalog
from decision.errors import CatalogError
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import TEST_CATALOG, ident, num, text, two_servers


class Watcher:
    """A WatchTriggers subscriber collecting triggers on a background thread."""

    def __init__(self, stub, from_cursor: int = 0, from_end: bool = False):
        self.got: list[pb.Trigger] = []
        self.error: grpc.RpcError | None = None
        self.call = stub.WatchTriggers(pb.WatchTriggersRequest(from_cursor=from_cursor,
                                                               from_end=from_end))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for trigger in self.call:
                self.got.append(trigger)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc  # re-raised by close(): a thread cannot fail the test

    def wait_for(self, n: int, timeout: float = 10.0) -> list[pb.Trigger]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            assert time.monotonic() < deadline, f"only {len(self.got)} of {n} triggers"
            time.sleep(0.005)
        return self.got

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=10)
        if self.error is not None:
            raise self.error


def buy(who, amount, event_id=""):
    return pb.Event(type="purchase", customer=who, event_id=event_id,
                    attributes={"amount": num(amount), "sku": text("S")})


def cart(who):
    return pb.Event(type="add_to_cart", customer=who, attributes={"sku": text("S")})


def summary(triggers):
    return [(t.kind, t.name, t.profile_key) for t in triggers]


def test_a_purchase_that_makes_a_customer_high_value_is_delivered_live(stub):
    watcher = Watcher(stub)
    try:
        who = ident("tara")
        key = stub.Track(cart(who)).profile_key  # not high value: reminder journey
        stub.Track(buy(who, 150.0, event_id="order-77"))  # now high value
        stub.Track(cart(who))  # high value: no reminder
        got = watcher.wait_for(2)
        time.sleep(0.1)
        assert summary(got) == [("event", "cart_reminder", key),
                                ("segment_enter", "high_value", key)]
        assert got[1].event_id == "order-77"
        assert [(i.kind, i.value) for i in got[1].identifiers] == [("customer_id", "tara")]
        assert got[1].cursor == got[0].cursor + 1
    finally:
        watcher.close()


def test_segment_leave_and_triggers_from_upserts(stub):
    who = ident("uma")
    for _ in range(3):
        stub.Track(pb.Event(type="page_view", customer=who, attributes={"page": text("p")}))
    stub.Track(buy(who, 5.0))  # no longer a mere browser
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[who], attributes={"tier": num(3)}))
    got = Watcher(stub).wait_for(3)
    assert [(t.kind, t.name) for t in got] == [("segment_enter", "browser"),
                                               ("segment_leave", "browser"),
                                               ("segment_enter", "high_value")]


def test_replay_from_a_cursor_and_reconnect_without_loss(stub):
    whos = [ident(f"r{i}") for i in range(6)]
    for who in whos[:3]:
        stub.Track(buy(who, 200.0))
    first = Watcher(stub)
    seen = first.wait_for(3)[:3]
    first.close()
    for who in whos[3:]:  # while nobody is watching
        stub.Track(buy(who, 200.0))
    resumed = Watcher(stub, from_cursor=seen[-1].cursor + 1)
    rest = resumed.wait_for(3)
    time.sleep(0.1)
    resumed.close()
    cursors = [t.cursor for t in seen + rest]
    assert cursors == list(range(cursors[0], cursors[0] + 6))  # in order, no gap, no dup
    keys = [stub.GetProfile(pb.GetProfileRequest(customer=w)).profile_key for w in whos]
    assert [t.profile_key for t in seen + rest] == keys

    replay = Watcher(stub, from_cursor=seen[1].cursor)  # any point of the log
    assert [t.cursor for t in replay.wait_for(5)] == cursors[1:]
    replay.close()


def test_a_trigger_committed_by_another_process_reaches_the_watcher(tmp_path):
    with two_servers(tmp_path / "store", TEST_CATALOG) as (stub_a, stub_b):
        watcher = Watcher(stub_b)
        try:
            started = time.monotonic()
            stub_a.Track(buy(ident("vic"), 500.0))
            got = watcher.wait_for(1)
            assert (got[0].kind, got[0].name) == ("segment_enter", "high_value")
            assert time.monotonic() - started < 2
        finally:
            watcher.close()


@pytest.mark.parametrize("table, message", [
    ('[triggers.x]\nevent = "refund"\n', "triggers.x.event: unknown event type 'refund'"),
    ('[triggers.x]\nevent = "add_to_cart"\nwhen = "context.device == 1"\n',
     "trigger 'x': rule `context.device == 1` at column 1: context.<name> cannot be read"),
    ('[triggers.x]\nevent = "add_to_cart"\nafter = "5m"\n', "triggers.x: unknown key 'after'"),
])
def test_bad_trigger_configuration_is_rejected_at_load(tmp_path, table, message):
    path = tmp_path / "c.toml"
    path.write_text(TEST_CATALOG.read_text() + "\n" + table)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert message in str(err.value)


def test_from_end_delivers_only_new_triggers(stub):
    stub.Track(buy(ident("old"), 500.0))
    watcher = Watcher(stub, from_end=True)
    try:
        time.sleep(0.2)
        key = stub.Track(buy(ident("new"), 500.0)).profile_key
        got = watcher.wait_for(1)
        time.sleep(0.1)
        assert [(t.name, t.profile_key) for t in got] == [("high_value", key)]
    finally:
        watcher.close()


def test_subscribers_are_capped_so_the_server_keeps_answering(stub, running):
    assert running.servicer.max_watchers == 2  # half of the 4 test threads
    watchers = [Watcher(stub), Watcher(stub)]
    try:
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.WatchTriggers(pb.WatchTriggersRequest(), timeout=5)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2" in err.value.details() and "--threads" in err.value.details()
        for i in range(20):  # decisions and events still flow
            stub.Track(buy(ident(f"busy{i}"), 1.0), timeout=5)
            assert stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"), timeout=5)
    finally:
        for w in watchers:
            w.close()
    time.sleep(0.2)
    third = Watcher(stub)  # a slot is free again
    third.close()


def test_shutdown_does_not_wait_for_subscribers(settings):
    from decision.edge.server import create_server, start

    running = create_server(settings)
    start(running)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    watcher = Watcher(pb_grpc.DecisionServiceStub(channel))
    time.sleep(0.2)
    started = time.monotonic()
    running.stop(grace=5.0)
    assert time.monotonic() - started < 2.0
    watcher.thread.join(timeout=5)
    channel.close()
