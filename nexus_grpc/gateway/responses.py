"""Small ASGI response helpers shared by the REST and gRPC-Web paths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from nexus_grpc.errors import ShuttingDownError, StatusError, to_status_proto
from nexus_grpc.gateway.codec import dumps
from nexus_grpc.gateway.status import error_body, http_status

__all__ = [
    "BodyTooLargeError",
    "Headers",
    "Receive",
    "Send",
    "ended_by_server",
    "peer_of",
    "read_body",
    "send_error",
    "send_response",
    "watch_disconnect",
]

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


class BodyTooLargeError(Exception):
    """A request body grew past the configured limit while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; BodyTooLargeError past ``limit`` bytes, without reading on."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def peer_of(scope: Scope) -> str:
    """The client address as grpc reports peers: "ipv4:1.2.3.4:5678"."""
    client = scope.get("client")
    return f"ipv4:{client[0]}:{client[1]}" if client else "unknown"


async def watch_disconnect(receive: Receive, call: asyncio.Future[Any], context: Any) -> None:
    """Cancel ``call`` when the client goes away (only ``http.disconnect`` tells)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            context.cancelled_by_client = True
            call.cancel()
            return


def ended_by_server(context: Any) -> None:
    """The server cancelled this call (its drain ran out, or a forced stop): make the
    call's status UNAVAILABLE "server shutting down" and take the cancellation back.

    The gateway then writes that status as any other — a JSON error, a last stream item,
    a gRPC-Web trailer frame — instead of letting the cancellation reach uvicorn, which
    answers 500 text/plain with a traceback in the log, or cuts a started body short.
    """
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    error = ShuttingDownError()
    context.set_code(error.code)
    context.set_details(error.message)
    status = to_status_proto(error).SerializeToString()
    kept = [(k, v) for k, v in context.trailing_metadata() if k != "grpc-status-details-bin"]
    context.set_trailing_metadata([*kept, ("grpc-status-details-bin", status)])
