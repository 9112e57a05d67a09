"""Small fixes, each checked where a user meets it: the port file, ReloadCatalog's
messages, JSON logs (banner and gRPC's C core included), optional event fields,
repeated identifiers, and the rate-limited log of refused tokens."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decision.edge import gate as gate_module
from decision.edge.server import create_server, start
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import TEST_CATALOG, free_port, ident, num, stop_process, text
from tests.test_observability import scrape, total
from tests.test_security import CREDENTIALS, TOKENS, bearer, pki  # noqa: F401 (fixture)


# ------------------------------------------------------------------ helpers
def _serve(tmp_path: Path, *args: str, catalog: Path = TEST_CATALOG, name: str = "server"):
    """``decision serve`` as a subprocess; stdout and stderr each to a file."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "decision.cli", "serve", "--data-dir",
             str(tmp_path / f"{name}-store"), "--catalog", str(catalog), *args],
            stdout=o, stderr=e, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, out, err


def _wait_for_file(path: Path, proc: subprocess.Popen, err: Path, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"server exited: {err.read_text()}"
        assert time.monotonic() < deadline, f"{path} not written in {timeout} s"
        time.sleep(0.05)
    return path.read_text()


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=10).status


# ------------------------------------------------------------------ 1. --port-file
def test_port_file_names_the_port_picked_while_serving(tmp_path):
    port_file = tmp_path / "run" / "decision.port"
    port_file.parent.mkdir()
    proc, out, err = _serve(tmp_path, "--address", "127.0.0.1:0", "--port-file", str(port_file))
    try:
        content = _wait_for_file(port_file, proc, err)
        assert re.fullmatch(r"[1-9][0-9]*\n", content), repr(content)
        port = int(content)
        # written once SERVING: the first look at that port already says so
        assert _health(port) == health_pb2.HealthCheckResponse.SERVING
        assert os.listdir(port_file.parent) == ["decision.port"]  # nothing left aside
        # text mode keeps the plain banner on stdout, with the same port
        assert f"decision: serving on 127.0.0.1:{port} (pid {proc.pid}" in out.read_text()
    finally:
        code = stop_process(proc)
    assert code == 0, err.read_text()
    assert not port_file.exists()  # removed at a clean shutdown


def test_port_file_in_a_missing_directory_is_refused_at_start(tmp_path):
    proc, _, err = _serve(tmp_path, "--address", "127.0.0.1:0",
                          "--port-file", str(tmp_path / "nowhere" / "port"))
    assert proc.wait(timeout=60) == 2
    assert "--port-file" in err.read_text() and "no directory" in err.read_text()
    assert not (tmp_path / "server-store").exists()  # refused before touching anything


def test_with_workers_the_supervisor_writes_the_shared_port(tmp_path):
    port, port_file = free_port(), tmp_path / "decision.port"
    proc, _, err = _serve(tmp_path, "--workers", "2", "--address", f"127.0.0.1:{port}",
                          "--port-file", str(port_file))
    try:
        assert _wait_for_file(port_file, proc, err, timeout=180) == f"{port}\n"
        assert _health(port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        code = stop_process(proc)
    assert code == 0, err.read_text()
    assert not port_file.exists()


# ------------------------------------------------------------------ 2. ReloadCatalog
def test_reload_errors_name_the_catalog_file_not_where_the_server_keeps_it(
        stub, catalog_file, settings, caplog):
    good = catalog_file.read_text()
    version = stub.ListOffers(pb.ListOffersRequest()).catalog_version
    where = str(catalog_file.parent)
    cases = [
        (good.replace("profile.tier >= 2", "profile.tierr >= 2"), "INVALID_ARGUMENT",
         "catalog.toml: offer 'gold-upgrade'", "unknown field 'profile.tierr'"),
        ("version = [", "INVALID_ARGUMENT", "catalog.toml: not valid TOML", ""),
        (good.replace('"app_user"]', '"app_user", "extra"]', 1), "FAILED_PRECONDITION",
         "store: the store's feature vector", "use a new data directory"),
        (None, "INVALID_ARGUMENT", "catalog.toml: cannot read the catalog", "No such file"),
    ]
    for content, code, start_, also in cases:
        if content is None:
            catalog_file.unlink()
        else:
            catalog_file.write_text(content)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="decision"), \
                pytest.raises(grpc.RpcError) as err:
            stub.ReloadCatalog(pb.ReloadCatalogRequest(), timeout=30)
        message = err.value.details()
        assert err.value.code().name == code, message
        assert message.startswith(start_), message
        assert also in message
        assert where not in message and str(settings.data_dir) not in message
        # the server's log keeps the full path for its operators
        logged = [r.getMessage() for r in caplog.records
                  if r.name == "decision.edge.servicer"]
        assert len(logged) == 1 and (str(catalog_file) in logged[0]
                                     or str(settings.data_dir) in logged[0]), logged
        assert stub.ListOffers(pb.ListOffersRequest()).catalog_version == version
    catalog_file.write_text(good.replace('version = "test"', 'version = "test-2"'))
    assert stub.ReloadCatalog(pb.ReloadCatalogRequest(), timeout=30).version.startswith("test-2")


# ------------------------------------------------------------------ 3. JSON logs
def test_json_mode_writes_every_line_as_json_grpc_core_included(tmp_path, pki):  # noqa: F811
    port_file = tmp_path / "port"
    proc, out, err = _serve(
        tmp_path, "--address", "127.0.0.1:0", "--port-file", str(port_file),
        "--log-format", "json", "--tls-cert", str(pki["server.pem"]),
        "--tls-key", str(pki["server.key"]), "--metrics-address", "127.0.0.1:0")
    try:
        port = int(_wait_for_file(port_file, proc, err))
        address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(address) as ch:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError) as failed:
                pb_grpc.DecisionServiceStub(ch).Decide(
                    pb.DecideRequest(customer=ident("x"), channel="web"), timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes())
        with grpc.secure_channel(address, creds) as ch:  # and a client that trusts the CA
            assert pb_grpc.DecisionServiceStub(ch).Decide(
                pb.DecideRequest(customer=ident("x"), channel="web"), timeout=10).offers
        deadline = time.monotonic() + 20
        while "Handshake failed" not in err.read_text():  # gRPC's C core logged it
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
    finally:
        code = stop_process(proc)
    assert code == 0, err.read_text()
    lines = []
    for stream in (out, err):
        for line in stream.read_text().splitlines():
            if line.strip():
                record = json.loads(line)  # every line, banner and C core included
                assert {"ts", "level", "logger", "msg"} <= set(record), line
                lines.append(record)
    serving = [x for x in lines if x["msg"].startswith(f"serving on 127.0.0.1:{port} ")]
    assert len(serving) == 1 and serving[0]["port"] == port
    assert serving[0]["security"] == "TLS, no credentials"
    assert any(x["msg"].startswith("metrics on http://127.0.0.1:") for x in lines)
    core = [x for x in lines if x["logger"] == "grpc" and "Handshake failed" in x["msg"]]
    assert core and re.fullmatch(r"[\w./-]+:\d+", core[0]["source"]), core
    assert any("draining" in x["msg"] for x in lines)  # and the shutdown


def test_json_mode_reports_a_refused_start_as_json(tmp_path):
    proc, out, err = _serve(tmp_path, "--address", "nowhere", "--log-format", "json")
    assert proc.wait(timeout=60) == 2
    records = [json.loads(line) for line in err.read_text().splitlines() if line.strip()]
    assert out.read_text() == ""
    assert [(r["level"], r["logger"]) for r in records] == [("error", "decision")]
    assert "address must be host:port" in records[0]["msg"]


# ------------------------------------------------------------------ 4. event fields
def test_fields_an_action_reads_are_required_the_others_optional(stub):
    # page_view declares `page`, which no action reads: optional
    reply = stub.Track(pb.Event(type="page_view", customer=ident("opt-1")))
    assert stub.GetProfile(pb.GetProfileRequest(customer=ident("opt-1"))).profile_key == \
        reply.profile_key
    # ...but type-checked when present
    with pytest.raises(grpc.RpcError) as err:
        stub.Track(pb.Event(type="page_view", customer=ident("opt-1"),
                            attributes={"page": num(3)}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "attributes['page']: expected a string, got a number"
    # attributes the type does not declare are ignored
    stub.Track(pb.Event(type="page_view", customer=ident("opt-1"),
                        attributes={"page": text("home"), "referrer": num(1)}))
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("opt-1")))
    assert got.counters["page_views"] == 2 and "referrer" not in got.attributes
    # purchase's `sku` is read by an action (attribute.last_sku): required
    with pytest.raises(grpc.RpcError) as err:
        stub.Track(pb.Event(type="purchase", customer=ident("opt-1"),
                            attributes={"amount": num(5)}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("attributes['sku']: required by event type "
                                          "'purchase'")
    got = stub.GetProfile(pb.GetProfileRequest(customer=ident("opt-1")))
    assert "purchases" not in got.counters  # nothing applied


# ------------------------------------------------------------------ 5. repeated identifiers
def _identifiers(profile: pb.Profile) -> list[tuple[str, str]]:
    return [(i.kind, i.value) for i in profile.identifiers]


def test_identify_counts_an_identifier_sent_twice_once(stub):
    a, b = ident("dup-a"), ident("dup-b", "cookie")
    for request in ([a, a], [a, pb.Identifier(value="dup-a")]):  # "" is customer_id
        with pytest.raises(grpc.RpcError) as err:
            stub.Identify(pb.IdentifyRequest(identifiers=request))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "distinct" in err.value.details() and "got 1" in err.value.details()
    with pytest.raises(grpc.RpcError):  # and nothing was created
        stub.GetProfile(pb.GetProfileRequest(customer=a))

    created = stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[a]))
    reply = stub.Identify(pb.IdentifyRequest(identifiers=[a, a, b]))
    assert reply.profile.profile_key == created.profile_key
    assert list(reply.merged_profile_keys) == []
    expected = [("customer_id", "dup-a"), ("cookie", "dup-b")]
    assert _identifiers(reply.profile) == expected
    for who in (a, b):
        got = stub.GetProfile(pb.GetProfileRequest(customer=who))
        assert got.profile_key == created.profile_key and _identifiers(got) == expected


def test_identify_merges_profiles_named_twice_once(stub):
    a, b = ident("dm-a"), ident("dm-b", "device_id")
    for who in (a, b):
        stub.Track(pb.Event(type="page_view", customer=who))
    reply = stub.Identify(pb.IdentifyRequest(identifiers=[b, a, b, a]))
    assert len(reply.merged_profile_keys) == 1
    assert reply.profile.counters["page_views"] == 2
    assert sorted(_identifiers(reply.profile)) == [("customer_id", "dm-a"),
                                                   ("device_id", "dm-b")]


def test_upsert_stores_an_identifier_sent_twice_once(stub):
    a = ident("up-a")
    reply = stub.UpsertProfile(pb.UpsertProfileRequest(
        identifiers=[a, a, pb.Identifier(value="up-a")], attributes={"tier": num(1)}))
    assert _identifiers(reply) == [("customer_id", "up-a")]
    again = stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[a, a],
                                                       attributes={"tier": num(2)}))
    assert again.profile_key == reply.profile_key
    got = stub.GetProfile(pb.GetProfileRequest(customer=a))
    assert _identifiers(got) == [("customer_id", "up-a")]
    assert got.attributes["tier"].number_value == 2


# ------------------------------------------------------------------ 6. refused tokens
@pytest.fixture
def secured_with_metrics(settings, tmp_path):
    credentials = tmp_path / "clients.toml"
    credentials.write_text(CREDENTIALS)
    running = create_server(dataclasses.replace(
        settings, credentials=credentials, metrics_address="127.0.0.1:0",
        access_log_sample=1.0))
    start(running)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield running, pb_grpc.DecisionServiceStub(ch)
    running.stop(grace=None)


def test_guessed_tokens_are_all_counted_but_logged_at_most_once_a_second(
        secured_with_metrics, caplog, monkeypatch):
    running, stub = secured_with_metrics
    request = pb.DecideRequest(customer=ident("x"), channel="web")
    stub.Decide(request, metadata=bearer("frontend"), timeout=10)  # connected, warm

    def guess(i: int) -> None:
        with pytest.raises(grpc.RpcError) as err:
            stub.Decide(request, timeout=10,
                        metadata=(("authorization", f"Bearer guess-{i:04d}-0123456789abcdef"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with caplog.at_level(logging.INFO, logger="decision.access"):
        started = time.monotonic()
        for i in range(200):
            guess(i)
        elapsed = time.monotonic() - started
        burst = [r for r in caplog.records if r.name == "decision.access"]
        # one line, and one more per interval begun: at most 2 when it took under 1 s
        interval = gate_module.REFUSED_LOG_INTERVAL_S
        assert 1 <= len(burst) <= 1 + math.ceil(elapsed / interval), (elapsed, len(burst))
        if elapsed < interval:
            assert len(burst) <= 2
        # the next line, once the interval has passed, says how many went unlogged
        monkeypatch.setattr(gate_module, "REFUSED_LOG_INTERVAL_S", 0.0)
        guess(200)
        # a client that lacks a role is logged every time
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as err:
                stub.ReloadCatalog(pb.ReloadCatalogRequest(), metadata=bearer("frontend"),
                                   timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    access = [r for r in caplog.records if r.name == "decision.access"]
    refused = [r for r in access if r.fields["code"] == "UNAUTHENTICATED"]
    assert len(refused) == len(burst) + 1
    unlogged = sum(int(m[1]) for r in refused
                   if (m := re.search(r"\((\d+) more refused since the last line",
                                      r.fields["error"])))
    assert len(refused) + unlogged == 201  # every refused call accounted for
    assert all(r.fields["client"] is None and "guess-" not in r.fields["error"]
               for r in refused)
    denied = [r for r in access if r.fields["code"] == "PERMISSION_DENIED"]
    assert len(denied) == 5 and all(r.fields["client"] == "frontend" for r in denied)
    everything = "\n".join(f"{r.getMessage()} {r.fields}" for r in access)
    assert "guess-" not in everything and TOKENS["frontend"] not in everything

    m = scrape(running.metrics_port)
    count = "decision_request_seconds_count"
    assert total(m, count, method="Decide", code="UNAUTHENTICATED") == 201
    assert total(m, count, method="ReloadCatalog", code="PERMISSION_DENIED") == 5
    assert total(m, count, method="Decide", code="OK") == 1
