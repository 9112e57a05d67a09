"""Real server processes: several sharing one store, ``--workers``, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from tests.conftest import TEST_CATALOG, ServerProcess, free_port, ident, num, text, two_servers


def _stub(address: str):
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.DecisionServiceStub(channel)


def test_two_processes_share_one_store(tmp_path):
    with two_servers(tmp_path / "store", TEST_CATALOG) as (stub_a, stub_b):
        ask = pb.DecideRequest(customer=ident("shared"), channel="web",
                               context={"country": text("FR")})
        assert stub_b.Decide(ask).cold_start
        stub_a.UpsertProfile(pb.UpsertProfileRequest(
            identifiers=[ident("shared")], attributes={"tier": num(3), "country": text("FR")}))
        # the very next request to the other process sees the write
        reply = stub_b.Decide(ask)
        assert not reply.cold_start
        assert reply.offers[0].offer_id == "gold-upgrade"
        profile = stub_b.GetProfile(pb.GetProfileRequest(customer=ident("shared")))
        assert profile.attributes["tier"].number_value == 3


def test_workers_share_a_port_and_restart_when_killed(tmp_path):
    port = free_port()
    server = ServerProcess(tmp_path / "store", TEST_CATALOG, port, "--workers", "2")
    try:
        server.wait_ready()
        channel, stub = _stub(server.address)
        with channel:
            for i in range(50):
                stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident(f"w{i}")],
                                                           attributes={"tier": num(i % 4)}))
            for i in range(50):
                got = stub.GetProfile(pb.GetProfileRequest(customer=ident(f"w{i}")))
                assert got.attributes["tier"].number_value == i % 4
        children = _children(server.proc.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # the supervisor replaces the dead worker
            now = _children(server.proc.pid)
            if len(now) == 2 and children[0] not in now:
                break
            assert time.monotonic() < deadline, f"worker not replaced: {now}"
            time.sleep(0.2)
        server.wait_ready()
        # connections the dead worker held are reset; a client that reconnects is served
        channel, stub = _stub(server.address)
        with channel:
            for _ in range(20):
                reply = stub.Decide(pb.DecideRequest(customer=ident("w1"), channel="web"),
                                    wait_for_ready=True, timeout=30)
                assert reply.offers
    finally:
        output = server.stop()
    assert server.proc.returncode == 0, output


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout.split()
    # multiprocessing's spawn start method adds a resource tracker child; keep servers
    return [int(p) for p in out if "decision" in _cmdline(int(p)) or "spawn_main" in _cmdline(int(p))]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_demo_once_answers_a_real_question(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "decision.cli", "demo", "--data-dir", str(tmp_path / "demo"),
         "--customers", "3000", "--offers", "80", "--address", "127.0.0.1:0", "--once",
         "--quiet"],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Next best offers for C0000042 on kiosk" in out.stdout
    assert "1. " in out.stdout and "score " in out.stdout and "propensity" in out.stdout
    assert "decision " in out.stdout
    assert (tmp_path / "demo" / "catalog.toml").exists()


def test_ask_prints_a_decision_for_a_person(running):
    address = f"127.0.0.1:{running.port}"
    channel, stub = _stub(address)
    with channel:
        stub.UpsertProfile(pb.UpsertProfileRequest(
            identifiers=[ident("kiosk-1")], attributes={"tier": num(3), "country": text("FR")},
            features={"frequency": 1.0}))
    out = subprocess.run(
        [sys.executable, "-m", "decision.cli", "ask", "--address", address, "--customer",
         "kiosk-1", "--channel", "kiosk", "--context", "country=FR"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Next best offers for kiosk-1 on kiosk" in out.stdout
    assert "1. Upgrade to Gold  [gold-upgrade]" in out.stdout
    assert "eligible: profile.tier >= 2" in out.stdout
    assert "because: frequency (+0.80)" in out.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "decision.cli", "ask", "--address", address, "--customer",
         "kiosk-1", "--channel", "fax"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT: channel: unknown channel 'fax'" in bad.stderr


@pytest.mark.parametrize("workers", [["--address", "127.0.0.1:0"],
                                     ["--workers", "2", "--address", "127.0.0.1:1"]])
def test_serve_refuses_a_bad_catalog_at_start(tmp_path, workers):
    bad = tmp_path / "bad.toml"
    bad.write_text(TEST_CATALOG.read_text().replace("profile.tier >= 2", "profile.tierr >= 2"))
    out = subprocess.run(
        [sys.executable, "-m", "decision.cli", "serve", "--data-dir", str(tmp_path / "s"),
         "--catalog", str(bad), *workers],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "offer 'gold-upgrade'" in out.stderr and "unknown field 'profile.tierr'" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "workers must be >= 1"),
    (["--address", "nowhere"], "address must be host:port"),
    (["--workers", "2", "--address", "127.0.0.1:0"], "workers > 1 need a fixed port"),
    (["--identifier-kinds", "cookie,Bad Kind"], "identifier kind 'Bad Kind' must be"),
])
def test_serve_refuses_bad_settings(tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, "-m", "decision.cli", "serve", "--data-dir", str(tmp_path / "s"),
         "--catalog", str(TEST_CATALOG), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr


def test_a_reload_reaches_every_process_sharing_the_store(tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG.read_text())
    with two_servers(tmp_path / "store", catalog) as (stub_a, stub_b):
        ask = pb.DecideRequest(customer=ident("x"), channel="email")
        old = stub_b.Decide(ask).catalog_version
        catalog.write_text(TEST_CATALOG.read_text().replace('version = "test"',
                                                            'version = "v2"'))
        new = stub_a.ReloadCatalog(pb.ReloadCatalogRequest()).version
        assert new != old and new.startswith("v2@")
        deadline = time.monotonic() + 10
        while stub_b.Decide(ask).catalog_version != new:
            assert time.monotonic() < deadline, "process b never followed the reload"
            time.sleep(0.1)


def test_identifier_kinds_are_configurable(tmp_path):
    server = ServerProcess(tmp_path / "store", TEST_CATALOG, free_port(),
                           "--identifier-kinds", "customer_id,crm_id")
    try:
        server.wait_ready()
        channel, stub = _stub(server.address)
        with channel:
            stub.UpsertProfile(pb.UpsertProfileRequest(identifiers=[ident("C-1", "crm_id")]))
            assert stub.GetProfile(pb.GetProfileRequest(
                customer=ident("C-1", "crm_id"))).identifiers[0].kind == "crm_id"
            with pytest.raises(grpc.RpcError) as err:
                stub.Decide(pb.DecideRequest(customer=ident("x", "cookie"), channel="web"))
            assert "unknown identifier kind 'cookie' (known: crm_id, customer_id)" in \
                err.value.details()
    finally:
        server.stop()
