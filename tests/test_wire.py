"""decision.edge.wire must produce exactly the DecideResponse the message API would build."""

from __future__ import annotations

import pytest

from decision.core.engine import DecideQuery, Engine, Identifier, ProfileUpdate
from decision.edge.wire import decision_message
from decision.v1 import decision_pb2 as pb
from decision.edge.wire import OfferEncodings, varint, encode_decision


@pytest.fixture
def engine(settings):
    e = Engine(settings)
    yield e
    e.store.close()


def test_wire_bytes_parse_to_the_reference_message(engine, rng):
    encodings = OfferEncodings(engine.catalog)
    channels = engine.catalog.channels
    for n in range(40):
        engine.upsert_profile(ProfileUpdate(
            (Identifier("customer_id", f"w{n}"),),
            {"tier": float(rng.integers(4)), "country": str(rng.choice(["FR", "BE", "DE"])),
             "vip": bool(rng.random() < 0.3)},
            {f: float(rng.normal()) for f in engine.catalog.feature_names if rng.random() < 0.7}))
    queries = [DecideQuery(Identifier("customer_id", f"w{n % 50}"),  # some unknown: cold
                           channels[n % len(channels)], limit=int(rng.integers(1, 7)),
                           context={"country": "FR", "basket": float(rng.integers(200))},
                           explain=n % 7 == 0)
               for n in range(200)]
    batch = [q._replace(explain=False) for q in queries[:60]]
    decisions = [engine.decide(q) for q in queries] + engine.decide_many(batch)
    for d in decisions:
        wire = pb.DecideResponse.FromString(encode_decision(d, encodings))
        assert wire == decision_message(d)
    assert any(d.cold_start for d in decisions) and any(not d.cold_start for d in decisions)
    assert any(len(d.ranked) > 1 for d in decisions)


def test_varint_matches_protobuf():
    for n in [1, 127, 128, 300, 2**31 - 1, 2**40 + 5, 2**63 - 1]:
        msg = pb.DecideResponse(decided_at_ms=n)
        assert msg.SerializeToString() == b"\x30" + varint(n)


def test_extreme_integers_encode_as_protobuf_does(engine):
    """Negative and 64-bit values (no caller produces them today) still parse back."""
    encodings = OfferEncodings(engine.catalog)
    d = engine.decide(DecideQuery(Identifier("customer_id", "nobody"), engine.catalog.channels[0]))
    for deliver, eligible in ((-1, 0), (-(2**63), 7), (2**63 - 1, 2**31 - 1)):
        d.deliver_at_ms, d.eligible_count = deliver, eligible
        wire = pb.DecideResponse.FromString(encode_decision(d, encodings))
        assert wire == decision_message(d)
        assert (wire.deliver_at_ms, wire.eligible_count) == (deliver, eligible)
