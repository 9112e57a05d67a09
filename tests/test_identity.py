"""One customer across channels: Identify (link, merge) and ForgetCustomer (erasure)."""

from __future__ import annotations

import grpc
import pytest

from decision.store.database import profile_key_bytes
from decision.v1 import decision_pb2 as pb
from tests.conftest import ident, num, text


def profile(stub, who: pb.Identifier) -> pb.Profile:
    return stub.GetProfile(pb.GetProfileRequest(customer=who))


def test_identify_links_a_new_identifier(stub):
    created = stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("c-9")]))
    reply = stub.Identify(pb.IdentifyRequest(identifiers=[ident("c-9"),
                                                          ident("ck-9", "cookie")]))
    assert reply.profile.profile_key == created.profile_key
    assert list(reply.merged_profile_keys) == []
    assert profile(stub, ident("ck-9", "cookie")).profile_key == created.profile_key


def test_identify_merges_two_profiles_into_one_customer(stub):
    cookie, loyalty = ident("ck-anon", "cookie"), ident("L-123", "loyalty_id")
    for _ in range(3):  # browsing anonymously on the web...
        stub.Track(pb.Event(type="page_view", customer=cookie,
                            attributes={"page": text("home")}))
    stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[cookie], attributes={"country": text("FR"), "tier": num(1)}))
    # ...and, separately, a known loyalty member who bought twice
    stub.Track(pb.Event(type="purchase", customer=loyalty,
                        attributes={"amount": num(30.0), "sku": text("A")}))
    stub.Track(pb.Event(type="purchase", customer=loyalty,
                        attributes={"amount": num(20.0), "sku": text("B")}))
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[loyalty],
                                               attributes={"tier": num(3)}))
    web_key = profile(stub, cookie).profile_key
    loyalty_key = profile(stub, loyalty).profile_key
    assert web_key != loyalty_key

    reply = stub.Identify(pb.IdentifyRequest(identifiers=[loyalty, cookie]))  # a login
    merged = reply.profile
    assert merged.profile_key == web_key  # the older profile survives
    assert list(reply.merged_profile_keys) == [loyalty_key]
    assert merged.counters["page_views"] == 3  # counters add up
    assert merged.counters["purchases"] == 2 and merged.counters["revenue"] == 50.0
    assert merged.attributes["tier"].number_value == 3  # the most recent value wins
    assert merged.attributes["country"].string_value == "FR"  # kept from the other
    assert merged.attributes["last_sku"].string_value == "B"
    for who in (cookie, loyalty):  # either identifier reaches the merged profile
        assert profile(stub, who).profile_key == web_key
    ask = pb.DecideRequest(customer=cookie, channel="web", context={"country": text("FR")})
    assert stub.Decide(ask).offers[0].offer_id == "gold-upgrade"  # tier 3 from the app

    again = stub.Identify(pb.IdentifyRequest(identifiers=[cookie, loyalty]))
    assert list(again.merged_profile_keys) == []  # idempotent
    assert again.profile.updated_at_ms == merged.updated_at_ms
    assert again.profile.counters == merged.counters

    stub.Track(pb.Event(type="purchase", customer=loyalty,
                        attributes={"amount": num(5.0), "sku": text("C")}))
    assert profile(stub, cookie).counters["purchases"] == 3


def test_identify_merges_three_profiles_at_once(stub):
    whos = [ident("m1"), ident("m2", "cookie"), ident("m3", "device_id")]
    for who in whos:
        stub.Track(pb.Event(type="page_view", customer=who, attributes={"page": text("x")}))
    reply = stub.Identify(pb.IdentifyRequest(identifiers=whos + [ident("m4", "email_sha256")]))
    assert len(reply.merged_profile_keys) == 2
    assert reply.profile.counters["page_views"] == 3
    assert len(reply.profile.identifiers) == 4


@pytest.mark.parametrize("request_, field", [
    (pb.IdentifyRequest(identifiers=[ident("solo")]), "identifiers"),
    (pb.IdentifyRequest(identifiers=[ident("a"), ident("b", "ssn")]), "identifiers[1].kind"),
    (pb.IdentifyRequest(identifiers=[ident("a"), ident("")]), "identifiers[1].value"),
])
def test_bad_identify(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Identify(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()


def _everything_stored(env) -> bytes:
    """Every key and value of every sub-database, concatenated."""
    blob = bytearray()
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
    for name in names:
        db = env.open_db(name, create=False)
        with env.begin(db=db) as txn:
            for k, v in txn.cursor():
                blob += k + b"\0" + v + b"\0"
    return bytes(blob)


def test_forget_customer_leaves_nothing_readable(stub, running):
    alias = [ident("forget-me"), ident("ck-forget-me", "cookie"),
             ident("LOYAL-forget-me", "loyalty_id")]
    stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=alias[:2], attributes={"nickname": text("Zebulon-Secret")}))
    stub.Identify(pb.IdentifyRequest(identifiers=alias[1:]))
    for i in range(5):
        stub.Track(pb.Event(type="purchase", customer=alias[2], event_id=f"order-forget-me-{i}",
                            attributes={"amount": num(30.0), "sku": text("SKU-Secret")}))
    stub.Track(pb.Event(type="page_view", customer=ident("bystander"),
                        event_id="bystander-1", attributes={"page": text("home")}))
    assert list(profile(stub, alias[0]).segments) == ["high_value"]  # a trigger was logged
    before = _everything_stored(running.engine.store.env)
    assert b"Zebulon-Secret" in before and b"order-forget-me-3" in before
    assert before.count(b"LOYAL-forget-me") >= 2  # identity db + the trigger record

    reply = stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=alias[1]))
    assert (reply.identifiers_removed, reply.events_removed) == (3, 5)

    for who in alias:
        with pytest.raises(grpc.RpcError) as err:
            profile(stub, who)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.Decide(pb.DecideRequest(customer=who, channel="web")).cold_start
    after = _everything_stored(running.engine.store.env)
    stored_key = profile_key_bytes(int(reply.profile_key, 16))  # as the store writes it
    assert stored_key in before
    for secret in (b"forget-me", b"Zebulon-Secret", b"SKU-Secret", stored_key):
        assert secret not in after
    assert profile(stub, ident("bystander")).counters["page_views"] == 1  # others intact
    assert b"bystander-1" in after

    with pytest.raises(grpc.RpcError) as err:
        stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=alias[0]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_forgetting_a_merged_customer_erases_what_each_profile_had(stub, running):
    web, shop = ident("ck-merged-secret", "cookie"), ident("LOYAL-merged-secret", "loyalty_id")
    stub.Track(pb.Event(type="page_view", customer=web, event_id="view-merged-secret",
                        attributes={"page": text("home")}))
    for i in range(4):  # the shop profile becomes high value: triggers name it
        stub.Track(pb.Event(type="purchase", customer=shop, event_id=f"order-merged-secret-{i}",
                            attributes={"amount": num(40.0), "sku": text("X")}))
    shop_key = profile(stub, shop).profile_key
    merged = stub.Identify(pb.IdentifyRequest(identifiers=[web, shop]))
    assert list(merged.merged_profile_keys) == [shop_key]
    assert list(merged.profile.segments) == ["high_value"]

    stub.ForgetCustomer(pb.ForgetCustomerRequest(customer=web))
    after = _everything_stored(running.engine.store.env)
    assert b"merged-secret" not in after
    for key in (merged.profile.profile_key, shop_key):
        assert profile_key_bytes(int(key, 16)) not in after


def test_a_merge_ends_the_merged_away_profiles_segments(stub):
    web, shop = ident("ck-seg", "cookie"), ident("L-seg", "loyalty_id")
    stub.Track(pb.Event(type="page_view", customer=web, attributes={"page": text("home")}))
    stub.Track(pb.Event(type="purchase", customer=shop,
                        attributes={"amount": num(500.0), "sku": text("X")}))
    shop_key = profile(stub, shop).profile_key
    merged = stub.Identify(pb.IdentifyRequest(identifiers=[web, shop])).profile
    assert _log(stub, 3) == [("segment_enter", "high_value", shop_key),
                             ("segment_leave", "high_value", shop_key),
                             ("segment_enter", "high_value", merged.profile_key)]


def _log(stub, n: int):
    """The first ``n`` entries of the trigger log, as (kind, name, profile key)."""
    out = []
    call = stub.WatchTriggers(pb.WatchTriggersRequest())
    try:
        for t in call:
            out.append((t.kind, t.name, t.profile_key))
            if len(out) == n:
                break
    finally:
        call.cancel()
    return out
