"""Several server processes on one port, over one store, kept alive.

``serve_workers`` checks the configuration and compiles the kernels once, then runs
``settings.workers`` processes sharing the port (SO_REUSEPORT) and the LMDB
environment, and restarts any that dies (at once if it lived ``HEALTHY_AFTER_S``,
else after a growing delay). The port file (``settings.port_file``) is the
supervisor's: written once the first worker serves, removed when stopping.
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
from pathlib import Path

import kernels
from decision.core.engine import Engine
from decision.edge.server import remove_port_file, serve, write_port_file
from decision.errors import DecisionError
from decision.logs import configure as configure_logs
from decision.settings import Settings

log = logging.getLogger("decision.edge.supervisor")


def _worker(settings: Settings, slot: int, ready) -> None:
    """Worker ``slot``: serve, and send ``slot`` on ``ready`` (a Connection) once
    serving."""
    configure_logs(settings.log_format, capture_stderr=True)
    if settings.metrics_address is not None:  # worker i: metrics port + i
        host, _, port = settings.metrics_address.rpartition(":")
        settings = dataclasses.replace(settings, metrics_address=f"{host}:{int(port) + slot}")

    def serving(running) -> None:
        try:
            ready.send(slot)
        except OSError:  # the supervisor is gone; serve on until told to stop
            pass

    serve(dataclasses.replace(settings, port_file=None), reuse_port=True, ready=serving)


def kernels_cached() -> bool:
    """Whether the kernel cache (``kernels.cache_dir``) holds the decision and reply
    kernels already (a server started before on this machine, with these sources)."""
    cache = Path(kernels.cache_dir)
    return all(any(cache.glob(f"{module}.*.nbi")) for module in ("decide", "encoding"))


def compile_kernels(settings: Settings) -> None:
    """Compile, in this process, every kernel a server compiles (the engine's warm-up,
    the campaign kernel, and the reply encoder ``DecisionServicer`` builds per catalog)
    into the on-disk cache. Raises ``DecisionError`` for a configuration that does not
    load."""
    from decision.edge.servicer import DecisionServicer

    engine = Engine(settings, publish=False)
    try:
        engine.warm(batch=True)
        DecisionServicer(engine)
    finally:
        engine.close()


def _compile(settings: Settings) -> None:
    """In the child of ``compile_apart``."""
    try:
        compile_kernels(settings)
    except DecisionError:
        sys.exit(2)  # the parent reports it


def compile_apart(settings: Settings) -> bool:
    """Compile the kernels into the on-disk cache in a short-lived child process, so
    that the servers load them from there. A process that compiles keeps ~150 MB of
    LLVM state for life (numba holds on to what it compiled: 320 MB against 173 MB
    for a start from the cache, README "Cold start"); the child takes it away with
    it. Returns whether the child succeeded."""
    child = multiprocessing.get_context("spawn").Process(
        target=_compile, args=(settings,), name="decision-compile")
    child.start()
    child.join()
    return child.exitcode == 0


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
        if not kernels_cached():
            compile_apart(settings)
        serve(settings)
        return
    # Compile the kernels into numba's on-disk cache once, before any worker starts:
    # processes that add to that cache at the same moment can corrupt it, so the
    # workers must find it complete. A child that fails (a bad catalog, a store of
    # another layout) leaves the check to this process, which raises with the message.
    if not compile_apart(settings):
        Engine(settings, publish=False).close()
    ctx = multiprocessing.get_context("spawn")
    ready, ready_to_send = ctx.Pipe(duplex=False)  # workers send their slot once serving
    port = int(settings.address.rpartition(":")[2])  # fixed: Settings refuses 0 here
    port_written = False
    exit_code = 0
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    delay: dict[int, float] = {}
    due: dict[int, float] = {}
    stopping = threading.Event()

    def spawn(slot: int) -> None:
        p = ctx.Process(target=_worker, args=(settings, slot, ready_to_send),
                        name=f"decision-worker-{slot}")
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
        multiprocessing.connection.wait([ready, *(p.sentinel for p in procs.values())],
                                        timeout=0.5)
        while ready.poll():
            ready.recv()
            if settings.port_file is not None and not port_written:
                try:
                    write_port_file(settings.port_file, port)
                    port_written = True
                except OSError as exc:
                    log.error("--port-file %s: cannot write it: %s; stopping",
                              settings.port_file, exc.strerror or exc)
                    exit_code = 2
                    on_signal(signal.SIGTERM, None)
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
    if port_written:  # the file says "serving on this port": gone as the shutdown starts
        remove_port_file(settings.port_file, port)
    for p in procs.values():  # again: a worker spawned as the signal came missed it
        if p.is_alive():
            p.terminate()
    for p in procs.values():
        p.join(timeout=10)
        if p.is_alive():  # never leave a worker behind the supervisor
            log.warning("worker pid %s did not stop in 10 s; killing it", p.pid)
            p.kill()
            p.join()
    sys.exit(exit_code)
