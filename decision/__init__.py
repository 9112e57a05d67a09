"""decision: a real-time next-best-offer server.

The package is layered so each part can be used on its own:

- ``decision.core.engine``   the plain-Python core (``Engine.decide`` and friends); no gRPC.
- ``decision.config.catalog``  loads the offer catalog (TOML) into immutable arrays.
- ``decision.config.rules``    compiles eligibility expressions into kernel programs.
- ``decision.store.database``    profiles in a memory-mapped LMDB environment.
- ``decision.edge.server``   the thin gRPC layer over the engine.
- ``decision.cli``      the ``decision`` command.
- ``kernels``           (top-level package) the Numba-compiled hot path.
"""

import os as _os

__version__ = "0.1.0"

# Transport: gRPC's EventEngine client and listener experiments add ~0.2 ms to every
# loopback round trip in grpcio 1.85 (an empty handler: p50 595 -> 391 us on the 2-core
# reference machine, see benchmarks/README.md). They are read when gRPC initialises, so
# the default is set here, before any decision module imports grpc; a GRPC_EXPERIMENTS
# value set by the operator wins.
_os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")
