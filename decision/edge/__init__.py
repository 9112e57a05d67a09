"""The gRPC edge: the only part of the server that speaks gRPC or protobuf.

- ``servicer``    one engine call per RPC;
- ``wire``        protobuf <-> the core's values (requests in, replies out, Decide's
                  reply encoded straight to bytes);
- ``gate``        admission of every call (credentials, deadline, in-flight bound) and
                  the one map of errors to gRPC status codes;
- ``auth``        bearer tokens and roles;
- ``metrics``     Prometheus metrics;
- ``server``      one process assembled, started, served until a signal;
- ``supervisor``  several processes on one port, restarted when they die;
- ``floor``       the same service with empty handlers, the benchmarks' baseline.
"""
