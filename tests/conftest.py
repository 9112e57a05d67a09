"""Shared fixtures: a temporary LMDB store, a real gRPC server on a loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from decision.edge.server import create_server, start
from decision.settings import Settings
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

DATA = Path(__file__).parent / "data"
TEST_CATALOG = DATA / "catalog.toml"

#: .ci/run runs tests/ a second time with NUMBA_DISABLE_JIT=1: the kernels as plain Python
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_jit(why): the test cannot run with NUMBA_DISABLE_JIT=1, for the "
        "reason given; it is skipped there, with that reason")


def pytest_collection_modifyitems(items):
    """``@pytest.mark.needs_jit("why")``: skipped in the JIT-less run, saying why."""
    if not NO_JIT:
        return
    for item in items:
        marker = item.get_closest_marker("needs_jit")
        if marker is not None:
            why = marker.args[0] if marker.args else "compiled kernels"
            item.add_marker(pytest.mark.skip(reason=f"needs the JIT (NUMBA_DISABLE_JIT=1): {why}"))


def stop_process(proc: subprocess.Popen) -> int:
    """SIGTERM a server process (a clean shutdown), SIGKILL it after 30 s; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture
def catalog_file(tmp_path) -> Path:
    """A private copy of the test catalog (tests may rewrite it to test reloads)."""
    path = tmp_path / "catalog.toml"
    shutil.copy(TEST_CATALOG, path)
    return path


@pytest.fixture
def settings(tmp_path, catalog_file) -> Settings:
    return Settings(data_dir=tmp_path / "store", catalog_path=catalog_file,
                    address="127.0.0.1:0", threads=4)


@pytest.fixture
def running(settings):
    """A real server (real LMDB in a temp dir) listening on a free loopback port."""
    r = create_server(settings)
    start(r)
    yield r
    r.stop(grace=None)


@pytest.fixture
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.DecisionServiceStub(channel)


def ident(value: str, kind: str = "customer_id") -> pb.Identifier:
    return pb.Identifier(kind=kind, value=value)


def num(x: float) -> pb.Value:
    return pb.Value(number_value=x)


def text(s: str) -> pb.Value:
    return pb.Value(string_value=s)


def flag(b: bool) -> pb.Value:
    return pb.Value(bool_value=b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``decision serve`` as a real subprocess (for multi-process and kill tests)."""

    def __init__(self, data_dir: Path, catalog: Path, port: int, *extra: str):
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log = Path(data_dir).parent / f"server-{port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "decision.cli", "serve", "--data-dir", str(data_dir),
                 "--catalog", str(catalog), "--address", self.address, *extra],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"server on {self.address} not ready in {timeout} s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


@contextlib.contextmanager
def two_servers(store: Path, catalog: Path):
    """Two ``decision serve`` processes on one store: yields their stubs."""
    servers = [ServerProcess(store, catalog, free_port()) for _ in range(2)]
    channels = []
    try:
        for server in servers:
            server.wait_ready()
        channels = [grpc.insecure_channel(server.address) for server in servers]
        yield [pb_grpc.DecisionServiceStub(channel) for channel in channels]
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            server.stop()
