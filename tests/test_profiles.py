"""GetProfile and UpsertProfile through gRPC, and the store underneath."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from decision.store import layout
from decision.store.layout import ProfileRecord
from decision.store.database import ProfileStore
from decision.v1 import decision_pb2 as pb
from tests.conftest import flag, ident, num, text


def test_upsert_then_get(stub):
    created = stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("c-1"), ident("ck-9", "cookie")],
        attributes={"tier": num(2), "country": text("BE"), "vip": flag(True),
                    "nickname": text("Bea")},
        features={"monetary": 3.5}))
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("ck-9", "cookie")))
    assert got.profile_key == created.profile_key
    assert {(i.kind, i.value) for i in got.identifiers} == {("customer_id", "c-1"),
                                                           ("cookie", "ck-9")}
    assert got.attributes["tier"].number_value == 2
    assert got.attributes["country"].string_value == "BE"
    assert got.attributes["vip"].bool_value is True
    assert got.attributes["nickname"].string_value == "Bea"  # undeclared: stored as is
    assert dict(got.features) == {"recency": 0.0, "frequency": 0.0, "monetary": 3.5,
                                  "app_user": 0.0}
    assert got.created_at_ms > 0 and got.updated_at_ms >= got.created_at_ms


def test_upsert_updates_in_place_and_deletes_with_empty_value(stub):
    first = stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("c-2")], attributes={"tier": num(1), "country": text("FR")}))
    second = stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("c-2"), ident("L-77", "loyalty_id")],
        attributes={"tier": num(3), "country": pb.Value()}))
    assert second.profile_key == first.profile_key
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("L-77", "loyalty_id")))
    assert got.attributes["tier"].number_value == 3
    assert "country" not in got.attributes


def test_unknown_profile_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.GetProfile(pb.GetProfileRequest(customer=ident("ghost")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.value.details()


@pytest.mark.parametrize("request_, code, field", [
    (pb.UpsertProfileRequest(), "INVALID_ARGUMENT", "identifiers"),
    (pb.UpsertProfileRequest(identifiers=[ident("a", "ssn")]), "INVALID_ARGUMENT",
     "identifiers[0].kind"),
    (pb.UpsertProfileRequest(identifiers=[ident("a")], attributes={"tier": text("gold")}),
     "INVALID_ARGUMENT", "attributes['tier']"),
    (pb.UpsertProfileRequest(identifiers=[ident("a")], features={"height": 1.0}),
     "INVALID_ARGUMENT", "features['height']"),
    (pb.UpsertProfileRequest(identifiers=[ident("a")], features={"recency": float("nan")}),
     "INVALID_ARGUMENT", "features['recency']"),
    (pb.UpsertProfileRequest(identifiers=[ident("a")] + [ident(f"c{i}", "cookie")
                                                         for i in range(32)]),
     "INVALID_ARGUMENT", "identifiers"),
])
def test_bad_upserts(stub, request_, code, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.UpsertProfile(request_)
    assert err.value.code() == grpc.StatusCode[code]
    assert err.value.details().startswith(field), err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # nothing was written
        stub.GetProfile(pb.GetProfileRequest(customer=ident("a")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_identifiers_of_two_profiles_are_not_silently_merged(stub):
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("p1")]))
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("p2")]))
    with pytest.raises(grpc.RpcError) as err:
        stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("p1"), ident("p2")]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    p1 = stub.GetProfile(pb.GetProfileRequest(customer=ident("p1")))
    assert [i.value for i in p1.identifiers] == ["p1"]


def test_feature_vector_is_read_in_place(tmp_path):
    """The kernels' feature view points into the memory map: no copy."""
    store = ProfileStore(tmp_path / "s", map_size=1 << 20)
    features = np.arange(32, dtype=np.float32)
    store.write(lambda txn: store.save(txn, ProfileRecord(key=7, features=features,
                                                           identifiers=[("customer_id", "z")])))
    with store.reader() as r:
        buf = r.profile_buffer(r.resolve("customer_id", "z"))
        view = layout.feature_view(buf, 32)
        raw = np.frombuffer(buf, dtype=np.uint8)
        assert view.ctypes.data == raw.ctypes.data + layout.HEAD_SIZE
        assert not view.flags.writeable
        np.testing.assert_array_equal(view, features)
    store.close()


def test_map_grows_instead_of_failing(tmp_path):
    store = ProfileStore(tmp_path / "s", map_size=1 << 20)
    before = store.map_size
    blob = "x" * 2000
    for batch in range(10):
        def work(txn, batch=batch):
            for i in range(100):
                key = batch * 100 + i + 1
                store.save(txn, ProfileRecord(key=key, features=np.zeros(4, np.float32),
                                              attributes={"blob": blob},
                                              identifiers=[("customer_id", f"g{key}")]))
        store.write(work)
    assert store.map_size > before
    assert store.count() == 1000
    assert store.get(1000).attributes["blob"] == blob
    store.close()


def test_map_growth_through_the_api(tmp_path, catalog_file):
    from decision.edge.server import create_server, start
    from decision.settings import Settings
    from decision.v1 import decision_pb2_grpc as pb_grpc

    settings = Settings(data_dir=tmp_path / "small", catalog_path=catalog_file,
                        address="127.0.0.1:0", map_size=1 << 20)
    running = create_server(settings)
    start(running)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            for i in range(120):
                stub.UpsertProfile(pb.UpsertProfileRequest(
                    identifiers=[ident(f"big-{i}")],
                    attributes={f"note{j}": text("n" * 250) for j in range(40)}))
            assert running.engine.store.map_size > 1 << 20
            got = stub.GetProfile(pb.GetProfileRequest(customer=ident("big-0")))
            assert got.attributes["note39"].string_value == "n" * 250
    finally:
        running.stop(grace=None)


def test_identifiers_per_profile_are_bounded(stub):
    for i in range(31):
        stub.UpsertProfile(pb.UpsertProfileRequest(
            identifiers=[ident("many"), ident(f"dev-{i}", "device_id")]))
    with pytest.raises(grpc.RpcError) as err:
        stub.UpsertProfile(pb.UpsertProfileRequest(
            identifiers=[ident("many"), ident("one-too-many", "device_id")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the profile would hold 33, at most 32" in err.value.details()
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("many")))
    assert len(got.identifiers) == 32


def test_profile_with_a_malformed_tail_is_data_loss(stub, running):
    import msgpack

    from decision.store.layout import HEAD, LAYOUT_VERSION, MAGIC
    from decision.store.database import identity_key, profile_key_bytes

    value = HEAD.pack(MAGIC, LAYOUT_VERSION, 0, 4, 0, 0) + bytes(16) + msgpack.packb(
        {"a": ["not", "a", "map"], "c": {}, "i": [], "t": 0})
    store = running.engine.store

    def work(txn):
        txn.put(profile_key_bytes(77), value, db=store.profiles_db)
        txn.put(identity_key("customer_id", "odd"), profile_key_bytes(77), db=store.identity_db)

    store.write(work)
    for call in (lambda: stub.GetProfile(pb.GetProfileRequest(customer=ident("odd"))),
                 lambda: stub.Decide(pb.DecideRequest(customer=ident("odd"), channel="web"))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert "000000000000004d" in err.value.details()


def test_profiles_written_before_segments_existed_still_read(tmp_path):
    """Layout 1 records without the later optional fields ("s", "m") decode as empty."""
    import msgpack

    value = layout.HEAD.pack(layout.MAGIC, layout.LAYOUT_VERSION, 0, 2, 0, 5) + bytes(8) + \
        msgpack.packb({"a": {"tier": 2.0}, "c": {}, "i": [["customer_id", "old"]], "t": 1})
    record = layout.decode(value, 3)
    assert (record.segments, record.merged_keys, record.attributes) == ([], [], {"tier": 2.0})


def test_tail_memo_reuses_only_identical_bytes():
    """What a decision reads from a profile's tail is kept per key and reused only
    while the stored bytes are the same; entries hold no object the GC walks."""
    import gc
    import math

    from decision.config.rules import string_id
    from decision.core.tails import VALUES, VERDICTS, ZONES, TailMemo

    slots = (("profile", "tier", 0, "number"), ("profile", "country", 2, "string"),
             ("segment", "vip", 1, "bool"))
    memo = TailMemo(slots, ("timezone",), limit=2)

    def value(attributes, segments=()):
        rec = ProfileRecord(key=7, features=np.zeros(3, dtype=np.float32),
                            attributes=attributes, segments=list(segments))
        return layout.encode(rec)

    def read(buf, key=7):
        n, _, tail_at = layout.read_head(buf, key)
        return memo.read(memoryview(buf), key, n, tail_at)

    first = value({"tier": 3.0, "country": "FR", "timezone": "Europe/Paris"}, ["vip"])
    kept = read(first)
    assert kept[VALUES:VERDICTS] == ((3.0, string_id("FR"), 1.0), ("Europe/Paris",))
    assert kept[VERDICTS] is None  # no decision has run the rules yet
    memo.keep_verdicts(7, kept, np.array([1, -1], dtype=np.int8))
    again = read(first)  # kept, with the verdicts
    assert again[VALUES:VERDICTS] == kept[VALUES:VERDICTS]
    assert again[VERDICTS].tolist() == [1, -1]
    changed = value({"tier": 1.0, "timezone": 4.0})  # same key, other bytes
    fresh = read(changed)
    values, zones = fresh[VALUES], fresh[ZONES]
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == 0.0
    assert zones == (None,)  # a time zone that is not a string is none
    assert fresh[VERDICTS] is None  # other bytes: the verdicts are not carried over
    memo.keep_verdicts(7, again, np.array([0, -1], dtype=np.int8))  # read before the change
    assert read(changed)[VERDICTS] is None  # so not kept for the new bytes
    memo.keep_verdicts(7, fresh, np.array([0, -1], dtype=np.int8))
    gc.collect()  # tuples of bytes, floats, strings and arrays are untracked by a collection
    assert not gc.is_tracked(memo.peek(7))
    read(first, key=8)
    read(first, key=9)  # past the limit: 9 takes the place of 8 (7 was read again: kept)
    assert len(memo) == 2 and memo.peek(8) is None and memo.peek(7) is not None
    memo.forget(9)
    assert len(memo) == 1
