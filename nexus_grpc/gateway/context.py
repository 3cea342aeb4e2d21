"""The servicer context a call gets when it arrives over HTTP.

Handlers and pipeline stages are written against grpc.aio's ``ServicerContext``; this
class offers the same methods with the same behaviour (``abort`` raises
``grpc.aio.AbortError``, ``write`` sends a streamed response), so a plugin cannot tell
which transport brought the call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc

__all__ = ["GatewayContext", "Metadata"]

Metadata = tuple[tuple[str, str | bytes], ...]


class GatewayContext:
    """``grpc.aio.ServicerContext`` for calls made over REST or gRPC-Web."""

    def __init__(
        self,
        *,
        transport: str,
        metadata: Metadata,
        peer: str,
        deadline: float | None,
        writer: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        #: "rest" or "grpc-web": pipeline stages label metrics with it.
        self.transport = transport
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline
        self._writer = writer
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: Metadata = ()
        self.initial_metadata: Metadata | None = None
        self.cancelled_by_client = False

    def invocation_metadata(self) -> Metadata:
        """Metadata the client sent (allow-listed headers)."""
        return self._metadata

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Response headers; may be sent once, before the first message."""
        if self.initial_metadata is not None:
            raise RuntimeError("initial metadata was already sent")
        self.initial_metadata = tuple(metadata)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Metadata sent after the response."""
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> Metadata:
        """Metadata set to be sent after the response."""
        return self._trailing

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        """End the call with ``code``; raises ``grpc.aio.AbortError`` like grpc.aio does."""
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs an error code, not OK")
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        """Status code of the call when the handler returns."""
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        """The status code set so far."""
        return self._code

    def set_details(self, details: str) -> None:
        """Status message of the call when the handler returns."""
        self._details = details

    def details(self) -> str | None:
        """The status message set so far."""
        return self._details

    def time_remaining(self) -> float | None:
        """Seconds until the deadline, None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        """The client address, "ipv4:1.2.3.4:5678" as grpc reports it."""
        return self._peer

    def cancelled(self) -> bool:
        """True once the client went away."""
        return self.cancelled_by_client

    def done(self) -> bool:
        """True once the client went away (the call is over)."""
        return self.cancelled_by_client

    def auth_context(self) -> dict[str, list[bytes]]:
        """No transport security properties over plain HTTP."""
        return {}

    def set_compression(self, compression: Any) -> None:
        """Accepted and ignored: HTTP compression is the HTTP server's business."""

    def disable_next_message_compression(self) -> None:
        """Accepted and ignored."""

    async def write(self, message: Any) -> None:
        """Send one message of a streamed response."""
        if self._writer is None:
            raise RuntimeError("write() is only for methods that stream responses")
        await self._writer(message)
