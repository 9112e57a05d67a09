"""Segments: rules over the profile, recomputed on every write, usable by offers."""

from __future__ import annotations

import pytest

from decision.config.catalog import load_catalog
from decision.errors import CatalogError
from decision.v1 import decision_pb2 as pb
from tests.conftest import TEST_CATALOG, ident, num, text


def segments(stub, who) -> list[str]:
    return list(stub.GetProfile(pb.GetProfileRequest(customer=who)).segments)


def view(who):
    return pb.Event(type="page_view", customer=who, attributes={"page": text("home")})


def buy(who, amount):
    return pb.Event(type="purchase", customer=who,
                    attributes={"amount": num(amount), "sku": text("S")})


def test_events_move_a_customer_between_segments(stub):
    who = ident("seg-1")
    stub.Track(view(who))
    stub.Track(view(who))
    assert segments(stub, who) == []
    stub.Track(view(who))  # the third page view without a purchase
    assert segments(stub, who) == ["browser"]
    stub.Track(buy(who, 60.0))
    assert segments(stub, who) == []  # bought: no longer a browser, not yet high value
    stub.Track(buy(who, 45.0))
    assert segments(stub, who) == ["high_value"]  # 105 in revenue


def test_offers_target_a_segment_on_the_next_decision(stub):
    who = ident("seg-2")
    ask = pb.DecideRequest(customer=who, channel="email", limit=10)
    stub.Track(buy(who, 20.0))
    assert "high-value-thanks" not in [o.offer_id for o in stub.Decide(ask).offers]
    stub.Track(buy(who, 90.0))  # the purchase that makes her high value
    reply = stub.Decide(ask)
    assert reply.offers[0].offer_id == "high-value-thanks"
    assert reply.offers[0].reasons[0].detail == "segment.high_value"


def test_an_upsert_recomputes_segments(stub):
    who = ident("seg-3")
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[who], attributes={"tier": num(1)}))
    assert segments(stub, who) == []
    profile = stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[who],
                                                         attributes={"tier": num(3)}))
    assert list(profile.segments) == ["high_value"]


def test_a_merge_recomputes_segments(stub):
    a, b = ident("seg-a"), ident("seg-b", "cookie")
    stub.Track(buy(a, 60.0))
    stub.Track(buy(b, 50.0))
    assert segments(stub, a) == [] and segments(stub, b) == []
    merged = stub.Identify(pb.IdentifyRequest(identifiers=[a, b])).profile
    assert merged.counters["revenue"] == 110.0
    assert list(merged.segments) == ["high_value"]


@pytest.mark.parametrize("rule, message", [
    ('context.country == "FR"', "segment 'bad': rule `context.country == \"FR\"` at column 1: "
                                "context.<name> cannot be read here"),
    ("segment.high_value", "segment.<name> cannot be read here"),
    ("counter.refunds > 0", "unknown field 'counter.refunds'"),
    ("profile.tier", "must be true or false"),
])
def test_bad_segment_rules_are_rejected_at_load(tmp_path, rule, message):
    path = tmp_path / "c.toml"
    path.write_text(TEST_CATALOG.read_text().replace(
        "[segments]\n", f"[segments]\nbad = '{rule}'\n"))
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert message in str(err.value)


def test_an_offer_rule_naming_an_unknown_segment_is_rejected(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TEST_CATALOG.read_text().replace('rule = "segment.high_value"',
                                                     'rule = "segment.big_spender"'))
    with pytest.raises(CatalogError, match="offer 'high-value-thanks'.*unknown field "
                                           "'segment.big_spender'"):
        load_catalog(path)
