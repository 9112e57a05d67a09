"""Numba-compiled hot path: plain functions over arrays, no I/O, no Python objects.

- ``kernels.eligibility``  channel/placement/validity checks and the rule VM
- ``kernels.policies``     contact policies over a customer's contact history
- ``kernels.scoring``      logistic propensity, P x V x L arbitration, feature reasons
- ``kernels.selection``    deterministic top-k
- ``kernels.decide``       the fused per-request kernel the engine calls, and the
                           batch kernels of campaigns (``prange`` over customers)

Every kernel is compiled with ``cache=True`` (compiled once per machine, loaded from
disk afterwards) and has a NumPy reference its tests compare against.
``decision.core.engine.Engine.warm`` runs one real decision before a server reports
SERVING, so nothing compiles on the request path.

Numba keys a cached function by its own source file only: a kernel whose callee in
another module changed would load stale machine code. So the cache lives in a
directory named by a hash of every module here (unless ``NUMBA_CACHE_DIR`` says
otherwise): any change to any kernel starts a fresh cache.
"""

import hashlib
import os
from pathlib import Path

import numba


def _cache_dir() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for source in sorted(here.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return str(here / "__pycache__" / f"numba-{digest.hexdigest()[:16]}")


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = _cache_dir()
