"""The REST gateway: an ASGI application transcoding HTTP/JSON to the call pipeline.

A request is matched against the HTTP bindings of the current routing generation,
turned into the request message, and run through the route's pipeline handler — the
same one gRPC calls run — with a :class:`GatewayContext`. Nothing here is generated per
plugin: bindings are read from the descriptors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from nexus_grpc import tracing
from nexus_grpc.config import HttpConfig
from nexus_grpc.errors import StatusError
from nexus_grpc.gateway.bindings import RESERVED_PATHS
from nexus_grpc.gateway.codec import JsonOptions, dumps
from nexus_grpc.gateway.context import GatewayContext
from nexus_grpc.gateway.cors import CorsPolicy
from nexus_grpc.gateway.headers import (
    call_deadline,
    metadata_from_headers,
)
from nexus_grpc.gateway.output import metadata_headers, response_value, status_of
from nexus_grpc.gateway.pending import (
    GATEWAY_HTTP_STATUS_REASONS,
    BodyLimits,
    PendingRestRequest,
    query_of,
    require_content_type,
    too_large,
)
from nexus_grpc.gateway.pending import header as _header
from nexus_grpc.gateway.probes import PROBE_PATHS, Probes
from nexus_grpc.gateway.responses import (
    JSON,
    GuardedSend,
    Headers,
    Receive,
    Scope,
    Send,
    SendStalledError,
    ended_by_server,
    peer_of,
    send_error,
    send_response,
    shutting_down,
    watch_disconnect,
)
from nexus_grpc.gateway.routes import GatewayRoute, GatewayRoutes, build_gateway_routes
from nexus_grpc.gateway.status import http_status, status_body
from nexus_grpc.gateway.streaming import StreamWriter, stream_format
from nexus_grpc.logs import request_id_var
from nexus_grpc.pipeline.context import call_result, start_call
from nexus_grpc.pipeline.observe import incoming_request_id
from nexus_grpc.routing import Route, Router, RoutingTable
from nexus_grpc.tls.identity import scope_auth_context
from nexus_grpc.tracing.http import HttpCall
from nexus_grpc.tracing.propagation import propagation_keys

if TYPE_CHECKING:
    from nexus_grpc.pipeline.metrics import Metrics

__all__ = ["GatewayApp", "GatewaySettings"]

_log = logging.getLogger("nexus.gateway")

#: Reflection is a bidirectional stream of descriptors: meaningless as REST.
_NOT_ON_REST = frozenset(
    {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Codes under which the gateway's own 413/414/415 errors travel.
_MAY_CARRY_HTTP_STATUS = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway accepts and how it answers."""

    json: JsonOptions = field(default_factory=JsonOptions)
    #: Largest request body accepted, in bytes (413 beyond).
    max_body_bytes: int = 4 * 1024 * 1024
    #: Longest query string accepted, in bytes (414 beyond; 0 for no limit).
    max_query_bytes: int = 16 * 1024
    #: REST bodies at least this large are decoded in a worker thread (0: never).
    thread_parse_bytes: int = 64 * 1024
    #: Headers passed to handlers as metadata besides Authorization and Grpc-Metadata-*.
    forward_headers: frozenset[str] = frozenset({"x-request-id", "accept-language", "user-agent"})
    #: Reject unknown query parameters instead of ignoring them.
    strict_query: bool = False
    #: Deadline of calls that send no Grpc-Timeout; 0 for none.
    default_timeout: float = 0.0
    #: Seconds a response may wait for a client that does not read it; 0 for none.
    send_timeout: float = 60.0
    cors: CorsPolicy = field(default_factory=CorsPolicy)

    @classmethod
    def from_config(cls, config: HttpConfig) -> GatewaySettings:
        """Settings from the ``[http]`` section of the host configuration."""
        return cls(
            json=JsonOptions(emit_defaults=config.emit_defaults, proto_names=config.proto_names),
            max_body_bytes=config.max_body_bytes,
            max_query_bytes=config.max_query_bytes,
            thread_parse_bytes=config.thread_parse_bytes,
            forward_headers=frozenset(h.lower() for h in config.forward_headers),
            strict_query=config.strict_query,
            default_timeout=config.default_timeout,
            send_timeout=config.send_timeout,
            cors=CorsPolicy(origins=config.cors_origins),
        )


class GatewayApp:
    """ASGI application serving every routed method over HTTP/JSON (and gRPC-Web)."""

    def __init__(
        self,
        router: Router,
        settings: GatewaySettings,
        *,
        metrics: Metrics | None = None,
        probes: Probes | None = None,
    ) -> None:
        self._router = router
        self._settings = settings
        #: Answers ``GET /metrics`` (Prometheus text format) when given.
        self._metrics = metrics
        #: Answers ``GET /healthz`` and ``GET /readyz`` when given.
        self._probes = probes
        self._limits = BodyLimits(
            settings.max_body_bytes, settings.max_query_bytes, settings.thread_parse_bytes
        )
        self._routes = self._build(router.table)
        router.on_change(self._rebuild)
        #: Headers that become metadata; with tracing on, the trace context too
        #: (read once here: tracing is switched on before the gateway is built).
        self._tracing = tracing.enabled()
        self._forward = settings.forward_headers
        if self._tracing:
            self._forward = self._forward | propagation_keys()
        from nexus_grpc.gateway.grpcweb import GrpcWebHandler

        self._grpc_web = GrpcWebHandler(router, settings)

    @property
    def routes(self) -> GatewayRoutes:
        """The HTTP routes of the current generation."""
        return self._routes

    def _build(self, table: RoutingTable) -> GatewayRoutes:
        return build_gateway_routes(
            table,
            self._settings.json,
            strict_query=self._settings.strict_query,
            exclude=_NOT_ON_REST,
        )

    def _rebuild(self, table: RoutingTable) -> None:
        self._routes = self._build(table)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        guarded = GuardedSend(send, self._settings.send_timeout)
        try:
            await self._serve(scope, receive, guarded)
        except SendStalledError:
            return  # the connection is closed, the call ended (and was logged) with it
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when the drain ends (or on a forced stop),
            # often a write a client does not read: close the connection, and return
            # rather than raise — uvicorn logs a traceback for an app that raises.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await guarded.abort()

    async def _serve(self, scope: Scope, receive: Receive, send: GuardedSend) -> None:
        cors = self._settings.cors.response_headers(scope)
        if self._settings.cors.is_preflight(scope):
            headers = self._settings.cors.preflight_headers(scope, self._methods_for(scope))
            await send_response(send, 204, headers, b"")
            return
        content_type = _header(scope, b"content-type")
        if content_type.startswith("application/grpc-web"):
            await self._grpc_web.handle(scope, receive, send, cors)
            return
        try:
            await self._serve_rest(scope, receive, send, cors)
        except SendStalledError:
            raise
        except StatusError as error:
            await send_error(send, error, [*cors, *_request_id_header(scope)])
        except Exception:
            # A gateway bug must not leak a traceback (uvicorn would answer text/plain).
            request_id = _request_id_header(scope)
            token = request_id_var.set(request_id[0][1].decode())
            try:
                _log.exception("gateway error on %s %s", scope["method"], scope["path"])
            finally:
                request_id_var.reset(token)
            if not send.started:
                failure = StatusError(
                    grpc.StatusCode.INTERNAL,
                    f"internal error (request id {request_id[0][1].decode()})",
                    reason="INTERNAL",
                )
                await send_error(send, failure, [*cors, *request_id])

    async def _serve_reserved(
        self, method: str, path: str, send: GuardedSend, cors: Headers
    ) -> None:
        """``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` (GET; HEAD too
        for the probes); 404 for other methods and for one this gateway does not serve
        (no plugin route is tried either way)."""
        probe = path in PROBE_PATHS
        if (method == "GET" or (probe and method == "HEAD")) and await self._answer_reserved(
            method, path, send, cors
        ):
            return
        if self._metrics is not None:
            self._metrics.count_unknown("rest")
        raise StatusError(
            grpc.StatusCode.NOT_FOUND, f"no route for {method} {path}", reason="ROUTE_NOT_FOUND"
        )

    async def _answer_reserved(
        self, method: str, path: str, send: GuardedSend, cors: Headers
    ) -> bool:
        """Answer a reserved path this gateway serves; False when it serves none there."""
        if path in PROBE_PATHS and self._probes is not None:
            answer = await self._probes.answer(path)
            body = answer.body if method == "GET" else b""
            headers = [(b"content-type", JSON), (b"cache-control", b"no-store"), *cors]
            await send_response(send, answer.status, headers, body)
            return True
        if path == "/openapi.json":
            from nexus_grpc.gateway.openapi import openapi_document

            document = openapi_document(self._routes.bindings, self._settings.json)
            await send_response(send, 200, [(b"content-type", JSON), *cors], dumps(document))
            return True
        if path == "/metrics" and self._metrics is not None:
            from prometheus_client import CONTENT_TYPE_LATEST

            await self._metrics.refresh()
            exposition = self._metrics.exposition()
            headers = [(b"content-type", CONTENT_TYPE_LATEST.encode("latin-1"))]
            await send_response(send, 200, headers, exposition)
            return True
        return False

    def _methods_for(self, scope: Scope) -> list[str]:
        """The HTTP methods that apply to the request's exact path (for a preflight)."""
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        if self._router.lookup(scope["path"]) is not None:
            return ["POST"]  # a gRPC method's path: gRPC-Web
        if path in RESERVED_PATHS:
            return ["GET"]
        return self._routes.matcher.allowed_methods(path)

    async def _serve_rest(
        self, scope: Scope, receive: Receive, send: GuardedSend, cors: Headers
    ) -> None:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        routes = self._routes
        if path in RESERVED_PATHS:
            # Answered before any binding is matched: a plugin route such as
            # ``GET /{name}`` must not shadow a probe the orchestrator relies on.
            await self._serve_reserved(method, path, send, cors)
            return
        match = routes.matcher.match(method, path)
        if match is None:
            allowed = routes.matcher.allowed_methods(path)
            if allowed:
                raise _method_not_allowed(method, path, allowed)
            if self._metrics is not None:
                self._metrics.count_unknown("rest")
            raise StatusError(
                grpc.StatusCode.NOT_FOUND, f"no route for {method} {path}", reason="ROUTE_NOT_FOUND"
            )
        gateway_route = match.value
        route = self._router.lookup(gateway_route.binding.route_path)
        if route is None:
            raise StatusError(
                grpc.StatusCode.NOT_FOUND, f"no route for {method} {path}", reason="ROUTE_NOT_FOUND"
            )
        context = self._context(scope, writer=None)
        binding = gateway_route.binding
        if self._tracing:
            context.http_call = HttpCall(method, binding.template.source, scope["scheme"])
        if binding.client_streaming:
            requests = self._request_stream(scope, gateway_route, match.variables, receive, context)
            await self._call(route, gateway_route, requests, context, scope, receive, send, cors)
            return
        # Read and decoded by the pipeline's decode stage, after auth and rate limits.
        request = PendingRestRequest(
            scope,
            receive,
            gateway_route,
            match.variables,
            self._limits,
            context,
            read=bool(binding.body) and method in _BODY_METHODS,
        )
        await self._call(route, gateway_route, request, context, scope, receive, send, cors)

    def _context(self, scope: Scope, writer: Any) -> GatewayContext:
        metadata = metadata_from_headers(scope["headers"], self._forward)
        # The request id is settled here, not in the pipeline, so every response —
        # whatever the handler does to its trailing metadata — carries it.
        request_id = incoming_request_id(metadata)
        metadata = (*(m for m in metadata if m[0] != "x-request-id"), ("x-request-id", request_id))
        deadline = call_deadline(_header(scope, b"grpc-timeout"), self._settings.default_timeout)
        peer = peer_of(scope)
        return GatewayContext(
            transport="rest",
            metadata=metadata,
            peer=peer,
            deadline=deadline,
            writer=writer,
            auth_context=scope_auth_context(scope),
        )

    async def _request_stream(
        self,
        scope: Scope,
        gateway_route: GatewayRoute,
        variables: dict[str, str],
        receive: Receive,
        context: GatewayContext,
    ) -> AsyncIterator[Message]:
        # Runs when the handler reads its first message: after auth and rate limits.
        require_content_type(scope, gateway_route, streaming=True)
        query = query_of(scope, self._limits.max_query_bytes)
        content_type = "application/json"
        build = gateway_route.builder.build
        in_thread = self._limits.thread_parse_bytes
        async for line in _ndjson_lines(receive, self._settings.max_body_bytes, context):
            if 0 < in_thread <= len(line):
                # As for unary bodies (gateway.pending): large ones off the event loop.
                yield await asyncio.to_thread(build, variables, query, line, content_type)
            else:
                yield build(variables, query, line, content_type)

    async def _call(
        self,
        route: Route,
        gateway_route: GatewayRoute,
        request: Any,
        context: GatewayContext,
        scope: Scope,
        receive: Receive,
        send: GuardedSend,
        cors: Headers,
    ) -> None:
        binding = gateway_route.binding
        writer: StreamWriter | None = None
        if binding.server_streaming:
            writer = StreamWriter(
                send,
                stream_format(_header(scope, b"accept")),
                gateway_route,
                self._settings.json,
                context,
                cors,
            )
            context._writer = writer.write
        watcher: asyncio.Future[None] | None = None

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(watch_disconnect(receive, call, context, send))

        call = start_call(route.call, request, context)
        # Bidirectional calls read the body as they go and see the disconnect there.
        if binding.server_streaming and not binding.client_streaming:
            if isinstance(request, PendingRestRequest) and request.reads_body:
                # Only once the decode stage has read the body: both would receive().
                request.on_read = watch
            else:
                watch()
        response: Any = None
        try:
            response = await call_result(call, context)
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
        if writer is not None:
            if code == grpc.StatusCode.OK:
                await writer.finish()
            elif writer.started:
                await writer.fail(status_of(context, code))
            else:
                await self._send_status(send, context, code, cors)
        elif code != grpc.StatusCode.OK:
            await self._send_status(send, context, code, cors)
        else:
            await self._send_message(send, gateway_route, response, context, cors)
        if ending:
            await send.flush()

    async def _send_message(
        self,
        send: Send,
        gateway_route: GatewayRoute,
        response: Message,
        context: GatewayContext,
        cors: Headers,
    ) -> None:
        headers = [*cors, *metadata_headers(context)]
        if gateway_route.raw_response:
            body_message: Any = (
                response
                if gateway_route.response_field is None
                else getattr(response, gateway_route.response_field.name)
            )
            content_type = body_message.content_type or "application/octet-stream"
            await send_response(
                send,
                200,
                [(b"content-type", content_type.encode("latin-1")), *headers],
                body_message.data,
            )
            return
        value = response_value(response, gateway_route, self._settings.json)
        await send_response(send, 200, [(b"content-type", JSON), *headers], dumps(value))

    async def _send_status(
        self, send: Send, context: GatewayContext, code: grpc.StatusCode, cors: Headers
    ) -> None:
        status = status_of(context, code)
        headers = [(b"content-type", JSON), *cors, *metadata_headers(context)]
        answer = answer_status(status, code)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            headers.append((b"www-authenticate", b'Bearer realm="nexus"'))
        retry_after = _retry_after(status)
        if retry_after:
            headers.append((b"retry-after", retry_after.encode()))
        await send_response(send, answer, headers, dumps(status_body(status)))


def answer_status(status: status_pb2.Status, code: grpc.StatusCode) -> int:
    """The HTTP status of a REST call that ended with ``code`` and ``status``."""
    answer = http_status(code)
    if code in _MAY_CARRY_HTTP_STATUS:
        answer = _own_http_status(status, answer)
    return answer


def _own_http_status(status: status_pb2.Status, default: int) -> int:
    """The HTTP status the gateway's own errors (413, 414, 415) carry in their ErrorInfo."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason in GATEWAY_HTTP_STATUS_REASONS:
            value = info.metadata.get("http_status", "")
            return int(value) if value.isdigit() else default
    return default


def _retry_after(status: status_pb2.Status) -> str:
    """Whole seconds from a RetryInfo detail, for the Retry-After header."""
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delay = info.retry_delay.seconds + (1 if info.retry_delay.nanos else 0)
            return str(max(delay, 1))
    return ""


def _method_not_allowed(method: str, path: str, allowed: list[str]) -> StatusError:
    return StatusError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"method {method} is not allowed on {path}; allowed: {', '.join(allowed)}",
        reason="METHOD_NOT_ALLOWED",
        metadata={"allow": ", ".join(allowed), "http_status": "405"},
    )


def _request_id_header(scope: Scope) -> Headers:
    # The same rule as calls that reach the pipeline: the client's id if sane, else new.
    request_id = incoming_request_id((("x-request-id", _header(scope, b"x-request-id")),))
    return [(b"x-request-id", request_id.encode("latin-1"))]


async def _ndjson_lines(
    receive: Receive, limit: int, context: GatewayContext
) -> AsyncIterator[bytes]:
    buffer = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Not the end of the stream: a client stream cut short must not be handled
            # as complete. The client cancelled the call.
            context.cancelled_by_client = True
            raise asyncio.CancelledError
        buffer += message.get("body", b"")
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > limit:
            raise too_large(limit)
        for line in lines:
            if line.strip():
                yield line
        if not message.get("more_body", False):
            if buffer.strip():
                yield buffer
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
