"""Small ASGI response helpers shared by the REST and gRPC-Web paths."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import grpc

from nexus_grpc.errors import ShuttingDownError, StatusError, to_status_proto
from nexus_grpc.gateway.codec import dumps
from nexus_grpc.gateway.status import error_body, http_status

__all__ = [
    "FINAL_WRITE_SECONDS",
    "BodyTooLargeError",
    "GuardedSend",
    "Headers",
    "Receive",
    "Send",
    "SendStalledError",
    "ended_by_server",
    "peer_of",
    "read_body",
    "send_error",
    "send_response",
    "shutting_down",
    "watch_disconnect",
]

_log = logging.getLogger("nexus.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"

#: At shutdown, seconds the final status of a call (and what was written before it) may
#: take to leave before the connection is closed: a client that stopped reading must not
#: hold the drain for the whole grace period.
FINAL_WRITE_SECONDS = 1.0
#: Between two looks at a transport's write buffer while waiting for it to empty.
_FLUSH_POLL_SECONDS = 0.05

_SHUTTING_DOWN = ShuttingDownError().message


class SendStalledError(StatusError):
    """The client read nothing of the response for ``http.send_timeout`` seconds."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"client did not read the response for {seconds:g} s",
            reason="SEND_TIMEOUT",
            metadata={"timeout": f"{seconds:g}"},
        )


class GuardedSend:
    """One request's ASGI ``send``, bounded in how long it may wait for the client.

    uvicorn's ``send`` waits, before writing, until the transport's buffer is below its
    high-water mark; a client that stops reading (its receive window full) makes that
    wait forever, holding the request's task and the handler feeding it. Only while the
    transport's writing is paused does a send here run under a timeout (one attribute
    read otherwise); when it expires with nothing of the buffer sent meanwhile, the
    connection is aborted — ``close()`` would wait
    for the buffer to drain — and :class:`SendStalledError` is raised, to the handler
    writing a stream (which ends with that status) or to the gateway.

    Works with uvicorn's HTTP protocols, whose ``send`` is the request cycle's bound
    method (with ``flow`` and ``transport``); any other ``send`` passes through.
    """

    __slots__ = ("_flow", "_send", "_transport", "stalled", "started", "timeout")

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        try:
            cycle: Any = send.__self__  # type: ignore[attr-defined]
            flow = cycle.flow
            transport = cycle.transport
        except AttributeError:
            flow = transport = None
        if timeout <= 0:
            flow = transport = None
        self._flow = flow
        self._transport: asyncio.Transport | None = transport
        #: Seconds a send may wait for the client to read.
        self.timeout = timeout
        #: Whether the response has started (http.response.start was sent).
        self.started = False
        #: Whether a send ran out of time (the connection is aborted).
        self.stalled = False

    async def __call__(self, message: Message) -> None:
        if self.stalled:
            raise SendStalledError(self.timeout)
        if message["type"] == "http.response.start":
            self.started = True
        flow = self._flow
        if flow is None or not flow.write_paused:
            await self._send(message)
            return
        transport = self._transport
        assert transport is not None
        while True:
            before = transport.get_write_buffer_size()
            try:
                async with asyncio.timeout(self.timeout):
                    # uvicorn's send awaits nothing but the drain, before writing: a
                    # send timed out wrote nothing and may be made again.
                    await self._send(message)
                return
            except TimeoutError:
                if transport.get_write_buffer_size() < before:
                    continue  # the client read some: slow, not stalled
            self.stalled = True
            await self.abort()
            _log.info(
                "closed the connection of a client that read nothing of its response for "
                "%g s (http.send_timeout)",
                self.timeout,
            )
            raise SendStalledError(self.timeout) from None

    def finishing(self) -> None:
        """The host is shutting down: what is still to write gets ``FINAL_WRITE_SECONDS``."""
        if self._flow is not None:
            self.timeout = min(self.timeout, FINAL_WRITE_SECONDS)

    async def flush(self) -> None:
        """Wait up to ``timeout`` seconds for the written response to leave, else abort.

        Used at shutdown: uvicorn's drain waits for every connection to close, and
        closing one whose client does not read waits for its buffer forever.
        """
        transport = self._transport
        if transport is None or self.stalled:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + self.timeout
        while transport.get_write_buffer_size():
            if loop.time() >= end:
                await self.abort()
                return
            await asyncio.sleep(_FLUSH_POLL_SECONDS)

    async def abort(self) -> None:
        """Drop the connection now, unwritten data and all."""
        transport = self._transport
        if transport is None:
            return
        self.stalled = True
        transport.abort()
        # The transport reports the loss on the next loop turn: once it has, uvicorn
        # takes the response as cut by the client rather than left unfinished by the app.
        await asyncio.sleep(0)


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


async def read_body(receive: Receive, limit: int, context: Any) -> bytes:
    """The whole request body; BodyTooLargeError past ``limit`` bytes, without reading on.

    A client that leaves before the end cancels the call, as a client (``context``):
    the call is CANCELLED, not handled as complete nor as ended by the server.
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            context.cancelled_by_client = True
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def peer_of(scope: Scope) -> str:
    """The client address as grpc reports peers: "ipv4:1.2.3.4:5678", "ipv6:[::1]:5678".

    Behind a trusted proxy, the client it forwarded for (the HTTP protocol set it).
    """
    client = scope.get("client")
    if not client:
        return "unknown"
    host = client[0]
    if ":" in host:
        return f"ipv6:[{host}]:{client[1]}"
    return f"ipv4:{host}:{client[1]}"


async def watch_disconnect(
    receive: Receive, call: asyncio.Future[Any], context: Any, send: GuardedSend
) -> None:
    """Cancel ``call`` when the client goes away (only ``http.disconnect`` tells).

    Not when ``send`` closed the connection itself: the call ends with that status.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if send.stalled:
                return
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


def shutting_down(context: Any) -> bool:
    """Whether the call ended because the host is shutting down (its drain)."""
    return bool(
        context.code() == grpc.StatusCode.UNAVAILABLE and context.details() == _SHUTTING_DOWN
    )
