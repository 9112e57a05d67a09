"""A prototype floor on grpc.aio (asyncio server), to compare with the sync floor
(``decision floor``: a thread pool). Same service, same framing, empty handlers.

    .venv/bin/python -m benchmarks.aio_floor --address 127.0.0.1:50052

Used by ``benchmarks/transport.py``; not part of the product.
"""

from __future__ import annotations

import argparse
import asyncio

import decision  # noqa: F401  (GRPC_EXPERIMENTS default, before grpc initialises)
import grpc

from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc

_EMPTY = {"Decide": pb.DecideResponse(), "Track": pb.TrackResponse(),
          "GetProfile": pb.Profile(), "ListOffers": pb.ListOffersResponse()}


class AioEmptyServicer(pb_grpc.DecisionServiceServicer):
    async def Decide(self, request, context):
        return _EMPTY["Decide"]

    async def Track(self, request, context):
        return _EMPTY["Track"]

    async def GetProfile(self, request, context):
        return _EMPTY["GetProfile"]

    async def ListOffers(self, request, context):
        return _EMPTY["ListOffers"]


async def serve(address: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_DecisionServiceServicer_to_server(AioEmptyServicer(), server)
    port = server.add_insecure_port(address)
    await server.start()
    print(f"aio floor on {address.rpartition(':')[0]}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", default="127.0.0.1:50052")
    asyncio.run(serve(p.parse_args().address))


if __name__ == "__main__":
    main()
