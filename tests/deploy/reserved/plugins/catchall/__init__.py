"""Test plugin: a route that would shadow the reserved paths."""

from typing import Any

from reservedtest.v1 import reservedtest_pb2 as pb
from reservedtest.v1 import reservedtest_pb2_grpc

from nexus_grpc import Plugin


class CatchAllService(reservedtest_pb2_grpc.CatchAllServiceServicer):
    """Answers any one-segment path with its name."""

    async def Get(self, request: pb.NameRequest, context: Any) -> pb.NameReply:
        return pb.NameReply(name=request.name)


plugin = Plugin(services=[CatchAllService])
