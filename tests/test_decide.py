"""Decide through gRPC against a real server and a real LMDB store."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from decision.v1 import decision_pb2 as pb
from tests.conftest import flag, ident, num, text


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture
def alice(stub):
    """A tier-3 French customer, not VIP, with known features."""
    return stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident("alice")],
        attributes={"tier": num(3), "country": text("FR"), "vip": flag(False)},
        features={"recency": 0.2, "frequency": 2.0, "monetary": 1.5},
    ))


def test_ranked_answer_with_score_parts_and_reasons(stub, alice):
    reply = stub.Decide(pb.DecideRequest(
        customer=ident("alice"), channel="web", placement="home_hero",
        context={"country": text("FR")}))

    assert [o.offer_id for o in reply.offers] == ["gold-upgrade", "welcome-10", "newsletter"]
    assert [o.rank for o in reply.offers] == [1, 2, 3]
    assert reply.eligible_count == 3
    assert not reply.cold_start
    assert reply.catalog_version.startswith("test@")
    assert len(reply.decision_id) == 28

    gold = reply.offers[0]
    # log-odds by hand from tests/data/catalog.toml: intercept -1 + premium 0.2,
    # recency -0.5*0.2, frequency 0.8*2, monetary (interaction premium 1.0)*1.5
    assert gold.propensity == pytest.approx(sigmoid(-1 + 0.2 - 0.1 + 1.6 + 1.5), rel=1e-6)
    assert (gold.value, gold.lever) == (40.0, 1.0)
    assert gold.score == pytest.approx(gold.propensity * gold.value * gold.lever)
    assert gold.reasons[0].code == "ELIGIBLE"
    assert gold.reasons[0].detail == 'profile.tier >= 2 and context.country == "FR"'
    features = [(r.detail, round(r.weight, 4)) for r in gold.reasons if r.code == "FEATURE"]
    assert features == [("frequency", 1.6), ("monetary", 1.5), ("recency", -0.1)]
    assert json.loads(gold.creative_json) == {"image": "gold.png", "title": "Go Gold"}

    welcome = reply.offers[1]
    assert welcome.lever == 1.5
    assert welcome.score == pytest.approx(welcome.propensity * 10.0 * 1.5)
    assert all(reply.offers[i].score >= reply.offers[i + 1].score for i in range(2))


def test_unknown_customer_gets_a_cold_start_decision(stub):
    reply = stub.Decide(pb.DecideRequest(customer=ident("nobody"), channel="email"))
    assert reply.cold_start
    assert [o.offer_id for o in reply.offers] == ["welcome-10", "newsletter"]
    # no profile: rules see missing fields (not profile.vip holds), model sees zeros
    assert reply.offers[0].propensity == pytest.approx(sigmoid(-1.0))
    assert [r.code for r in reply.offers[0].reasons] == ["ELIGIBLE", "COLD_START"]


def test_rules_read_profile_and_context(stub, alice):
    def ids(**kw):
        return [o.offer_id for o in stub.Decide(pb.DecideRequest(customer=ident("alice"), **kw)).offers]

    assert "gold-upgrade" not in ids(channel="web", context={"country": text("DE")})
    assert "basket-bonus" in ids(channel="web", placement="checkout", context={"basket": num(150)})
    assert "basket-bonus" not in ids(channel="web", placement="checkout",
                                     context={"basket": num(50)})
    assert "lounge-pass" in ids(channel="kiosk")  # profile.country in ["FR", "BE"]


def test_channel_placement_and_validity_window(stub, alice):
    for channel in ("web", "app", "kiosk", "contact_center", "email"):
        reply = stub.Decide(pb.DecideRequest(customer=ident("alice"), channel=channel,
                                             limit=100, context={"country": text("FR")}))
        for o in reply.offers:
            info = {x.offer_id: x for x in stub.ListOffers(pb.ListOffersRequest()).offers}
            assert channel in info[o.offer_id].channels
        assert "expired-promo" not in [o.offer_id for o in reply.offers]
    checkout = stub.Decide(pb.DecideRequest(customer=ident("alice"), channel="web",
                                            placement="checkout", context={"country": text("FR")}))
    assert "gold-upgrade" not in [o.offer_id for o in checkout.offers]  # home_hero only


def test_limit_and_default(stub, alice):
    one = stub.Decide(pb.DecideRequest(customer=ident("alice"), channel="web", limit=1,
                                       context={"country": text("FR")}))
    assert [o.offer_id for o in one.offers] == ["gold-upgrade"]
    default = stub.Decide(pb.DecideRequest(customer=ident("alice"), channel="web"))
    assert 1 <= len(default.offers) <= 5


def test_next_decision_sees_a_profile_update(stub, alice):
    ask = pb.DecideRequest(customer=ident("alice"), channel="web", context={"country": text("FR")})
    assert "gold-upgrade" in [o.offer_id for o in stub.Decide(ask).offers]
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("alice")],
                                               attributes={"tier": num(1)}))
    assert "gold-upgrade" not in [o.offer_id for o in stub.Decide(ask).offers]
    # back and forth: what a decision remembers of a profile (decision.core.tails) is only
    # ever reused for the very bytes it was read from
    for tier in (3, 1, 3, 0, 2, 1):
        stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("alice")],
                                                   attributes={"tier": num(tier)}))
        for _ in range(2):
            offers = [o.offer_id for o in stub.Decide(ask).offers]
            assert ("gold-upgrade" in offers) == (tier >= 2), (tier, offers)


@pytest.mark.parametrize("request_, field", [
    (pb.DecideRequest(channel="web"), "customer.value"),
    (pb.DecideRequest(customer=ident(""), channel="web"), "customer.value"),
    (pb.DecideRequest(customer=ident("x", kind="passport"), channel="web"), "customer.kind"),
    (pb.DecideRequest(customer=ident("x" * 300), channel="web"), "customer.value"),
    (pb.DecideRequest(customer=ident("x")), "channel"),
    (pb.DecideRequest(customer=ident("x"), channel="fax"), "channel"),
    (pb.DecideRequest(customer=ident("x"), channel="web", placement="footer"), "placement"),
    (pb.DecideRequest(customer=ident("x"), channel="web", limit=0), "limit"),
    (pb.DecideRequest(customer=ident("x"), channel="web", limit=-3), "limit"),
    (pb.DecideRequest(customer=ident("x"), channel="web", limit=101), "limit"),
    (pb.DecideRequest(customer=ident("x"), channel="web",
                      context={f"k{i}": num(i) for i in range(65)}), "context"),
    (pb.DecideRequest(customer=ident("x"), channel="web",
                      context={"country": text("F" * 300)}), "context['country']"),
    (pb.DecideRequest(customer=ident("x"), channel="web",
                      context={"country": num(33)}), "context['country']"),
    (pb.DecideRequest(customer=ident("x"), channel="web",
                      context={"basket": num(float("nan"))}), "context['basket']"),
    (pb.DecideRequest(customer=ident("x"), channel="web",
                      context={"basket": num(float("inf"))}), "context['basket']"),
])
def test_bad_input_is_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()
    assert "Traceback" not in err.value.details()
    # the worker is alive and well
    assert stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web")).offers


def test_oversized_message_is_resource_exhausted(stub):
    huge = pb.DecideRequest(customer=ident("x"), channel="web",
                            context={"blob": text("x" * (5 * 1024 * 1024))})
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(huge)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web")).offers


def test_undeclared_context_keys_are_ignored(stub):
    reply = stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web",
                                         context={"campaign": text("spring")}))
    assert reply.offers


def test_corrupt_profile_is_a_clear_error_for_that_customer_only(stub, running, alice):
    from decision.store.database import profile_key_bytes

    key = int(alice.profile_key, 16)
    running.engine.store.write(lambda txn: txn.put(
        profile_key_bytes(key), b"garbage!", db=running.engine.store.profiles_db))
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(pb.DecideRequest(customer=ident("alice"), channel="web"))
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert alice.profile_key in err.value.details()
    assert stub.Decide(pb.DecideRequest(customer=ident("bob"), channel="web")).offers


@pytest.mark.needs_jit("counts the kernels' compiled signatures, which plain functions lack")
def test_nothing_compiles_on_the_request_path(stub, alice):
    """Warm-up covers every kernel signature requests use (cold start, stored
    profile, with and without placement, one by one and in batches)."""
    from kernels.decide import decide_each, decide_offers
    from kernels.encoding import encode_answer

    kernels = (decide_offers, decide_each, encode_answer)
    before = [len(k.signatures) for k in kernels]
    requests = [pb.DecideRequest(customer=ident(who), channel="web", limit=7,
                                 placement=placement, context={"basket": num(3)})
                for who in ("alice", "nobody") for placement in ("", "home_hero")]
    for request in requests:
        stub.Decide(request)
    stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
    stub.DecideBatch(pb.DecideBatchRequest(requests=requests[1:2]))
    assert [len(k.signatures) for k in kernels] == before


def _store_raw(running, key: int, record_bytes: bytes, identifier: str) -> None:
    from decision.store.database import identity_key, profile_key_bytes

    store = running.engine.store

    def work(txn):
        txn.put(profile_key_bytes(key), record_bytes, db=store.profiles_db)
        txn.put(identity_key("customer_id", identifier), profile_key_bytes(key),
                db=store.identity_db)

    store.write(work)


def test_stored_attribute_of_another_type_reads_as_missing(stub, running):
    """Data written before the catalog declared an attribute (or by an older schema)
    must not break decisions: a value of the wrong type is a missing value."""
    import numpy as np

    from decision.store.layout import ProfileRecord, encode

    record = ProfileRecord(key=900, features=np.zeros(4, np.float32),
                           attributes={"tier": "gold", "country": 33.0, "vip": "yes"},
                           identifiers=[("customer_id", "legacy")])
    _store_raw(running, 900, encode(record), "legacy")
    reply = stub.Decide(pb.DecideRequest(customer=ident("legacy"), channel="web",
                                         context={"country": text("FR")}))
    ids = [o.offer_id for o in reply.offers]
    assert "gold-upgrade" not in ids  # tier missing: tier >= 2 is false
    assert "welcome-10" in ids  # vip missing: not profile.vip holds


def test_feature_vector_of_another_width_is_data_loss(stub, running):
    import numpy as np

    from decision.store.layout import ProfileRecord, encode

    record = ProfileRecord(key=901, features=np.ones(40, np.float32),
                           identifiers=[("customer_id", "wide")])
    _store_raw(running, 901, encode(record), "wide")
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(pb.DecideRequest(customer=ident("wide"), channel="web"))
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "40 features stored" in err.value.details()


def _ranking(reply: pb.DecideResponse) -> list:
    return [(o.offer_id, o.rank, o.score, o.propensity, [(r.code, r.detail) for r in o.reasons])
            for o in reply.offers]


def test_decide_batch_answers_as_decide_does(stub, alice):
    requests = [
        pb.DecideRequest(customer=ident("alice"), channel="web", placement="home_hero",
                         context={"country": text("FR")}),
        pb.DecideRequest(customer=ident("alice"), channel="kiosk", limit=1),
        pb.DecideRequest(customer=ident("nobody"), channel="email"),
    ]
    batch = stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
    assert len(batch.responses) == 3
    for got, request in zip(batch.responses, requests):
        want = stub.Decide(request)
        assert _ranking(got) == _ranking(want)
        assert (got.eligible_count, got.cold_start, got.catalog_version) == \
            (want.eligible_count, want.cold_start, want.catalog_version)
    assert len({r.decision_id for r in batch.responses}) == 3  # one id per decision
    assert len({r.decided_at_ms for r in batch.responses}) == 1  # one instant
    assert batch.responses[2].cold_start


@pytest.mark.parametrize(("requests", "message"), [
    ([], "requests: 1 to 1000 decisions per call (max_batch), got 0"),
    ([pb.DecideRequest(customer=ident("a"), channel="web")] * 1001, "got 1001"),
    ([pb.DecideRequest(customer=ident("a"), channel="web"),
      pb.DecideRequest(customer=ident("b"), channel="fax")],
     "requests[1].channel: unknown channel 'fax'"),
    ([pb.DecideRequest(channel="web")], "requests[0].customer.value: required"),
])
def test_decide_batch_bad_requests_name_the_index(stub, requests, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_repeat_decisions_reuse_profile_verdicts_and_answer_as_a_batch_does(stub):
    """Decide keeps, per stored profile, the verdicts of rules that read no context
    (``decision.core.tails``); DecideBatch evaluates every rule afresh (all customers at
    once). Same customers, changing contexts, repeated, and a profile change in the
    middle: every Decide answers exactly as the batch does."""
    people = {"p0": (3.0, "FR", False), "p1": (1.0, "DE", True), "p2": (2.0, "BE", False)}

    def upsert(who, tier, country, vip):
        stub.UpsertProfile(pb.UpsertProfileRequest(
            identifiers=[ident(who)],
            attributes={"tier": num(tier), "country": text(country), "vip": flag(vip)}))

    for who, profile in people.items():
        upsert(who, *profile)
    contexts = [{}, {"country": text("FR")}, {"country": text("DE"), "basket": num(150)},
                {"basket": num(50)}]
    requests = [pb.DecideRequest(customer=ident(who), channel=channel, context=context, limit=9)
                for who in [*people, "nobody"] for context in contexts
                for channel in ("web", "kiosk")]
    assert len(requests) >= 32  # the batch evaluates its rules as one table
    for round_ in range(3):
        if round_ == 2:
            upsert("p1", 3.0, "FR", False)  # new bytes: its kept verdicts no longer apply
        batch = stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
        for request, want in zip(requests, batch.responses):
            got = stub.Decide(request)
            assert (_ranking(got), got.eligible_count) == (_ranking(want), want.eligible_count)
