"""Test plugin exercising the host (its stubs are compiled by the test fixtures)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from probe.v1 import probe_pb2, probe_pb2_grpc

from nexus_grpc import Plugin


class ProbeService(probe_pb2_grpc.ProbeServiceServicer):
    """Implements everything but Missing."""

    async def Sleep(self, request: probe_pb2.SleepRequest, context: Any) -> probe_pb2.SleepResponse:
        await asyncio.sleep(request.millis / 1000)
        return probe_pb2.SleepResponse(slept_millis=request.millis)

    async def Crash(self, request: probe_pb2.CrashRequest, context: Any) -> probe_pb2.CrashResponse:
        raise RuntimeError(f"database password is {request.secret}")

    async def Echo(
        self, request_iterator: AsyncIterator[probe_pb2.EchoRequest], context: Any
    ) -> AsyncIterator[probe_pb2.EchoResponse]:
        async for request in request_iterator:
            yield probe_pb2.EchoResponse(text=request.text)


plugin = Plugin(services=[ProbeService])
