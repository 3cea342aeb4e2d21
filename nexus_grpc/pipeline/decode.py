"""Request decoding inside the pipeline, after authentication and rate limiting.

Transports hand the pipeline what they received, undecoded: native gRPC gives raw
protobuf ``bytes`` (grpcio gets no request deserializer), the REST and gRPC-Web
gateways give a :class:`PendingRequest` that reads and decodes the HTTP body when
asked, and in-process calls give message objects. Decoding here rather than in the
transport means an unauthenticated or rate-limited caller costs no parsing (the
stages above never look inside a request), and a request that cannot be decoded is
a status like any other: INVALID_ARGUMENT, counted in metrics, access-logged, rate
limited — not a traceback per call in grpcio's own handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from nexus_grpc.errors import StatusError
from nexus_grpc.routing import Arity, CallHandler, MethodInfo

__all__ = ["DecodeStage", "PendingRequest", "undecodable"]

#: ``ErrorInfo.reason`` of a request whose bytes are not a message of the method's type.
REASON = "MALFORMED_MESSAGE"


class PendingRequest:
    """A request a transport has received but not read or decoded yet.

    Subclasses read the body and build the message in :meth:`resolve`; the decode
    stage calls it once the caller has been authenticated and rate-limited. Errors
    are raised as :class:`~nexus_grpc.errors.StatusError`.
    """

    __slots__ = ()

    async def resolve(self) -> Any:
        """Read the request: its message, or its protobuf bytes for the stage to parse."""
        raise NotImplementedError


def undecodable(type_name: str) -> StatusError:
    """INVALID_ARGUMENT for bytes that are not a ``type_name`` message.

    The message is plain on purpose: protobuf's exception text says nothing useful to
    a client and may echo parts of the bytes.
    """
    return StatusError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request is not a valid {type_name} message",
        reason=REASON,
        metadata={"type": type_name},
    )


def _parser(method: MethodInfo) -> Callable[[bytes], Any]:
    """``bytes -> message`` for ``method``'s request type, bad bytes -> INVALID_ARGUMENT."""
    from_string = method.parse_request
    type_name = str(method.descriptor.input_type.full_name)

    def parse(data: bytes) -> Any:
        try:
            return from_string(data)
        except Exception:
            # DecodeError on upb; the pure-Python runtime can also raise struct,
            # Unicode or index errors on truncated or hostile input.
            raise undecodable(type_name) from None

    return parse


class DecodeStage:
    """Turns the transport's undecoded request into the method's request message."""

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Decode ``method``'s requests (each streamed one lazily) before ``next``."""
        parse = _parser(method)
        if method.arity in (Arity.STREAM_UNARY, Arity.STREAM_STREAM):

            async def decode_stream(requests: Any, context: Any) -> Any:
                return await next(_decoded(requests, parse), context)

            return decode_stream

        async def decode(request: Any, context: Any) -> Any:
            # In-process calls pass messages: two type checks and through.
            if isinstance(request, PendingRequest):
                # May give bytes (gRPC-Web's frame) or a message (REST's JSON).
                request = await request.resolve()
            if type(request) is bytes:
                request = parse(request)
            return await next(request, context)

        return decode


async def _decoded(requests: Any, parse: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    # Each message is decoded when the handler asks for it, so a bad one ends the call
    # where it is, with the messages before it already handled.
    async for request in requests:
        yield parse(request) if type(request) is bytes else request
