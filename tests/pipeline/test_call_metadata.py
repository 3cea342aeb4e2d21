"""The call's metadata and request id, on a real grpc.aio server behind the dispatcher.

grpc.aio decodes a call's metadata to look the call up; the stages reuse that tuple
(``received_metadata``) instead of decoding it again, in the call's own task only. A
failed call carries its request id back in its trailers, a successful one does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from probe.v1 import probe_pb2

from nexus_grpc.errors import StatusError
from nexus_grpc.pipeline import ErrorStage, ObserveStage, chain
from nexus_grpc.pipeline.context import (
    CallContext,
    current_call_var,
    invocation_metadata,
    received_metadata,
)
from nexus_grpc.routing import Arity, InFlight, MethodInfo, Route, Router
from nexus_grpc.transport.grpc_server import Dispatcher

SLEEP = probe_pb2.DESCRIPTOR.services_by_name["ProbeService"].methods_by_name["Sleep"]
PATH = "/probe.v1.ProbeService/Sleep"

Handler = Callable[[Any, Any], Awaitable[Any]]
Metadata = tuple[tuple[str, str], ...]
Sleep = Callable[[Metadata], Awaitable[tuple[grpc.StatusCode, dict[str, Any]]]]


@contextlib.asynccontextmanager
async def _serving(handler: Handler, read_timeout: float = 0.0) -> AsyncIterator[Sleep]:
    """``handler`` as ProbeService/Sleep behind the observe and error stages, looked up
    by the host's dispatcher (``read_timeout`` > 0: served with the read watch); yields
    a function making one call and returning its code and trailing metadata."""
    info = MethodInfo(PATH, "probe", SLEEP, Arity.of(SLEEP), InFlight())
    call = chain([ObserveStage(access_log=False), ErrorStage()], info, handler)

    async def parsed(request: bytes, context: Any) -> Any:
        return await call(probe_pb2.SleepRequest.FromString(request), context)

    grpc_handler = grpc.unary_unary_rpc_method_handler(
        parsed, response_serializer=probe_pb2.SleepResponse.SerializeToString
    )
    router = Router()
    router.add([Route(info, call, grpc_handler)])
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Dispatcher(router, request_read_timeout=read_timeout),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = channel.unary_unary(
                PATH,
                request_serializer=probe_pb2.SleepRequest.SerializeToString,
                response_deserializer=probe_pb2.SleepResponse.FromString,
            )

            async def sleep(metadata: Metadata = ()) -> tuple[grpc.StatusCode, dict[str, Any]]:
                made = stub(probe_pb2.SleepRequest(millis=1), metadata=metadata)
                code = await made.code()
                return code, dict(await made.trailing_metadata() or ())

            yield sleep
    finally:
        await server.stop(None)


async def _call(
    handler: Handler, read_timeout: float = 0.0, metadata: Metadata = ()
) -> tuple[grpc.StatusCode, dict[str, Any]]:
    async with _serving(handler, read_timeout) as sleep:
        return await sleep(metadata)


@pytest.mark.parametrize("read_timeout", [0.0, 5.0], ids=["unary", "read-watched"])
async def test_the_stages_reuse_the_metadata_decoded_for_the_lookup(read_timeout: float) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: Any, context: Any) -> Any:
        first = received_metadata(context)
        seen["reused"] = received_metadata(context) is first  # a decode builds a new tuple
        seen["same"] = tuple(first) == tuple(context.invocation_metadata())
        seen["keys"] = {key for key, _ in first}
        current = current_call_var.get()  # what the stages below read (the auth stage)
        seen["observe_took_it"] = current is not None and current.metadata is first

        # A task the handler starts inherits the variables, not the call's task: it asks.
        async def in_another_task() -> Any:
            return received_metadata(context)

        other = await asyncio.ensure_future(in_another_task())
        seen["other_task_asks"] = other is not first and tuple(other) == tuple(first)
        # The host's own contexts run in tasks of their own and hold their metadata.
        own = CallContext(
            transport="inproc", metadata=(("k", "v"),), peer="inproc:t", deadline=None
        )
        seen["own_context"] = received_metadata(own)
        return probe_pb2.SleepResponse(slept_millis=1)

    code, _ = await _call(handler, read_timeout, metadata=(("tenant", "acme"),))
    assert code == grpc.StatusCode.OK
    assert seen["reused"] and seen["same"] and seen["other_task_asks"]
    assert seen["observe_took_it"]
    assert "tenant" in seen["keys"]
    assert seen["own_context"] == (("k", "v"),)


async def test_a_successful_call_carries_no_request_id() -> None:
    async def handler(request: Any, context: Any) -> Any:
        return probe_pb2.SleepResponse(slept_millis=1)

    code, trailing = await _call(handler, metadata=(("x-request-id", "ok-1"),))
    assert code == grpc.StatusCode.OK
    assert "x-request-id" not in trailing


@pytest.mark.parametrize("failure", ["raised", "set_code"])
async def test_a_failed_call_carries_its_request_id(failure: str) -> None:
    async def handler(request: Any, context: Any) -> Any:
        context.set_trailing_metadata((("x-kept", "yes"),))
        if failure == "raised":
            raise StatusError(grpc.StatusCode.NOT_FOUND, "no such thing")
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such thing")
        return probe_pb2.SleepResponse()

    code, trailing = await _call(handler, metadata=(("x-request-id", "failed-1"),))
    assert code == grpc.StatusCode.NOT_FOUND
    assert trailing["x-request-id"] == "failed-1"
    assert trailing["x-kept"] == "yes"


async def test_a_failed_call_without_an_id_gets_a_generated_one() -> None:
    async def handler(request: Any, context: Any) -> Any:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        return probe_pb2.SleepResponse()

    code, trailing = await _call(handler)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    request_id = trailing["x-request-id"]
    assert isinstance(request_id, str) and len(request_id) == 32
    int(request_id, 16)


@pytest.mark.parametrize("read_timeout", [0.0, 5.0], ids=["unary", "read-watched"])
async def test_concurrent_calls_each_read_their_own_token(read_timeout: float) -> None:
    mixed: list[tuple[str, str]] = []

    async def handler(request: Any, context: Any) -> Any:
        mine = dict(context.invocation_metadata())["authorization"]
        for _ in range(5):
            await asyncio.sleep(0)  # other calls are looked up and served meanwhile
            seen = dict(invocation_metadata(context))["authorization"]  # the auth stage's read
            if seen != mine:
                mixed.append((mine, seen))
        return probe_pb2.SleepResponse(slept_millis=1)

    async with _serving(handler, read_timeout) as sleep:
        answers = await asyncio.gather(
            *(sleep((("authorization", f"Bearer t{n}"),)) for n in range(100))
        )
    assert [code for code, _ in answers] == [grpc.StatusCode.OK] * 100
    assert mixed == []


async def test_a_finished_call_leaves_nothing_for_the_cyclic_collector() -> None:
    # The noted metadata sits in the call task's own context: it must not reference the
    # task back, or every call's task and token would wait for a collection.
    tasks: list[weakref.ReferenceType[asyncio.Task[Any]]] = []

    async def handler(request: Any, context: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(weakref.ref(task))
        return probe_pb2.SleepResponse(slept_millis=1)

    gc.collect()
    gc.disable()
    try:
        async with _serving(handler) as sleep:
            for _ in range(5):
                assert (await sleep(()))[0] == grpc.StatusCode.OK
            await asyncio.sleep(0.05)
            alive = [ref for ref in tasks if ref() is not None]
    finally:
        gc.enable()
    assert len(tasks) == 5
    assert alive == []
