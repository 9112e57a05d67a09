"""Session set-up shared by tests/ and benchmarks/.

Compile the engine's kernel signatures into numba's on-disk cache once, in this
process, before any test starts a server subprocess: processes that add to the cache
at the same moment can corrupt it (two writers pick the same overload file), so the
subprocesses must only ever read it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def pytest_sessionstart(session):
    from decision.core.engine import Engine
    from decision.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="decision-warm-"))
    try:
        engine = Engine(Settings(data_dir=tmp / "store",
                                 catalog_path=Path(__file__).parent / "tests/data/catalog.toml"))
        engine.warm(batch=True)
        engine.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
