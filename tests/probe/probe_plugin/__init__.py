"""Test plugin exercising the host (its stubs are compiled by the test fixtures)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from probe.v1 import probe_pb2, probe_pb2_grpc

from nexus_grpc import Plugin

#: Message counts of the Collect streams that ended as complete (tests read it).
COMPLETED_STREAMS: list[int] = []


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

    async def Collect(
        self, request_iterator: AsyncIterator[probe_pb2.EchoRequest], context: Any
    ) -> probe_pb2.CollectResponse:
        count = 0
        async for _ in request_iterator:
            count += 1
        COMPLETED_STREAMS.append(count)
        return probe_pb2.CollectResponse(count=count)


class UnguardedService(probe_pb2_grpc.UnguardedServiceServicer):
    """Has no policy in its contract: no call may ever reach it."""

    async def Call(self, request: probe_pb2.CallRequest, context: Any) -> probe_pb2.CallResponse:
        raise AssertionError("the host let a call through to a method without policy")


plugin = Plugin(services=[ProbeService, UnguardedService])
