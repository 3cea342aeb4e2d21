"""Test plugin for the gateway (stubs compiled by the test fixtures)."""

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2

from nexus_grpc import Plugin, StatusError
from transcode.v1 import transcode_pb2 as pb
from transcode.v1 import transcode_pb2_grpc


class TranscodeService(transcode_pb2_grpc.TranscodeServiceServicer):
    """Echoes what arrives so tests can check the HTTP mapping."""

    async def Echo(self, request: pb.EchoRequest, context: Any) -> pb.EchoRequest:
        return request

    async def ListItems(self, request: pb.ListItemsRequest, context: Any) -> pb.ListItemsResponse:
        return pb.ListItemsResponse(
            items=[pb.Item(number=i) for i in range(request.count)], next_page_token="hidden"
        )

    async def Upload(self, request: httpbody_pb2.HttpBody, context: Any) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type=request.content_type, data=request.data[::-1])

    async def Count(
        self, request: pb.CountRequest, context: Any
    ) -> AsyncIterator[pb.CountResponse]:
        for value in range(1, request.n + 1):
            if request.fail_after and value > request.fail_after:
                raise StatusError(
                    grpc.StatusCode.OUT_OF_RANGE, f"stopped after {request.fail_after}"
                )
            yield pb.CountResponse(value=value)
            if request.pause_millis:
                await asyncio.sleep(request.pause_millis / 1000)

    async def Sum(
        self, request_iterator: AsyncIterator[pb.SumRequest], context: Any
    ) -> pb.SumResponse:
        total = count = 0
        async for request in request_iterator:
            total += request.value
            count += 1
        return pb.SumResponse(total=total, count=count)

    async def Chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: Any
    ) -> AsyncIterator[pb.ChatResponse]:
        async for request in request_iterator:
            yield pb.ChatResponse(text=request.text.upper())

    async def Inspect(self, request: pb.InspectRequest, context: Any) -> pb.InspectResponse:
        if request.crash:
            raise RuntimeError("secret internal detail")
        await context.send_initial_metadata((("x-initial", "yes"),))
        context.set_trailing_metadata((("x-trailer", "done"),))
        if request.fail_code and request.fail_message.startswith("abort:"):
            await context.abort(_code(request.fail_code), request.fail_message)
        if request.fail_code:
            raise StatusError(_code(request.fail_code), request.fail_message)
        metadata = {
            key: base64.b64encode(value).decode() if isinstance(value, bytes) else value
            for key, value in context.invocation_metadata()
        }
        remaining = context.time_remaining()
        return pb.InspectResponse(
            metadata=metadata,
            time_remaining=-1 if remaining is None else remaining,
            transport=getattr(context, "transport", "grpc"),
        )

    async def Plain(self, request: pb.PlainRequest, context: Any) -> pb.PlainResponse:
        return pb.PlainResponse(value=request.value)


def _code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


plugin = Plugin(services=[TranscodeService])
