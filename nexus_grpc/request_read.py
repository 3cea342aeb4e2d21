"""A bound on how long a native gRPC call may take to send its request message.

grpc.aio enters a unary-request handler only once the request message has arrived, so
a client that opens a call without a deadline and never sends the message (or sends
half of it) holds the call, its task and its stream forever; no pipeline stage runs
yet. :func:`read_bounded` serves such a method with grpcio's stream-request arity
instead and reads the one message itself, under ``timeout`` seconds when the client
set no deadline (grpc core already ends the call at the client's deadline). The
pipeline still receives a single request message, as for any unary-request call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

__all__ = ["read_bounded"]

# What ServicerContext.read() returns at the end of the stream (missing from grpc-stubs).
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


def read_bounded(
    handler: grpc.RpcMethodHandler[Any, Any], timeout: float
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` itself for stream-request methods, else one that reads under ``timeout``."""
    if handler.request_streaming:
        return handler
    # The pipeline's handlers are coroutine functions; grpc-stubs types them as sync.
    call: Callable[[Any, Any], Awaitable[Any]]
    if handler.response_streaming:
        call = handler.unary_stream  # type: ignore[assignment]
        factory: Any = grpc.stream_stream_rpc_method_handler
    else:
        call = handler.unary_unary  # type: ignore[assignment]
        factory = grpc.stream_unary_rpc_method_handler
    message = f"the request message did not arrive within {timeout:g}s"

    async def read_then_call(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if context.time_remaining() is not None:
            request = await context.read()
        else:
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    request = await context.read()
            except TimeoutError:
                if not scope.expired():
                    raise
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
        if request is _EOF:
            # What grpc core answers a unary call that half-closes without a message.
            await context.abort(grpc.StatusCode.INTERNAL, "the call sent no request message")
        return await call(request, context)

    return factory(  # type: ignore[no-any-return]
        read_then_call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
