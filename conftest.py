"""Session set-up shared by tests/ and benchmarks/.

Compile every kernel signature a server compiles into numba's on-disk cache once, in
this process, before any test starts a server subprocess: processes that add to the
cache at the same moment can corrupt it (two writers pick the same overload file), so
the subprocesses must only ever read it. The cache is the directory kernels/__init__.py
picks (``~/.cache/decision/kernels/numba-<hash of the kernel sources>`` unless
``DECISION_KERNEL_CACHE`` or ``NUMBA_CACHE_DIR`` say otherwise); subprocesses inherit
the environment, so they read the same one.

``create_server`` rather than ``Engine.warm`` alone: a server also compiles the reply
encoder (``kernels.encoding``, per catalog in ``decision.edge.wire``), and whatever else
it compiles at start-up comes along here without this file knowing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def pytest_sessionstart(session):
    from decision.edge.server import create_server
    from decision.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="decision-warm-"))
    try:
        running = create_server(Settings(
            data_dir=tmp / "store", address="127.0.0.1:0",
            catalog_path=Path(__file__).parent / "tests/data/catalog.toml"))
        try:
            running.engine.warm(batch=True)  # and the campaign kernel
        finally:
            running.stop(grace=None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
