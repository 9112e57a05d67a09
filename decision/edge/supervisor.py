"""Several server processes on one port, over one store, kept alive.

``serve_workers`` checks the configuration and compiles the kernels once, then runs
``settings.workers`` processes sharing the port (SO_REUSEPORT) and the LMDB
environment, and restarts any that dies (at once if it lived ``HEALTHY_AFTER_S``,
else after a growing delay).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time

from decision.core.engine import Engine
from decision.edge.server import serve
from decision.logs import configure as configure_logs
from decision.settings import Settings

log = logging.getLogger("decision.edge.supervisor")


def _worker(settings: Settings, slot: int) -> None:
    configure_logs(settings.log_format)
    if settings.metrics_address is not None:  # worker i: metrics port + i
        host, _, port = settings.metrics_address.rpartition(":")
        settings = dataclasses.replace(settings, metrics_address=f"{host}:{int(port) + slot}")
    serve(settings, reuse_port=True)


RESTART_BACKOFF_S = (1.0, 30.0)  # first and largest delay before restarting a worker
HEALTHY_AFTER_S = 10.0  # a worker that lived this long restarts at once


def serve_workers(settings: Settings) -> None:
    """Run ``settings.workers`` processes sharing the port; restart any that dies.

    The catalog and the store are checked here first, so a bad configuration stops
    the command with its message instead of crash-looping workers, and the kernels
    are compiled before any worker starts; a worker that dies young is restarted
    after a growing delay.
    """
    if settings.workers == 1:
        serve(settings)
        return
    # Validate the catalog and the store schema (or raise), and compile the kernels
    # into numba's on-disk cache here, once: processes that add to that cache at the
    # same moment can corrupt it, so the workers must find it complete.
    engine = Engine(settings)
    engine.warm(batch=True)
    engine.close()
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    delay: dict[int, float] = {}
    due: dict[int, float] = {}
    stopping = threading.Event()

    def spawn(slot: int) -> None:
        p = ctx.Process(target=_worker, args=(settings, slot), name=f"decision-worker-{slot}")
        p.start()
        procs[slot], started[slot] = p, time.monotonic()

    def on_signal(signum, frame):
        if signum != signal.SIGHUP:
            stopping.set()
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signum)  # workers stop on TERM/INT and reload on HUP

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by workers until ready
    for slot in range(settings.workers):
        spawn(slot)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    while not stopping.is_set():
        multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
        now = time.monotonic()
        for slot, p in list(procs.items()):
            if p.is_alive() or stopping.is_set():
                continue
            if slot not in due:
                young = now - started[slot] < HEALTHY_AFTER_S
                delay[slot] = (min(RESTART_BACKOFF_S[1], delay.get(slot, 0) * 2
                                   or RESTART_BACKOFF_S[0]) if young else 0.0)
                due[slot] = now + delay[slot]
                log.warning("worker %s (pid %s) exited with %s; restarting in %.0f s",
                            slot, p.pid, p.exitcode, delay[slot])
            if now >= due[slot]:
                del due[slot]
                spawn(slot)
    for p in procs.values():  # again: a worker spawned as the signal came missed it
        if p.is_alive():
            p.terminate()
    for p in procs.values():
        p.join(timeout=10)
        if p.is_alive():  # never leave a worker behind the supervisor
            log.warning("worker pid %s did not stop in 10 s; killing it", p.pid)
            p.kill()
            p.join()
    sys.exit(0)
