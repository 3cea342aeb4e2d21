"""A REST request as the pipeline first sees it: matched and routed, not yet read.

The gateway matches the route from the request line and headers only, then hands the
pipeline a :class:`PendingRestRequest`. The pipeline's decode stage resolves it after
authentication and rate limiting, so the body of a caller who is refused is never
read, and errors in reading or binding (413, 414, 415, malformed JSON, bad path or
query values) leave through the pipeline like any status: counted and access-logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf.message import Message

from nexus_grpc.errors import StatusError
from nexus_grpc.gateway.responses import BodyTooLargeError, Receive, Scope, read_body
from nexus_grpc.gateway.routes import GatewayRoute
from nexus_grpc.pipeline.decode import PendingRequest

__all__ = [
    "GATEWAY_HTTP_STATUS_REASONS",
    "BodyLimits",
    "PendingRestRequest",
    "header",
    "query_of",
    "read_limited_body",
    "require_content_type",
    "too_large",
]

#: ErrorInfo reasons of the gateway's own errors that carry an HTTP status of their
#: own (metadata ``http_status``): statuses with no gRPC code (413, 414, 415).
GATEWAY_HTTP_STATUS_REASONS = frozenset(
    {"BODY_TOO_LARGE", "QUERY_TOO_LONG", "UNSUPPORTED_MEDIA_TYPE"}
)


class BodyLimits:
    """How much a REST request may make the gateway read and parse."""

    __slots__ = ("max_body_bytes", "max_query_bytes", "thread_parse_bytes")

    def __init__(self, max_body_bytes: int, max_query_bytes: int, thread_parse_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_query_bytes = max_query_bytes
        #: Bodies at least this large are parsed in a worker thread (0: never).
        self.thread_parse_bytes = thread_parse_bytes


class PendingRestRequest(PendingRequest):
    """Reads, checks and decodes one REST request when the pipeline asks for it."""

    __slots__ = (
        "_context",
        "_limits",
        "_receive",
        "_route",
        "_scope",
        "_variables",
        "on_read",
        "reads_body",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        route: GatewayRoute,
        variables: Mapping[str, str],
        limits: BodyLimits,
        context: Any,
        *,
        read: bool,
    ) -> None:
        self._scope = scope
        self._context = context
        self._receive = receive
        self._route = route
        self._variables = variables
        self._limits = limits
        #: Whether the request has a body to read (a body binding and a body method).
        self.reads_body = read
        #: Called once the body is read (the gateway then watches for a disconnect).
        self.on_read: Callable[[], None] | None = None

    async def resolve(self) -> Message:
        """The request message built from path, query string and body."""
        scope = self._scope
        limits = self._limits
        query = query_of(scope, limits.max_query_bytes)
        content_type = header(scope, b"content-type")
        body: bytes | None = None
        if self.reads_body:
            require_content_type(scope, self._route, streaming=False)
            body = await read_limited_body(
                scope, self._receive, limits.max_body_bytes, self._context
            )
            if self.on_read is not None:
                self.on_read()
        builder = self._route.builder
        if (
            body is not None
            and 0 < limits.thread_parse_bytes <= len(body)
            and not builder.raw_body  # HttpBody: the bytes are taken as they are
        ):
            # Decoding JSON into a message costs ~50 ms per MB, mostly pure Python,
            # which lets go of the GIL every switch interval (5 ms): in a worker
            # thread, other clients' calls go on while a large body is decoded.
            return await asyncio.to_thread(
                builder.build, self._variables, query, body, content_type
            )
        return builder.build(self._variables, query, body, content_type)


def header(scope: Scope, name: bytes) -> str:
    """The value of request header ``name`` (lowercase), or ""."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def query_of(scope: Scope, limit: int) -> list[tuple[str, str]]:
    """The query parameters; 414 when the query string is longer than ``limit`` bytes."""
    raw: bytes = scope.get("query_string", b"")
    if limit and len(raw) > limit:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"query string is longer than {limit} bytes",
            reason="QUERY_TOO_LONG",
            metadata={"http_status": "414", "limit": str(limit)},
        )
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True)


def require_content_type(scope: Scope, gateway_route: GatewayRoute, *, streaming: bool) -> None:
    """415 unless the request's content type is one the route accepts."""
    if gateway_route.builder.raw_body:
        return
    content_type = header(scope, b"content-type").split(";", 1)[0].strip().lower()
    accepted = ("application/json", "application/x-ndjson") if streaming else ("application/json",)
    if content_type and content_type not in accepted:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unsupported content type {content_type!r}; send {' or '.join(accepted)}",
            reason="UNSUPPORTED_MEDIA_TYPE",
            metadata={"http_status": "415"},
        )


async def read_limited_body(scope: Scope, receive: Receive, limit: int, context: Any) -> bytes:
    """The request body; 413 (RESOURCE_EXHAUSTED) past ``limit`` bytes, as declared by
    Content-Length (nothing is read then) or as read; the call is cancelled by the
    client when it leaves before the end."""
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    try:
        return await read_body(receive, limit, context)
    except BodyTooLargeError:
        raise too_large(limit) from None


def too_large(limit: int) -> StatusError:
    """413 for a body past ``limit`` bytes."""
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body is larger than {limit} bytes",
        reason="BODY_TOO_LARGE",
        metadata={"http_status": "413", "limit": str(limit)},
    )
