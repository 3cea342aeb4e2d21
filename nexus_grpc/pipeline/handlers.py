"""Turn servicer methods of any arity into the pipeline's one handler shape.

Servicers write ``async def`` methods that return a response or, for streaming
responses, async generators. The pipeline wants a single shape so each stage is
written once: ``async (request, context) -> response | None``, with streamed responses
written through ``context.write``. grpc.aio serves that coroutine form natively.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

from nexus_grpc.errors import StatusError
from nexus_grpc.routing import Arity, CallHandler

__all__ = ["as_call_handler", "grpc_method_handler", "unimplemented_handler"]


def as_call_handler(behavior: Callable[..., Any], arity: Arity, where: str) -> CallHandler:
    """Adapt a servicer method to the pipeline shape; TypeError names ``where`` if it can't."""
    streams_responses = arity in (Arity.UNARY_STREAM, Arity.STREAM_STREAM)
    if streams_responses and inspect.isasyncgenfunction(behavior):
        generator_function = behavior

        async def pump(request: Any, context: Any) -> None:
            async for response in generator_function(request, context):
                await context.write(response)

        return pump
    if inspect.iscoroutinefunction(behavior):
        return behavior
    shape = "an `async def` generator (yield each response)" if streams_responses else "`async def`"
    raise TypeError(f"{where} must be {shape}; the host serves calls on one event loop")


def unimplemented_handler(path: str, plugin: str) -> CallHandler:
    """A handler for a contract method the plugin's servicer does not override."""
    error = StatusError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"method {path} is declared in the contract but plugin {plugin!r} does not implement it",
        reason="METHOD_NOT_IMPLEMENTED",
    )

    async def unimplemented(request: Any, context: Any) -> None:
        raise error

    return unimplemented


def grpc_method_handler(
    arity: Arity,
    call: CallHandler,
    response_serializer: Callable[[Any], bytes] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """Package a pipeline handler for grpcio with the method's response serializer.

    grpcio gets no request deserializer: requests reach the pipeline as ``bytes`` and
    its decode stage parses them after authentication and rate limiting, so that bad
    bytes are an INVALID_ARGUMENT status like any other, not an exception in grpcio.
    """
    factory = {
        Arity.UNARY_UNARY: grpc.unary_unary_rpc_method_handler,
        Arity.UNARY_STREAM: grpc.unary_stream_rpc_method_handler,
        Arity.STREAM_UNARY: grpc.stream_unary_rpc_method_handler,
        Arity.STREAM_STREAM: grpc.stream_stream_rpc_method_handler,
    }[arity]
    return factory(
        call,
        request_deserializer=None,
        response_serializer=response_serializer,
    )
