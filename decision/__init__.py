"""decision: a real-time next-best-offer server.

The package is layered so each part can be used on its own:

- ``decision.engine``   the plain-Python core (``Engine.decide`` and friends); no gRPC.
- ``decision.catalog``  loads the offer catalog (TOML) into immutable arrays.
- ``decision.rules``    compiles eligibility expressions into kernel programs.
- ``decision.store``    profiles in a memory-mapped LMDB environment.
- ``decision.server``   the thin gRPC layer over the engine.
- ``decision.cli``      the ``decision`` command.
- ``kernels``           (top-level package) the Numba-compiled hot path.
"""

__version__ = "0.1.0"
