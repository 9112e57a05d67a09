"""The catalog: load-time validation, ListOffers, and reload without restart."""

from __future__ import annotations

import threading

import grpc
import pytest

from decision.config.catalog import load_catalog
from decision.errors import CatalogError
from decision.v1 import decision_pb2 as pb
from tests.conftest import TEST_CATALOG, ident, text

BASE = TEST_CATALOG.read_text()


def test_offers_are_sorted_and_compiled():
    catalog = load_catalog(TEST_CATALOG)
    ids = [o.id for o in catalog.offers]
    assert ids == sorted(ids)
    assert catalog.weights.shape == (7, 4) and catalog.weights.dtype.name == "float32"
    assert catalog.programs.shape == (7, 2)
    # only the fields some rule reads are filled per request
    assert {f.name for f in catalog.profile_fields} == {"tier", "country", "vip", "high_value"}
    assert set(catalog.context_fields) == {"country", "basket"}


@pytest.mark.parametrize("change, message", [
    (("rule = 'profile.tier >= 2 and", "rule = 'profile.tierr >= 2 and"),
     "offer 'gold-upgrade': rule `profile.tierr >= 2 and context.country == \"FR\"` at column 1: "
     "unknown field 'profile.tierr'"),
    (('rule = "not profile.vip"', 'rule = "not profile.vip and"'),
     "offer 'welcome-10': rule `not profile.vip and`: syntax error"),
    (('rule = "context.basket >= 100"', 'rule = "context.basket >= \\"100\\""'),
     "offer 'basket-bonus': rule `context.basket >= \"100\"` at column 1: cannot compare number"),
    (('channels = ["kiosk", "contact_center"]', 'channels = ["kiosk", "fax"]'),
     "offer 'lounge-pass': channels: unknown channel 'fax'"),
    (("value = 25.0", "value = -25.0"), "offer 'lounge-pass': value: must be >= 0"),
    (('id = "newsletter"', 'id = "welcome-10"'), "offer 'welcome-10' is defined twice"),
    (("features = { premium = 1.0 }\n[offer.creative]\ntitle = \"Go Gold\"",
      "features = { platinum = 1.0 }\n[offer.creative]\ntitle = \"Go Gold\""),
     "offer 'gold-upgrade': features: unknown feature 'platinum'"),
    (("valid_until = 2020-01-01T00:00:00Z",
      "valid_from = 2021-01-01T00:00:00Z\nvalid_until = 2020-01-01T00:00:00Z"),
     "offer 'expired-promo': valid_from must be before valid_until"),
    (("customer_weights = { recency", "customer_weights = { age"),
     "model.customer_weights: unknown feature 'age'"),
    (('tier = "number"', 'tier = "integer"'), "profile.tier: type must be one of"),
    (("customer_weights = { recency = -0.5", "customer_weights = { recency = 1e39"),
     "model: weights too large"),
])
def test_bad_catalog_is_rejected_with_offer_and_reason(tmp_path, change, message):
    old, new = change
    assert old in BASE
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_list_offers(stub):
    everything = stub.ListOffers(pb.ListOffersRequest())
    assert len(everything.offers) == 7
    assert everything.catalog_version.startswith("test@")
    kiosk = stub.ListOffers(pb.ListOffersRequest(channel="kiosk"))
    assert {o.offer_id for o in kiosk.offers} == {"gold-upgrade", "lounge-pass", "expired-promo",
                                                  "newsletter"}
    checkout = stub.ListOffers(pb.ListOffersRequest(channel="web", placement="checkout"))
    assert "gold-upgrade" not in {o.offer_id for o in checkout.offers}
    expired = next(o for o in everything.offers if o.offer_id == "expired-promo")
    assert expired.valid_until_ms == 1577836800000 and expired.valid_from_ms == 0
    with pytest.raises(grpc.RpcError) as err:
        stub.ListOffers(pb.ListOffersRequest(channel="fax"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_reload_swaps_the_catalog_without_restart(stub, catalog_file):
    ask = pb.DecideRequest(customer=ident("nobody"), channel="email")
    before = stub.Decide(ask)
    catalog_file.write_text(BASE.replace('version = "test"', 'version = "test2"') + """
[[offer]]
id = "aaa-new"
name = "Brand new"
channels = ["email"]
value = 500.0
""")
    info = stub.ReloadCatalog(pb.ReloadCatalogRequest())
    assert info.version.startswith("test2@") and info.offer_count == 8
    after = stub.Decide(ask)
    assert after.catalog_version == info.version != before.catalog_version
    assert after.offers[0].offer_id == "aaa-new"


def test_failed_reload_keeps_the_old_catalog_serving(stub, catalog_file):
    version = stub.ListOffers(pb.ListOffersRequest()).catalog_version
    catalog_file.write_text(BASE.replace("profile.tier >= 2", "profile.rank >= 2"))
    with pytest.raises(grpc.RpcError) as err:
        stub.ReloadCatalog(pb.ReloadCatalogRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "offer 'gold-upgrade'" in err.value.details()
    assert "unknown field 'profile.rank'" in err.value.details()
    reply = stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"))
    assert reply.catalog_version == version


def test_reload_under_load_fails_no_request(stub, catalog_file):
    variants = [BASE, BASE.replace("value = 40.0", "value = 400.0")]
    errors: list[Exception] = []
    seen: set[str] = set()
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                seen.add(stub.Decide(pb.DecideRequest(
                    customer=ident("x"), channel="web", context={"country": text("FR")}),
                    timeout=5).catalog_version)
            except Exception as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            catalog_file.write_text(variants[i % 2])
            stub.ReloadCatalog(pb.ReloadCatalogRequest())
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert len(seen) == 2  # both versions answered, no request failed


def test_health_and_reflection(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "decision.v1.DecisionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflect.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"decision.v1.DecisionService", "grpc.health.v1.Health"} <= names


def test_committed_stubs_are_current():
    from decision.protogen import stale_files

    assert stale_files() == []


def test_processes_with_different_catalog_files_do_not_take_turns(tmp_path, catalog_file):
    """Two engines on one store, each with its own (different) file: a reload in one
    is not chased forever by the other."""
    from decision.core.engine import Engine
    from decision.errors import FailedPrecondition
    from decision.settings import Settings
    from decision.store.database import ProfileStore

    other = tmp_path / "other.toml"
    other.write_text(BASE.replace('version = "test"', 'version = "other"'))
    store = ProfileStore(tmp_path / "shared")
    a = Engine(Settings(data_dir=tmp_path / "shared", catalog_path=catalog_file), store=store)
    b = Engine(Settings(data_dir=tmp_path / "shared", catalog_path=other), store=store)
    assert store.published_catalog() == b.catalog.version  # the last to start
    assert b.sync_catalog() is None
    with pytest.raises(FailedPrecondition, match="published catalog other@.* holds test@"):
        a.sync_catalog()  # a cannot reach b's version from its own file
    assert a.catalog.version.startswith("test@")
    assert store.published_catalog().startswith("other@")  # a did not republish
    assert a.sync_catalog() is None  # and does not try again
    store.close()
