"""Extreme (finite) features through the public gRPC interface: a real server.

UpsertProfile accepts any finite float32 feature, up to 3.4e38. With model weights of
+-3 the float32 products w * x overflowed (3.4e38 x 3 = inf, and inf - inf = NaN): the
offer scored NaN and was dropped, reasons carried inf, and propensities came out as
exactly 0 or 1. ``kernels.scoring`` now takes the products in float64 and clamps the
log-odds to [-LOGIT_MAX, LOGIT_MAX], so every eligible offer is ranked with a finite
score, a propensity strictly inside (0, 1) and finite reasons.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from decision.v1 import decision_pb2 as pb
from kernels.scoring import LOGIT_MAX
from tests.conftest import TEST_CATALOG, flag, ident, num, text

F32_MAX = float(np.finfo(np.float32).max)
FEATURES = ("recency", "frequency", "monetary", "app_user")  # tests/data/catalog.toml
ATTRIBUTES = {"tier": 3.0, "country": "FR", "vip": False}

# The model of tests/data/catalog.toml, and a variant with weights of +-3 (the
# products of 3.4e38 overflow float32 there). Offer features: gold-upgrade premium 1,
# welcome-10 discount 1, lounge-pass premium 1 and discount 0.5, the others none.
STOCK = {"recency": -0.5, "frequency": 0.8, "interaction": (1.0, -0.5)}
HEAVY = {"recency": -3.0, "frequency": 3.0, "app_user": 3.0, "interaction": (3.0, -3.0)}
OFFER_FEATURES = {"gold-upgrade": (1.0, 0.0), "welcome-10": (0.0, 1.0),
                  "lounge-pass": (1.0, 0.5)}

# recency, frequency, monetary, app_user (sent as float32 on the wire)
EXTREMES = [
    (3.4e38, -3.4e38, 3.4e38, -3.4e38),
    (3.4e38, 3.4e38, 3.4e38, 3.4e38),
    (-3.4e38, -3.4e38, -3.4e38, -3.4e38),
    (F32_MAX, -F32_MAX, 1e-45, -1e-40),  # the largest float32, and subnormals
]
NORMAL = (0.2, 2.0, 1.5, 0.0)

WHERE = [("web", "home_hero", {"country": text("FR")}), ("kiosk", "", {}), ("email", "", {}),
         ("app", "", {"country": text("FR")})]


@pytest.fixture(params=["stock", "heavy"])
def model(request):
    return {"stock": STOCK, "heavy": HEAVY}[request.param]


@pytest.fixture
def catalog_file(tmp_path, model):
    """The test catalog, with the heavy model's weights where asked (conftest's
    ``settings`` reads this fixture)."""
    path = tmp_path / "catalog.toml"
    shutil.copy(TEST_CATALOG, path)
    if model is HEAVY:
        source = path.read_text()
        for old, new in [
            ("customer_weights = { recency = -0.5, frequency = 0.8 }",
             "customer_weights = { recency = -3.0, frequency = 3.0, app_user = 3.0 }"),
            ("interactions = { monetary = [1.0, -0.5] }",
             "interactions = { monetary = [3.0, -3.0] }"),
        ]:
            assert source.count(old) == 1
            source = source.replace(old, new)
        path.write_text(source)
    return path


def folded(model: dict, offer_id: str) -> tuple[np.ndarray, float]:
    """Offer ``offer_id``'s float32 weights over FEATURES and float64 bias, as
    ``decision.config.catalog`` folds them."""
    premium, discount = OFFER_FEATURES.get(offer_id, (0.0, 0.0))
    a_premium, a_discount = model["interaction"]
    w = np.array([model.get("recency", 0.0), model.get("frequency", 0.0),
                  a_premium * premium + a_discount * discount, model.get("app_user", 0.0)])
    return w.astype(np.float32), -1.0 + 0.2 * premium


def expected(model: dict, offer_id: str, x: tuple) -> tuple[float, list[tuple[str, float]]]:
    """(propensity, FEATURE reasons by largest |contribution|) computed in float64."""
    w, bias = folded(model, offer_id)
    c = w.astype(np.float64) * np.asarray(x, dtype=np.float32).astype(np.float64)
    z = min(LOGIT_MAX, max(-LOGIT_MAX, bias + math.fsum(c.tolist())))
    p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    order = sorted((j for j in range(len(c)) if c[j] != 0.0), key=lambda j: (-abs(c[j]), j))
    return p, [(FEATURES[j], float(c[j])) for j in order[:3]]


def upsert(stub, who: str, x: tuple):
    stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[ident(who)],
        attributes={"tier": num(ATTRIBUTES["tier"]), "country": text(ATTRIBUTES["country"]),
                    "vip": flag(ATTRIBUTES["vip"])},
        features=dict(zip(FEATURES, x))))


def decide(stub, who: str, channel: str, placement: str, context: dict) -> pb.DecideResponse:
    return stub.Decide(pb.DecideRequest(customer=ident(who), channel=channel,
                                        placement=placement, limit=10, context=context))


def check_finite_ranked(reply: pb.DecideResponse, normal: pb.DecideResponse, model: dict,
                        x: tuple) -> None:
    # the same attributes: the same eligible offers as the normal profile, all ranked
    assert reply.eligible_count == normal.eligible_count
    assert len(reply.offers) == reply.eligible_count > 0
    assert sorted(o.offer_id for o in reply.offers) == sorted(o.offer_id for o in normal.offers)
    assert [o.rank for o in reply.offers] == list(range(1, len(reply.offers) + 1))
    for o in reply.offers:
        assert math.isfinite(o.score) and 0.0 < o.propensity < 1.0, o
        assert o.score == o.propensity * o.value * o.lever
        p, reasons = expected(model, o.offer_id, x)
        assert o.propensity == pytest.approx(p, rel=1e-9, abs=0.0), o.offer_id
        assert all(math.isfinite(r.weight) for r in o.reasons), o
        got = [(r.detail, r.weight) for r in o.reasons if r.code == "FEATURE"]
        assert got == reasons, o.offer_id  # exact float64 products
    scores = [o.score for o in reply.offers]
    assert scores == sorted(scores, reverse=True)


def test_extreme_features_rank_every_eligible_offer(stub, model):
    upsert(stub, "normal", NORMAL)
    for n, x in enumerate(EXTREMES):
        who = f"extreme-{n}"
        upsert(stub, who, x)
        stored = stub.GetProfile(pb.GetProfileRequest(customer=ident(who)))
        assert [stored.features[f] for f in FEATURES] == \
            np.asarray(x, dtype=np.float32).tolist()
        for channel, placement, context in WHERE:
            normal = decide(stub, "normal", channel, placement, context)
            check_finite_ranked(normal, normal, model, NORMAL)
            reply = decide(stub, who, channel, placement, context)
            check_finite_ranked(reply, normal, model, x)
            again = decide(stub, who, channel, placement, context)
            assert [(o.offer_id, o.score) for o in again.offers] == \
                [(o.offer_id, o.score) for o in reply.offers]


def test_extreme_features_in_a_batch(stub, model):
    """DecideBatch (one kernel call for many requests) gives each request the single
    Decide's answer."""
    upsert(stub, "normal", NORMAL)
    for n, x in enumerate(EXTREMES):
        upsert(stub, f"extreme-{n}", x)
    requests = [pb.DecideRequest(customer=ident(f"extreme-{n}"), channel=channel,
                                 placement=placement, limit=10, context=context)
                for n in range(len(EXTREMES)) for channel, placement, context in WHERE]
    batch = stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
    assert len(batch.responses) == len(requests)
    for request, reply in zip(requests, batch.responses):
        x = EXTREMES[int(request.customer.value.split("-")[1])]
        normal = decide(stub, "normal", request.channel, request.placement,
                        dict(request.context))
        check_finite_ranked(reply, normal, model, x)
        single = stub.Decide(request)
        assert [(o.offer_id, o.score, o.propensity) for o in reply.offers] == \
            [(o.offer_id, o.score, o.propensity) for o in single.offers]
