"""Metrics over HTTP, structured logs with the decision id, health around start/stop."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from decision.edge.server import create_server, start
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, free_port, ident, num, text
from tests.test_events import purchase


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the /metrics endpoint."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


@pytest.fixture
def observed(settings):
    running = create_server(dataclasses.replace(settings, metrics_address="127.0.0.1:0"))
    start(running)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield running, pb_grpc.DecisionServiceStub(ch)
    running.stop(grace=None)


def test_metrics_count_requests_decisions_events_and_describe_the_store(observed):
    running, stub = observed
    before = scrape(running.metrics_port)
    assert total(before, "decision_request_seconds_count") == 0
    stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("m-alice")],
                                               attributes={"tier": num(3)}))
    replies = [stub.Decide(pb.DecideRequest(customer=ident("m-alice"), channel="web",
                                            context={"country": text("FR")}))
               for _ in range(3)]
    replies.append(stub.Decide(pb.DecideRequest(customer=ident("m-bob"), channel="app")))
    with pytest.raises(grpc.RpcError):
        stub.Decide(pb.DecideRequest(customer=ident("m-bob"), channel="fax"))
    stub.Track(purchase("m-alice", 10.0, event_id="m-1"))
    stub.Track(purchase("m-alice", 10.0, event_id="m-1"))  # duplicate
    with pytest.raises(grpc.RpcError):
        stub.Track(pb.Event(type="nope", customer=ident("m-alice")))
    summary = stub.TrackStream(iter([pb.EventBatch(events=[
        purchase("m-carol", 1.0), purchase("m-carol", 2.0),
        pb.Event(type="nope", customer=ident("m-carol"))])]))
    assert (summary.applied, summary.rejected_count) == (2, 1)

    m = scrape(running.metrics_port)
    count = "decision_request_seconds_count"
    assert total(m, count, method="Decide", code="OK") == 4
    assert total(m, count, method="Decide", code="INVALID_ARGUMENT") == 1
    assert total(m, count, method="Track", code="OK") == 2
    assert total(m, count, method="Track", code="INVALID_ARGUMENT") == 1
    assert total(m, count, method="UpsertProfile", code="OK") == 1
    assert total(m, count, method="TrackStream", code="OK") == 1
    # the histogram's buckets are cumulative: the last (+Inf) holds every call
    assert total(m, "decision_request_seconds_bucket", method="Decide", code="OK",
                 le="+Inf") == 4
    assert total(m, "decision_request_seconds_sum", method="Decide", code="OK") > 0
    assert total(m, "decision_decisions_total", channel="web") == 3
    assert total(m, "decision_decisions_total", channel="app") == 1
    for reply, channel in zip(replies, ["web"] * 3 + ["app"]):
        for offer in reply.offers:
            assert total(m, "decision_offers_decided_total", offer=offer.offer_id,
                         channel=channel) >= 1
    assert total(m, "decision_offers_decided_total") == sum(len(r.offers) for r in replies)
    assert total(m, "decision_events_total", outcome="applied") == 1 + 2
    assert total(m, "decision_events_total", outcome="duplicate") == 1
    assert total(m, "decision_events_total", outcome="rejected") == 1 + 1
    assert total(m, "decision_shed_requests_total") == 0
    assert total(m, "decision_requests_in_flight") == 0
    assert total(m, "decision_store_profiles") == 2  # m-alice, m-carol (m-bob: cold start)
    assert 0 < total(m, "decision_store_used_bytes") <= total(m, "decision_store_map_size_bytes")
    assert total(m, "decision_catalog_info", version=replies[0].catalog_version) == 1
    assert total(m, "decision_catalog_offers") == len(stub.ListOffers(
        pb.ListOffersRequest()).offers)


def test_a_reload_changes_the_catalog_version_metric(observed, catalog_file):
    running, stub = observed
    old = stub.ListOffers(pb.ListOffersRequest()).catalog_version
    catalog_file.write_text(catalog_file.read_text().replace('version = "test"',
                                                             'version = "test-2"'))
    new = stub.ReloadCatalog(pb.ReloadCatalogRequest()).version
    assert new.startswith("test-2") and new != old
    m = scrape(running.metrics_port)
    assert total(m, "decision_catalog_info", version=new) == 1
    assert total(m, "decision_catalog_info", version=old) == 0


def test_failed_requests_are_always_logged_successes_only_when_sampled(observed, caplog):
    running, stub = observed  # access_log_sample is 0 here
    with caplog.at_level(logging.INFO, logger="decision.access"):
        stub.Decide(pb.DecideRequest(customer=ident("x"), channel="web"))
        with pytest.raises(grpc.RpcError):
            stub.Decide(pb.DecideRequest(customer=ident("x"), channel="fax"))
    access = [r for r in caplog.records if r.name == "decision.access"]
    assert len(access) == 1
    fields = access[0].fields
    assert (fields["method"], fields["code"]) == ("Decide", "INVALID_ARGUMENT")
    assert fields["error"].startswith("channel: unknown channel 'fax'")
    assert fields["decision_id"] is None and fields["duration_ms"] >= 0


def test_json_log_lines_carry_the_decision_id(tmp_path, catalog_file):
    server = ServerProcess(tmp_path / "store", catalog_file, free_port(),
                           "--log-format", "json", "--access-log-sample", "1")
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            ids = [stub.Decide(pb.DecideRequest(customer=ident(f"j{i}"), channel="web"))
                   .decision_id for i in range(3)]
            with pytest.raises(grpc.RpcError):
                stub.GetProfile(pb.GetProfileRequest(customer=ident("nobody")))
    finally:
        log = server.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [x for x in lines if x["logger"] == "decision.access"]
    decides = [x for x in access if x["method"] == "Decide"]
    assert [x["decision_id"] for x in decides] == ids
    assert all(x["code"] == "OK" and x["level"] == "info" and x["peer"] for x in decides)
    missing = [x for x in access if x["method"] == "GetProfile"]
    assert len(missing) == 1 and missing[0]["code"] == "NOT_FOUND"
    assert missing[0]["level"] == "warning"
    # every line of the process is JSON, the shutdown messages too
    assert any("draining" in x["msg"] for x in lines)
    assert all(line.startswith("{") for line in log.splitlines()
               if line.strip() and not line.startswith("decision: "))


def test_each_worker_serves_its_own_metrics_port(tmp_path, catalog_file):
    port, metrics = free_port(), free_port()
    while True:  # two consecutive free ports
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", metrics + 1))
            break
        except OSError:
            metrics = free_port()
    server = ServerProcess(tmp_path / "store", catalog_file, port, "--workers", "2",
                           "--metrics-address", f"127.0.0.1:{metrics}")
    try:
        server.wait_ready()
        deadline = time.monotonic() + 60
        pages = {}
        while len(pages) < 2:
            for p in (metrics, metrics + 1):
                try:
                    pages[p] = scrape(p)
                except OSError:
                    pass
            assert time.monotonic() < deadline, "both workers' endpoints up"
            time.sleep(0.2)
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            for i in range(40):  # new connections spread over the workers
                with grpc.insecure_channel(server.address) as ch2:
                    pb_grpc.DecisionServiceStub(ch2).Decide(
                        pb.DecideRequest(customer=ident(f"w{i}"), channel="web"))
            stub.Decide(pb.DecideRequest(customer=ident("w"), channel="web"))
        counts = [total(scrape(p), "decision_decisions_total") for p in (metrics, metrics + 1)]
        assert sum(counts) == 41
    finally:
        server.stop()


def test_health_is_serving_only_between_start_and_stop(settings):
    running = create_server(settings)  # warm and bound, not started
    health = health_pb2_grpc.HealthStub
    assert running.health.Check(health_pb2.HealthCheckRequest(), None).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING
    start(running)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        reply = health(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        running.stop(grace=None)
    assert running.health.Check(health_pb2.HealthCheckRequest(), None).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING
