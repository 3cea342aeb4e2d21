"""The decode stage: bytes parsed, pending requests resolved, messages let through as they are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import StatusError
from nexus_grpc.pipeline import DecodeStage, PendingRequest, build_stages
from nexus_grpc.pipeline.observe import ObserveStage
from nexus_grpc.routing import Arity, InFlight, MethodInfo

SERVICE = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"]


def info(name: str) -> MethodInfo:
    descriptor = SERVICE.methods_by_name[name]
    return MethodInfo(
        f"/nexus.orders.v1.OrdersService/{name}",
        "orders",
        descriptor,
        Arity.of(descriptor),
        InFlight(),
    )


class Seen:
    """A handler that keeps what it was given."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def __call__(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return "done"


class Pending(PendingRequest):
    """A transport's request that resolves to ``value``."""

    __slots__ = ("resolved", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.resolved = 0

    async def resolve(self) -> Any:
        self.resolved += 1
        return self.value


async def test_in_process_message_passes_untouched() -> None:
    seen = Seen()
    decode = DecodeStage().bind(info("GetOrder"), seen)
    request = orders_pb2.GetOrderRequest(id="o1")
    assert await decode(request, None) == "done"
    assert seen.requests[0] is request


async def test_bytes_are_parsed_into_the_request_type() -> None:
    seen = Seen()
    decode = DecodeStage().bind(info("GetOrder"), seen)
    await decode(orders_pb2.GetOrderRequest(id="o1").SerializeToString(), None)
    assert seen.requests == [orders_pb2.GetOrderRequest(id="o1")]


async def test_pending_request_is_resolved_once_and_its_bytes_parsed() -> None:
    seen = Seen()
    decode = DecodeStage().bind(info("GetOrder"), seen)
    pending = Pending(orders_pb2.GetOrderRequest(id="o2").SerializeToString())
    await decode(pending, None)
    assert pending.resolved == 1
    assert seen.requests == [orders_pb2.GetOrderRequest(id="o2")]


async def test_bad_bytes_are_invalid_argument_with_a_plain_message() -> None:
    seen = Seen()
    decode = DecodeStage().bind(info("GetOrder"), seen)
    with pytest.raises(StatusError) as caught:
        await decode(b"\x0a\xff\xff\x01\xfe", None)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "request is not a valid nexus.orders.v1.GetOrderRequest message"
    assert caught.value.reason == "MALFORMED_MESSAGE"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert seen.requests == []


async def test_streamed_requests_are_decoded_lazily() -> None:
    # WatchOrders is server streaming; a client-streaming method of the same shape is
    # what the stage wraps, so use a method info with that arity.
    method = info("GetOrder")
    streaming = MethodInfo(
        method.path, method.plugin, method.descriptor, Arity.STREAM_UNARY, InFlight()
    )
    decoded: list[Any] = []
    pulled: list[int] = []

    async def handler(requests: AsyncIterator[Any], context: Any) -> Any:
        async for request in requests:
            decoded.append(request)
        return None

    async def requests() -> AsyncIterator[Any]:
        pulled.append(1)
        yield orders_pb2.GetOrderRequest(id="a").SerializeToString()
        pulled.append(2)
        yield orders_pb2.GetOrderRequest(id="b")  # in-process: a message already
        pulled.append(3)
        yield b"\x0a\xff"

    call = DecodeStage().bind(streaming, handler)
    with pytest.raises(StatusError) as caught:
        await call(requests(), None)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert decoded == [orders_pb2.GetOrderRequest(id="a"), orders_pb2.GetOrderRequest(id="b")]
    assert pulled == [1, 2, 3]


def test_build_stages_always_decodes_after_the_rate_limit() -> None:
    class Marker:
        def __init__(self, name: str) -> None:
            self.name = name

        def bind(self, method: MethodInfo, next: Any) -> Any:
            return next

    stages = build_stages(
        observe=ObserveStage(access_log=False),
        auth=Marker("auth"),
        rate_limit=Marker("rate"),
        access=Marker("access"),
    )
    names = [getattr(s, "name", type(s).__name__) for s in stages]
    assert names.index("rate") + 1 == names.index("DecodeStage")
    assert names.index("DecodeStage") + 1 == names.index("access")
    # Even a pipeline built with nothing else decodes: grpcio hands over bytes.
    assert any(isinstance(s, DecodeStage) for s in build_stages(observe=ObserveStage()))


async def test_decoding_awaits_nothing_for_messages_and_bytes() -> None:
    # The hot path of gRPC and in-process calls must not suspend (no scheduling cost).
    decode = DecodeStage().bind(info("GetOrder"), Seen())
    for request in (orders_pb2.GetOrderRequest(id="x"), b""):
        coroutine = decode(request, None)
        with pytest.raises(StopIteration):
            coroutine.send(None)
    await asyncio.sleep(0)


async def test_service_served_under_another_descriptor_decodes_with_its_own_code(
    tmp_path: Any,
) -> None:
    # Reflection v1 is served by v1alpha's generated code under v1's descriptor: the
    # decode stage must build the message the servicer's code expects (v1alpha's), not
    # the class v1's descriptor pool would make.
    from grpc_reflection.v1alpha import reflection_pb2

    from nexus_grpc.testing import running_host

    async with running_host(plugins=["orders"], data_dir=tmp_path) as host:
        for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            call = host.channel().stream_stream(
                f"/{package}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [reply async for reply in call(iter([request]))]
            names = {s.name for s in replies[0].list_services_response.service}
            assert "nexus.orders.v1.OrdersService" in names, (package, replies)
