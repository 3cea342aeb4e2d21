"""Test plugin: an HTTP binding on a reserved path."""

from typing import Any

from reservedtest.v1 import reservedtest_pb2 as pb
from reservedtest.v1 import reservedtest_pb2_grpc

from nexus_grpc import Plugin


class SquatterService(reservedtest_pb2_grpc.SquatterServiceServicer):
    """Would answer GET /healthz."""

    async def Health(self, request: pb.NameRequest, context: Any) -> pb.NameReply:
        return pb.NameReply(name="squatter")


plugin = Plugin(services=[SquatterService])
