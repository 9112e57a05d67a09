"""Numba-compiled hot path: plain functions over arrays, no I/O, no Python objects.

- ``kernels.eligibility``  channel/placement/validity checks and the rule VM
- ``kernels.scoring``      logistic propensity, P x V x L arbitration, feature reasons
- ``kernels.selection``    deterministic top-k
- ``kernels.decide``       the fused per-request kernel the engine calls

Every kernel is compiled with ``cache=True`` (compiled once per machine, loaded from
``__pycache__`` afterwards) and has a NumPy reference its tests compare against.
``decision.engine.Engine.warm`` runs one real decision before a server reports
SERVING, so nothing compiles on the request path.
"""

