"""gRPC-Web on the HTTP port, so browsers call any method without a proxy.

The protocol (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md): POST to the gRPC
path, messages in the usual 5-byte-prefixed frames, metadata as plain headers, and the
trailers as a last frame flagged 0x80 inside the body, because browsers cannot read
HTTP trailers. ``application/grpc-web-text`` is the same, base64-encoded. Unary and
server-streaming calls are supported: browsers cannot stream request bodies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import grpc

from nexus_grpc import tracing
from nexus_grpc.bounded import MESSAGE_LIMIT, clip
from nexus_grpc.errors import StatusError
from nexus_grpc.gateway.context import GatewayContext
from nexus_grpc.gateway.headers import call_deadline
from nexus_grpc.gateway.pending import read_limited_body
from nexus_grpc.gateway.responses import (
    GuardedSend,
    Headers,
    Receive,
    Scope,
    Send,
    ended_by_server,
    peer_of,
    shutting_down,
    watch_disconnect,
)
from nexus_grpc.pipeline.context import call_result, start_call
from nexus_grpc.pipeline.decode import PendingRequest
from nexus_grpc.routing import Router
from nexus_grpc.tls.identity import scope_auth_context
from nexus_grpc.tracing.http import HttpCall

if TYPE_CHECKING:
    from nexus_grpc.gateway.app import GatewaySettings

__all__ = ["GrpcWebHandler", "decode_frames", "encode_frame"]

_DATA = 0x00
_TRAILERS = 0x80
_HEADER = struct.Struct(">BI")

# Headers that are HTTP's or the browser's, not call metadata.
_NOT_METADATA = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "accept",
        "accept-encoding",
        "connection",
        "origin",
        "referer",
        "te",
        "user-agent",
        "x-grpc-web",
        "x-user-agent",
        "cookie",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-fetch-dest",
        "pragma",
        "cache-control",
        "grpc-timeout",
        "grpc-accept-encoding",
        "grpc-encoding",
        "accept-language",
        # Set by proxies, not by the caller: never metadata a handler could trust.
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)


def encode_frame(flag: int, payload: bytes) -> bytes:
    """One length-prefixed gRPC(-Web) frame."""
    return _HEADER.pack(flag, len(payload)) + payload


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split a body into (flag, payload) frames; ValueError when truncated."""
    frames = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise ValueError("truncated frame header")
        flag, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        if len(data) - offset < length:
            raise ValueError("truncated frame")
        frames.append((flag, data[offset : offset + length]))
        offset += length
    return frames


class GrpcWebHandler:
    """Serves gRPC-Web requests through the routes' pipeline handlers."""

    def __init__(self, router: Router, settings: GatewaySettings) -> None:
        self._router = router
        self._settings = settings
        # Read once: tracing is switched on before the gateway is built.
        self._tracing = tracing.enabled()

    async def handle(
        self, scope: Scope, receive: Receive, send: GuardedSend, cors: Headers
    ) -> None:
        """Answer one gRPC-Web request (always HTTP 200: the status is in the trailers)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        text = headers.get("content-type", "").startswith("application/grpc-web-text")
        response = _Response(send, text, cors)
        route = self._router.lookup(scope["path"])
        if scope["method"] != "POST" or route is None:
            await response.trailers(
                grpc.StatusCode.UNIMPLEMENTED, f"method {scope['path']} not found", ()
            )
            return
        if route.info.descriptor.client_streaming:
            await response.trailers(
                grpc.StatusCode.UNIMPLEMENTED, "client streaming is not available over gRPC-Web", ()
            )
            return
        try:
            deadline = call_deadline(
                headers.get("grpc-timeout", ""), self._settings.default_timeout
            )
        except StatusError as error:
            await response.trailers(error.code, error.message, ())
            return
        serialize = route.grpc_handler.response_serializer
        context = GatewayContext(
            transport="grpc-web",
            metadata=_metadata(scope["headers"]),
            peer=peer_of(scope),
            deadline=deadline,
            writer=lambda message: response.message(
                serialize(message) if serialize else message, context
            ),
            auth_context=scope_auth_context(scope),
        )
        if self._tracing:
            # Always 200: the call's status travels in the trailers.
            context.http_call = HttpCall("POST", "", scope["scheme"], status_sent=200)
        watcher: asyncio.Future[None] | None = None

        def body_read() -> None:
            nonlocal watcher
            # The body is read: the next receive() reports the client leaving, which
            # must end a server stream instead of letting it write into the void.
            watcher = asyncio.ensure_future(watch_disconnect(receive, call, context, send))

        # The body is read and decoded by the pipeline's decode stage, after auth and
        # rate limits: a refused caller's body is never read.
        request = _PendingGrpcWebRequest(
            scope, receive, self._settings.max_body_bytes, context, text=text, on_read=body_read
        )
        call = start_call(route.call, request, context)
        result: Any = None
        try:
            result = await call_result(call, context)
        except asyncio.CancelledError:
            if context.cancelled_by_client:
                return
            ended_by_server(context)
        finally:
            if watcher is not None:
                watcher.cancel()
        code = context.code() or grpc.StatusCode.OK
        ending = shutting_down(context)
        if ending:
            send.finishing()
        if (
            code == grpc.StatusCode.OK
            and result is not None
            and not route.info.descriptor.server_streaming
        ):
            await response.message(serialize(result) if serialize else result, context)
        await response.trailers(code, context.details() or "", context.trailing_metadata(), context)
        if ending:
            await send.flush()


class _PendingGrpcWebRequest(PendingRequest):
    """The request body of a gRPC-Web call, read when the pipeline's decode stage asks."""

    __slots__ = ("_context", "_limit", "_on_read", "_receive", "_scope", "_text")

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        limit: int,
        context: GatewayContext,
        *,
        text: bool,
        on_read: Callable[[], None],
    ) -> None:
        self._scope = scope
        self._receive = receive
        self._limit = limit
        self._context = context
        self._text = text
        self._on_read = on_read

    async def resolve(self) -> bytes:
        """The payload of the one request frame (the decode stage parses it)."""
        # Past http.max_body_bytes: RESOURCE_EXHAUSTED, as over REST (Content-Length first).
        body = await read_limited_body(self._scope, self._receive, self._limit, self._context)
        self._on_read()
        try:
            if self._text:
                body = base64.b64decode(body, validate=False)
            frames = [payload for flag, payload in decode_frames(body) if flag == _DATA]
            if len(frames) != 1:
                raise ValueError(f"expected one request message, got {len(frames)}")
        except (ValueError, binascii.Error) as error:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed gRPC-Web request: {error}",
                reason="MALFORMED_GRPC_WEB",
            ) from None
        return frames[0]


class _Response:
    def __init__(self, send: Send, text: bool, cors: Headers) -> None:
        self._send = send
        self._text = text
        self._cors = cors
        self._started = False

    async def _start(self, context: GatewayContext | None) -> None:
        if self._started:
            return
        self._started = True
        content_type = (
            b"application/grpc-web-text+proto" if self._text else b"application/grpc-web+proto"
        )
        headers = [(b"content-type", content_type), *self._cors]
        if context is not None:
            headers += _metadata_headers(context.initial_metadata or ())
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def message(self, payload: bytes, context: GatewayContext) -> None:
        await self._start(context)
        await self._chunk(encode_frame(_DATA, payload), more=True)

    async def trailers(
        self,
        code: grpc.StatusCode,
        message: str,
        metadata: Any,
        context: GatewayContext | None = None,
    ) -> None:
        await self._start(context)
        # The gateway's own messages quote the request path: bounded as every status is.
        message = clip(message, MESSAGE_LIMIT)
        lines = [f"grpc-status:{code.value[0]}", f"grpc-message:{quote(message, safe=' ')}"]
        for key, value in metadata or ():
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode("ascii")
            lines.append(f"{key}:{value}")
        block = ("\r\n".join(lines) + "\r\n").encode("latin-1", "replace")
        await self._chunk(encode_frame(_TRAILERS, block), more=False)

    async def _chunk(self, data: bytes, *, more: bool) -> None:
        if self._text:
            data = base64.b64encode(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})


def _metadata(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    metadata: list[tuple[str, str | bytes]] = []
    for raw_key, raw_value in raw:
        key = raw_key.decode("latin-1").lower()
        if key in _NOT_METADATA or key.startswith(("sec-", "access-control-", "grpc-")):
            continue
        value = raw_value.decode("latin-1")
        if not value.isprintable():
            continue
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value + "=" * (-len(value) % 4))))
            except binascii.Error:
                continue
        else:
            metadata.append((key, value))
    return tuple(metadata)


def _metadata_headers(metadata: Any) -> Headers:
    headers = []
    for key, value in metadata:
        text = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        headers.append((key.encode("latin-1"), text.encode("latin-1")))
    return headers
