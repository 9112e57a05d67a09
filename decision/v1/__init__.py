"""Generated gRPC stubs for the ``decision.v1`` proto package.

Never edit the ``*_pb2*`` files by hand: run ``python -m decision.protogen``.
"""
