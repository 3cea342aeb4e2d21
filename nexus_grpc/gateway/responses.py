"""Small ASGI response helpers shared by the REST and gRPC-Web paths."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from nexus_grpc.errors import StatusError
from nexus_grpc.gateway.codec import dumps
from nexus_grpc.gateway.status import error_body, http_status

__all__ = ["Headers", "Receive", "Send", "send_error", "send_response"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"


async def send_response(
    send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> None:
    """A complete response in one body message."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: StatusError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """``error`` as its HTTP status with a google.rpc.Status JSON body."""
    extra = list(headers)
    # A few HTTP-only conditions (405, 413, 415) have no gRPC code of their own; the
    # error carries the HTTP status it needs.
    status = int(error.metadata.get("http_status", http_status(error.code)))
    if "allow" in error.metadata:
        extra.append((b"allow", error.metadata["allow"].encode()))
    await send_response(send, status, [(b"content-type", JSON), *extra], dumps(error_body(error)))
