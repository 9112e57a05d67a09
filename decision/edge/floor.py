"""The floor: the same service with empty handlers, to measure what gRPC itself costs.

Benchmarks (and the load-test harness) run the same calls against this server, built
with the very same transport settings (``decision.edge.server.grpc_server``), and quote the
real server's latency as a ratio to it. Requests are parsed and replies framed exactly
as for the real service; the handler does no work.
"""

from __future__ import annotations

from decision.edge.server import grpc_server
from decision.settings import Settings
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

_EMPTY_DECISION = pb.DecideResponse()
_EMPTY_TRACK = pb.TrackResponse()
_EMPTY_PROFILE = pb.Profile()
_EMPTY_OFFERS = pb.ListOffersResponse()


class EmptyDecisionServicer(pb_grpc.DecisionServiceServicer):
    def Decide(self, request, context):
        return _EMPTY_DECISION

    def DecideBatch(self, request, context):
        return pb.DecideBatchResponse(responses=[_EMPTY_DECISION] * len(request.requests))

    def Track(self, request, context):
        return _EMPTY_TRACK

    def GetProfile(self, request, context):
        return _EMPTY_PROFILE

    def UpsertProfile(self, request, context):
        return _EMPTY_PROFILE

    def ListOffers(self, request, context):
        return _EMPTY_OFFERS

    def TrackStream(self, request_iterator, context):
        received = sum(len(batch.events) for batch in request_iterator)  # parse them all
        return pb.TrackSummary(received=received)


def create_floor_server(settings: Settings):
    """(server, port) for the empty-handler service, started."""
    server = grpc_server(settings, reuse_port=False)
    pb_grpc.add_DecisionServiceServicer_to_server(EmptyDecisionServicer(), server)
    port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address} (address in use?)")
    server.start()
    return server, port


def serve_floor(settings: Settings) -> None:
    """Serve the empty-handler service until SIGTERM/SIGINT."""
    import signal
    import threading

    server, port = create_floor_server(settings)
    print(f"decision floor: empty handlers on {settings.address.rpartition(':')[0]}:{port}",
          flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    server.stop(None).wait()
