"""Request ids, in-flight accounting and the access log, for every call.

The request id comes from the caller's ``x-request-id`` metadata when it is a sane
token, otherwise it is generated. It is set in a context variable for the logs, and a
failed call carries it back in its trailing metadata (the error stage adds it to each
status it sends, this stage to a status a handler set without raising) and names it in
INTERNAL errors, so an operator can find the traceback. A successful call does not
carry it: a trailer costs grpc core ~5k instructions on every call, ~1 % of an echo,
and a client that wants to correlate its successful calls sends its own id, which
becomes the call's. Envoy returns none by default either; Google's APIs name it in
error details only. The REST gateway answers ``X-Request-Id`` on every response, a
header costing next to nothing there.

The stage also marks the call as the one the task is serving
(:data:`~nexus_grpc.pipeline.context.current_call_var`), for in-process calls made
while serving it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from nexus_grpc.auth.principal import ANONYMOUS, principal_var
from nexus_grpc.logs import request_id_var
from nexus_grpc.pipeline.codes import as_code, cancelled_code, code_label
from nexus_grpc.pipeline.context import CurrentCall, current_call_var, received_metadata
from nexus_grpc.routing import Arity, CallHandler, MethodInfo

__all__ = ["ObserveStage", "incoming_request_id"]

_access = logging.getLogger("nexus.access")

_MAX_REQUEST_ID = 128


def incoming_request_id(metadata: Any) -> str:
    """The caller's ``x-request-id`` if it is short printable ASCII, else a new id."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str):
            if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.isprintable():
                return value
            break
    # 128 random bits, like a uuid4 without building the UUID object (half the cost).
    return os.urandom(16).hex()


class ObserveStage:
    """Outermost stage: request id, in-flight count, one access-log line per call."""

    def __init__(self, *, access_log: bool = True) -> None:
        self._access_log = access_log

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` with request-id propagation and accounting for ``method``."""
        in_flight = method.in_flight
        path = method.path
        # grpc.aio ends a cancelled client's request stream as if it had finished; a
        # handler would then treat cut-off input as complete and the call look OK.
        guard_requests = method.arity in (Arity.STREAM_UNARY, Arity.STREAM_STREAM)
        plugin = method.plugin
        access_log = self._access_log

        async def observe(request: Any, context: Any) -> Any:
            metadata = received_metadata(context)
            request_id = incoming_request_id(metadata)
            token = request_id_var.set(request_id)
            # In-process calls made while serving this one inherit its principal and
            # deadline, and end with it (CurrentCall.end below). The stages below read
            # the metadata from it (context.invocation_metadata).
            current = CurrentCall(context, metadata)
            call_token = current_call_var.set(current)
            in_flight.enter()
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if guard_requests:
                    request = _until_cancelled(request, context, asyncio.current_task())
                result = await next(request, context)
                code = context.code() or grpc.StatusCode.OK
                if code is not grpc.StatusCode.OK and as_code(code) is not grpc.StatusCode.OK:
                    # Failed without raising (set_code): the trailers are not sent yet.
                    _trail_request_id(context, request_id)
                return result
            except asyncio.CancelledError:
                code = cancelled_code(context)
                if hasattr(context, "transport"):
                    # A deadline or a drain: the host's own transports send the status
                    # and trailers once the task is over (grpc core has already sent
                    # its own).
                    _trail_request_id(context, request_id)
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                # A handler's own abort(): grpc.aio has sent its status already, the
                # host's own transports have not (the error stage adds it to its own).
                if hasattr(context, "transport"):
                    _trail_request_id(context, request_id)
                raise
            finally:
                in_flight.leave()
                if access_log:
                    # Spelled as the metrics' grpc_code label, whatever the context held.
                    name = code_label(as_code(code))
                    _access.info(
                        "%s %s",
                        path,
                        name,
                        extra={
                            "method": path,
                            "plugin": plugin,
                            "code": name,
                            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                            "peer": context.peer(),
                            "principal": _subject(),
                        },
                    )
                current.end()
                current_call_var.reset(call_token)
                request_id_var.reset(token)

        return observe


async def _until_cancelled(
    requests: AsyncIterator[Any], context: Any, call_task: asyncio.Task[Any] | None
) -> AsyncIterator[Any]:
    try:
        async for request in requests:
            yield request
    except grpc.aio.BaseError:
        # A reader in a task of its own, between two reads when the client cancelled:
        # the call's task caught its cancel and answered, and the next read finds the
        # call finished. The input was cut off, not complete.
        if _cancelled_elsewhere(call_task):
            raise asyncio.CancelledError from None
        raise
    if hasattr(context, "transport"):
        return  # the host's own transports end a cut-off stream with CancelledError
    # grpc core ends the request stream and reports a client's cancel as two
    # completions, which can reach the loop apart. One more read is a batch through
    # the same completion queue, answered after the cancel already queued, which
    # grpc.aio turns into cancelling the call's task.
    try:
        await context.read()
    except grpc.aio.BaseError:
        # The call ended during this read: it answered or aborted (done, and the task
        # check below tells whether the client had cancelled), or the server stopped
        # under it (not done: cut off like a client's cancel).
        if not context.done():
            raise asyncio.CancelledError from None
    # grpc.aio cancels only the call's task; a reader in a task of its own hears of it
    # here (the call's task ends normally, still marked as cancelling).
    if _cancelled_elsewhere(call_task):
        raise asyncio.CancelledError


def _cancelled_elsewhere(call_task: asyncio.Task[Any] | None) -> bool:
    """Whether the call's task, not the one reading, was cancelled (the client's cancel)."""
    return (
        call_task is not None
        and call_task is not asyncio.current_task()
        and call_task.cancelling() > 0
    )


def _trail_request_id(context: Any, request_id: str) -> None:
    trailing = tuple(context.trailing_metadata() or ())
    if all(key != "x-request-id" for key, _ in trailing):
        context.set_trailing_metadata((*trailing, ("x-request-id", request_id)))


def _subject() -> str:
    principal = principal_var.get()
    return principal.subject if principal is not None else ANONYMOUS
