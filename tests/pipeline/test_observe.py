"""The observe stage's guard on client streams, on a real grpc.aio server.

grpc.aio ends a cancelled client's request stream as if the client had finished it and
cancels the call's task apart; the stage makes the end of the stream mean complete
input, for readers in the call's task and in tasks of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from probe.v1 import probe_pb2

from nexus_grpc.pipeline.observe import ObserveStage
from nexus_grpc.routing import Arity, InFlight, MethodInfo

SERVICE = probe_pb2.DESCRIPTOR.services_by_name["ProbeService"]
CALLS = 40

Reader = Callable[[AsyncIterator[Any], Any], Awaitable[Any]]


def _observed(
    handler: Reader, *, ended: asyncio.Event | None = None
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` as ProbeService/Collect behind the observe stage; ``ended`` is set
    when grpc.aio's request stream ends, before the stage's own last read."""
    descriptor = SERVICE.methods_by_name["Collect"]
    info = MethodInfo(
        "/probe.v1.ProbeService/Collect", "probe", descriptor, Arity.of(descriptor), InFlight()
    )
    call = ObserveStage(access_log=False).bind(info, handler)

    async def noting_end(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield request
        if ended is not None:
            ended.set()

    async def served(requests: AsyncIterator[Any], context: Any) -> Any:
        return await call(noting_end(requests), context)

    return grpc.stream_unary_rpc_method_handler(
        served,
        request_deserializer=probe_pb2.EchoRequest.FromString,
        response_serializer=probe_pb2.CollectResponse.SerializeToString,
    )


async def _serve(
    handler: Reader, *, ended: asyncio.Event | None = None
) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "probe.v1.ProbeService", {"Collect": _observed(handler, ended=ended)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def _collect(channel: grpc.aio.Channel) -> Any:
    return channel.stream_unary(
        "/probe.v1.ProbeService/Collect",
        request_serializer=probe_pb2.EchoRequest.SerializeToString,
        response_deserializer=probe_pb2.CollectResponse.FromString,
    )


async def _one_then_wait() -> AsyncIterator[probe_pb2.EchoRequest]:
    """A client stream that sends one message and never finishes."""
    yield probe_pb2.EchoRequest(text="a")
    await asyncio.sleep(10)


async def _read_all(requests: AsyncIterator[Any], outcomes: list[str], first: asyncio.Event) -> int:
    count = 0
    try:
        async for _ in requests:
            count += 1
            first.set()
    except asyncio.CancelledError:
        outcomes.append("cancelled")
        raise
    except Exception as error:
        outcomes.append(f"{type(error).__name__}: {error}")
        raise
    outcomes.append("complete")
    return count


async def test_a_reader_task_of_its_own_ends_cleanly_when_the_call_answers_first() -> None:
    # The call answers as soon as grpc.aio's stream has ended, while its reader (a task
    # of its own) is still in the stage's last read: the call's status goes out during
    # that read, which grpc.aio then fails with "RPC already finished". The input was
    # complete all the same.
    outcomes: list[str] = []
    readers: list[asyncio.Task[int]] = []
    ended = asyncio.Event()

    async def handler(requests: AsyncIterator[Any], context: Any) -> Any:
        reader = asyncio.ensure_future(_read_all(requests, outcomes, asyncio.Event()))
        readers.append(reader)
        await ended.wait()
        ended.clear()
        return probe_pb2.CollectResponse(count=1)

    server, channel = await _serve(handler, ended=ended)
    try:
        collect = _collect(channel)
        for _ in range(CALLS):
            answer = await collect(iter([probe_pb2.EchoRequest(text="a")]))
            assert answer.count == 1
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 10)
    finally:
        await channel.close()
        await server.stop(0)
    assert outcomes == ["complete"] * CALLS


@pytest.mark.parametrize("handler_answers", [False, True], ids=["awaits-reader", "answers-anyway"])
async def test_a_reader_task_of_its_own_hears_of_the_clients_cancel(handler_answers: bool) -> None:
    # A reader the call's task does not await (shielded) is not the task grpc.aio
    # cancels; it must not take a cancelled stream for complete input, also when the
    # call's task catches its cancel and answers all the same.
    outcomes: list[str] = []
    readers: list[asyncio.Task[int]] = []
    reading = asyncio.Event()

    async def handler(requests: AsyncIterator[Any], context: Any) -> Any:
        first = asyncio.Event()
        reader = asyncio.ensure_future(_read_all(requests, outcomes, first))
        readers.append(reader)
        await first.wait()
        reading.set()
        try:
            return probe_pb2.CollectResponse(count=await asyncio.shield(reader))
        except asyncio.CancelledError:
            if not handler_answers:
                raise
            return probe_pb2.CollectResponse(count=0)

    server, channel = await _serve(handler)
    try:
        collect = _collect(channel)

        for _ in range(CALLS):
            reading.clear()
            call = collect(_one_then_wait())
            await asyncio.wait_for(reading.wait(), 10)  # its reader has the first message
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 10)
    finally:
        await channel.close()
        await server.stop(0)
    assert outcomes == ["cancelled"] * CALLS


async def test_a_reader_task_of_its_own_is_cancelled_when_the_server_stops_under_it() -> None:
    # Open streams the client never finished: stopping the server cuts them off. A reader
    # apart from the call's task hears a cancellation, not grpc.aio's private
    # "server stopped" error from the stage's last read.
    outcomes: list[str] = []
    readers: list[asyncio.Task[int]] = []
    reading: list[None] = []

    async def handler(requests: AsyncIterator[Any], context: Any) -> Any:
        first = asyncio.Event()
        reader = asyncio.ensure_future(_read_all(requests, outcomes, first))
        readers.append(reader)
        await first.wait()
        reading.append(None)
        if len(reading) == CALLS // 2:
            all_reading.set()
        return probe_pb2.CollectResponse(count=await asyncio.shield(reader))

    all_reading = asyncio.Event()
    server, channel = await _serve(handler)
    calls = []
    try:
        collect = _collect(channel)

        calls = [collect(_one_then_wait()) for _ in range(CALLS // 2)]
        await asyncio.wait_for(all_reading.wait(), 10)
        await server.stop(0.1)
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 10)
    finally:
        for call in calls:
            call.cancel()
        await channel.close()
        await server.stop(0)
    assert outcomes == ["cancelled"] * (CALLS // 2)
