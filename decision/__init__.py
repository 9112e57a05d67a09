"""decision: a real-time next-best-offer server.

The folders are the architecture (each imports only the ones below it; checked by
``tests/test_layering.py``):

- ``decision.edge``    the gRPC edge: servicer, wire conversions, gate, server processes.
- ``decision.core``    the plain-Python core: ``Engine`` and its rooms (respond, inspire,
                       ingest, profiles, actions); no gRPC.
- ``decision.config``  the configuration compiler: the catalog file into kernel tables.
- ``decision.store``   the LMDB environment, its records and backups.
- ``decision.cli``     the ``decision`` command.
- ``kernels``          (top-level package) the Numba-compiled hot path.
"""

import os as _os

__version__ = "0.1.0"

# Transport: gRPC's EventEngine client and listener experiments add ~0.2 ms to every
# loopback round trip in grpcio 1.85 (an empty handler: p50 595 -> 391 us on the 2-core
# reference machine, see benchmarks/README.md). They are read when gRPC initialises, so
# the default is set here, before any decision module imports grpc; a GRPC_EXPERIMENTS
# value set by the operator wins.
_os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")
