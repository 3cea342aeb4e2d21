"""The server span of every call, and short child spans for the stages that refuse one.

Bound into the pipeline only when tracing is on (:func:`nexus_grpc.pipeline.build_stages`),
outermost, so the access log line and every other record of the call carry its trace
id. One stage serves every transport: gRPC, REST and gRPC-Web (the gateway marks its
contexts with the HTTP request's method, route template and scheme) and in-process
calls between plugins (whose metadata carries the caller's ``traceparent``).
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import Any

import grpc
from google.rpc import status_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nexus_grpc.errors import StatusError
from nexus_grpc.pipeline.codes import as_code, cancelled_code
from nexus_grpc.pipeline.context import received_metadata
from nexus_grpc.routing import CallHandler, MethodInfo
from nexus_grpc.tracing._state import tracer
from nexus_grpc.tracing.http import HttpCall
from nexus_grpc.tracing.propagation import extract_pairs
from nexus_grpc.tracing.refusal import claim_own_refusal

__all__ = ["HttpCall", "RefusalSpans", "ServerSpanStage", "http_status_code"]

#: Codes that are the server's fault, as the RPC semantic conventions list them for a
#: server span; the others (a caller's mistake or a refusal) leave the status unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
#: The last exception that came up through a refusal-recording stage's ``next``, with
#: that stage's mark. Per task, not an attribute of the exception: one exception object
#: may be raised by many calls (a shared UNIMPLEMENTED error), and must not collect marks.
_passed: ContextVar[tuple[object, BaseException] | None] = ContextVar(
    "nexus_refusal_passed", default=None
)


def http_status_code(context: Any, code: grpc.StatusCode) -> int:
    """The HTTP status the gateway answers a call that ended with ``code`` with."""
    from nexus_grpc.gateway.app import answer_status
    from nexus_grpc.gateway.output import status_of

    if code is grpc.StatusCode.OK:
        return 200
    # The gateway's own refusals (413, 414, 415) carry their HTTP status in the details.
    try:
        status = status_of(context, code)
    except Exception:  # status details a plugin set that do not parse: the code decides
        status = status_pb2.Status(code=code.value[0])
    return answer_status(status, code)


class ServerSpanStage:
    """A SERVER span per call, child of the caller's W3C trace context."""

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` in a span named ``pkg.Service/Method``."""
        name = method.path.lstrip("/")
        base = {
            "rpc.system": "grpc",
            "rpc.service": method.service,
            "rpc.method": method.method,
            "nexus.plugin": method.plugin,
        }
        get_tracer = tracer

        async def traced(request: Any, context: Any) -> Any:
            parent = extract_pairs(received_metadata(context))
            attributes: dict[str, Any] = dict(base)
            attributes["nexus.transport"] = getattr(context, "transport", "grpc")
            http: HttpCall | None = getattr(context, "http_call", None)
            if http is not None:
                attributes["http.request.method"] = http.method
                attributes["url.scheme"] = http.scheme
                if http.route:
                    attributes["http.route"] = http.route
            span = get_tracer().start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            code: Any = grpc.StatusCode.OK
            try:
                result = await next(request, context)
                code = context.code() or grpc.StatusCode.OK
                return result
            except asyncio.CancelledError:
                code = cancelled_code(context)
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                try:
                    _finish(span, code, context, http)
                finally:  # whatever went wrong finishing, the call's context is left
                    otel_context.detach(token)

        return traced


def _finish(span: Any, raw_code: Any, context: Any, http: HttpCall | None) -> None:
    try:
        code = as_code(raw_code)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if http is not None:
            status = http.status_sent
            span.set_attribute(
                "http.response.status_code",
                status if status is not None else http_status_code(context, code),
            )
        if code in _SERVER_ERRORS:
            span.set_attribute("error.type", code.name)
            span.set_status(Status(StatusCode.ERROR, _details(context)))
    finally:  # never a span left open, whatever a plugin left in the context
        span.end()


def _details(context: Any) -> str | None:
    details = getattr(context, "details", None)
    try:
        text = details() if callable(details) else None
    except Exception:  # a context without readable details: the code says enough
        return None
    return text if isinstance(text, str) and text else None


class RefusalSpans:
    """Wraps a stage that can refuse a call: a refusal becomes a short child span.

    A call the stage lets through gets no span of its own (it costs one wrapper and a
    clock read), so a normal call stays cheap; a refusal gets a span ``nexus.<stage>``
    covering the stage's work, with the status code, the reason and the message.
    """

    def __init__(self, stage: Any, name: str) -> None:
        self._stage = stage
        self._name = name

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Bind the wrapped stage, recording its refusals for ``method``."""
        mark = object()

        async def passed(request: Any, context: Any) -> Any:
            try:
                return await next(request, context)
            except BaseException as error:
                # Whatever fails below this stage was not this stage's refusal, unless
                # the stage raised it there itself (a validated request stream).
                if not claim_own_refusal(error):
                    _passed.set((mark, error))
                raise

        handler: CallHandler = self._stage.bind(method, passed)
        if handler is passed:
            return next  # the stage does not apply to this method: nothing to record
        span_name = f"nexus.{self._name}"
        stage_name = self._name

        async def recording(request: Any, context: Any) -> Any:
            started = time.time_ns()
            try:
                return await handler(request, context)
            except BaseException as error:
                below = _passed.get()
                if below is not None:
                    _passed.set(None)
                if below is None or below[0] is not mark or below[1] is not error:
                    _record_refusal(span_name, stage_name, started, error, context)
                raise

        return recording


def _record_refusal(
    span_name: str, stage: str, started: int, error: BaseException, context: Any
) -> None:
    if isinstance(error, asyncio.CancelledError):
        return  # the caller went away while the stage waited: not a refusal
    if isinstance(error, StatusError):
        code = error.code
        reason = error.reason or code.name
        message = error.message
    else:
        code = as_code(context.code()) if context.code() else grpc.StatusCode.UNKNOWN
        reason = type(error).__name__
        message = _details(context) or ""
    span = tracer().start_span(
        span_name,
        kind=SpanKind.INTERNAL,
        start_time=started,
        attributes={
            "nexus.stage": stage,
            "nexus.refusal.reason": reason,
            "rpc.grpc.status_code": code.value[0],
            "error.type": reason,
        },
    )
    span.set_status(Status(StatusCode.ERROR, message or None))
    span.end()
