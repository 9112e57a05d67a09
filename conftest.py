"""Session set-up shared by tests/ and benchmarks/.

Compile every kernel signature a server compiles into numba's on-disk cache once, in
this process, before any test starts a server subprocess: processes that add to the
cache at the same moment can corrupt it (two writers pick the same overload file), so
the subprocesses must only ever read it. The cache is the directory kernels/__init__.py
picks (``~/.cache/decision/kernels/numba-<hash of the kernel sources>`` unless
``DECISION_KERNEL_CACHE`` or ``NUMBA_CACHE_DIR`` say otherwise); subprocesses inherit
the environment, so they read the same one.

``compile_kernels`` is what ``decision serve`` runs before a cold start (in a child
process there): the engine's warm-up and the reply encoder (``kernels.encoding``, per
catalog in ``decision.edge.wire``) alike.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def pytest_sessionstart(session):
    from decision.edge.supervisor import compile_kernels
    from decision.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="decision-warm-"))
    try:
        compile_kernels(Settings(data_dir=tmp / "store",
                                 catalog_path=Path(__file__).parent / "tests/data/catalog.toml"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
