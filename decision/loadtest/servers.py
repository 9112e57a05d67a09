"""Servers the harness starts itself: the empty-handler floor, a decision server.

Each is a real ``decision`` subprocess on a free loopback port, started with the same
transport settings as ``decision serve`` (``decision.edge.server.grpc_server``), and
stopped with SIGTERM when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from decision.loadtest.client import LoadTestError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process(args: list[str], name: str, env: dict | None = None, timeout: float = 120.0,
             module: str = "decision.cli"):
    address = f"127.0.0.1:{free_port()}"
    log = tempfile.NamedTemporaryFile(prefix=f"decision-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", module, *args, "--address", address],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as ch:
            while True:
                try:
                    grpc.channel_ready_future(ch).result(timeout=0.5)
                    break
                except grpc.FutureTimeoutError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise LoadTestError(f"{name} did not start: "
                                            f"{Path(log.name).read_text()[-2000:]}") from None
        if name == "server":
            _wait_serving(address, deadline)
        yield address
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        os.unlink(log.name)


def _wait_serving(address: str, deadline: float) -> None:
    """Every worker answers once the health service says SERVING on a fresh channel."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise LoadTestError(f"server on {address} not serving in time")


def floor_server(threads: int = 8, env: dict | None = None):
    """``with floor_server() as address``: the empty-handler floor (``decision floor``)."""
    return _process(["floor", "--threads", str(threads)], "floor", env)


def aio_floor_server(env: dict | None = None):
    """The asyncio floor prototype (``benchmarks/aio_floor.py``; run from the repository)."""
    return _process([], "aio-floor", env, module="benchmarks.aio_floor")


def decision_server(data_dir: Path, catalog: Path, workers: int = 1, threads: int = 8,
                    extra: tuple[str, ...] = (), env: dict | None = None):
    """``with decision_server(...) as address``: ``decision serve`` on a free port."""
    return _process(["serve", "--data-dir", str(data_dir), "--catalog", str(catalog),
                     "--workers", str(workers), "--threads", str(threads), *extra],
                    "server", env)
