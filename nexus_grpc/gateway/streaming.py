"""Server-streamed responses over HTTP: NDJSON, Server-Sent Events or a JSON array.

The format follows the ``Accept`` header. The response starts with the first message,
so an error before it gets its proper HTTP status; an error after it (the status is
sent already) arrives as a last error item in the same format.
"""

from __future__ import annotations

import enum

from google.protobuf.message import Message
from google.rpc import status_pb2

from nexus_grpc.gateway.codec import JsonOptions, dumps
from nexus_grpc.gateway.context import GatewayContext
from nexus_grpc.gateway.output import metadata_headers, response_value
from nexus_grpc.gateway.responses import Headers, Send
from nexus_grpc.gateway.routes import GatewayRoute
from nexus_grpc.gateway.status import status_body

__all__ = ["StreamFormat", "StreamWriter", "stream_format"]


class StreamFormat(enum.Enum):
    """How a stream of messages is laid out in the HTTP body."""

    NDJSON = "application/x-ndjson"
    SSE = "text/event-stream"
    JSON_ARRAY = "application/json"


def stream_format(accept: str) -> StreamFormat:
    """The format the client asked for; a JSON array when it asked for none of them."""
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == StreamFormat.NDJSON.value:
            return StreamFormat.NDJSON
        if media == StreamFormat.SSE.value:
            return StreamFormat.SSE
    return StreamFormat.JSON_ARRAY


class StreamWriter:
    """Writes one call's streamed responses as they are produced."""

    def __init__(
        self,
        send: Send,
        fmt: StreamFormat,
        route: GatewayRoute,
        options: JsonOptions,
        context: GatewayContext,
        headers: Headers,
    ) -> None:
        self._send = send
        self._format = fmt
        self._route = route
        self._options = options
        self._context = context
        self._headers = headers
        self.started = False
        self._count = 0

    async def write(self, message: Message) -> None:
        """Send one response message (the first one starts the HTTP response)."""
        await self._start()
        value = response_value(message, self._route, self._options)
        await self._chunk(self._item(dumps(value)))
        self._count += 1

    async def finish(self) -> None:
        """The stream ended normally."""
        await self._start()
        closing = b"]" if self._format is StreamFormat.JSON_ARRAY else b""
        await self._send({"type": "http.response.body", "body": closing, "more_body": False})

    async def fail(self, status: status_pb2.Status) -> None:
        """The stream ended with an error after the response had started."""
        error = dumps({"error": status_body(status)})
        if self._format is StreamFormat.SSE:
            body = b"event: error\ndata: " + error + b"\n\n"
        elif self._format is StreamFormat.NDJSON:
            body = error + b"\n"
        else:
            body = self._item(error) + b"]"
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _start(self) -> None:
        if self.started:
            return
        self.started = True
        headers = [
            (b"content-type", self._format.value.encode()),
            (b"cache-control", b"no-cache"),
            *self._headers,
            *metadata_headers(self._context, trailers=False),
        ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        http = self._context.http_call
        if http is not None:  # tracing: a later error cannot change the status any more
            http.status_sent = 200
        if self._format is StreamFormat.JSON_ARRAY:
            await self._chunk(b"[")

    def _item(self, data: bytes) -> bytes:
        if self._format is StreamFormat.SSE:
            return b"data: " + data + b"\n\n"
        if self._format is StreamFormat.NDJSON:
            return data + b"\n"
        return data if self._count == 0 else b"," + data

    async def _chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    def __repr__(self) -> str:
        return f"StreamWriter({self._format.name}, {self._count} sent)"
