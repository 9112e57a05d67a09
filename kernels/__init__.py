"""Numba-compiled hot path: plain functions over arrays, no I/O, no Python objects.

- ``kernels.eligibility``  channel/placement/validity checks and the rule VM
- ``kernels.scoring``      logistic propensity, P x V x L arbitration, feature reasons
- ``kernels.selection``    deterministic top-k
- ``kernels.decide``       the fused per-request kernel the engine calls

Every kernel is compiled with ``cache=True`` (compiled once per machine, loaded from
``__pycache__`` afterwards) and has a NumPy reference its tests compare against.
Call ``warm()`` before serving so nothing compiles on the request path.
"""

from __future__ import annotations

import numpy as np


def warm() -> None:
    """Compile (or load from the on-disk cache) every kernel signature the server uses.

    The engine warms itself through a real cold-start and a real stored-profile
    decision; this only covers the standalone kernels used by tools and tests.
    """
    from kernels.eligibility import eligible_mask
    from kernels.scoring import arbitrate, propensity, top_contributions
    from kernels.selection import top_k

    code = np.zeros((0, 3), dtype=np.int32)
    programs = np.zeros((1, 2), dtype=np.int32)
    masks = np.ones((1, 2), dtype=np.int64)
    window = np.array([[-np.inf, np.inf]])
    mask = eligible_mask(code, programs, np.zeros(0), np.zeros(0), masks, window,
                         np.int64(1), np.int64(0), 0.0)
    weights = np.zeros((1, 4), dtype=np.float32)
    x = np.zeros(4, dtype=np.float32)
    p = propensity(weights, np.zeros(1), x, mask)
    s = arbitrate(p, np.ones(1), np.ones(1), mask)
    chosen = top_k(s, 1)
    top_contributions(weights, x, chosen, 3)
