"""Open streams: a cap per caller and in total, and ending them all at shutdown.

A streaming call holds a task, a queue and a connection's stream for as long as the
client likes, so streams are bounded apart from calls: per caller (the principal, or
the peer's address when anonymous) and for the whole host, on every transport alike
(gRPC, REST NDJSON/SSE, gRPC-Web and in-process calls all run this stage). Unary
calls are untouched: the stage binds to streaming methods only and costs them nothing.

The stage also knows every stream open now. When the host starts to drain,
:meth:`StreamStage.end_all` ends each of them with UNAVAILABLE "server shutting down",
delivered in band as any other status (gRPC trailers, a last NDJSON/SSE/JSON-array error
item, a gRPC-Web trailer frame), so clients reconnect to another instance at once instead
of hanging until the grace period runs out and their stream is cut.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from nexus_grpc.errors import ShuttingDownError, StatusError
from nexus_grpc.pipeline.ending import end_tasks
from nexus_grpc.ratelimit import caller_key
from nexus_grpc.routing import Arity, CallHandler, MethodInfo

__all__ = ["StreamStage"]

#: What a client refused for too many streams is told to wait before trying again.
_RETRY_SECONDS = 1


def _too_many(scope: str, limit: int) -> StatusError:
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"too many open streams {scope} (limit {limit}); close one before opening another",
        reason="TOO_MANY_STREAMS",
        metadata={"limit": str(limit), "retry_after": str(_RETRY_SECONDS)},
        details=(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=_RETRY_SECONDS)),),
    )


class StreamStage:
    """Caps open streams per caller and in total; ends them all when the host drains.

    Bind it after the auth stage, so the caller is known. ``max_streams`` or
    ``max_per_caller`` 0 means no limit of that kind; the registry of open streams is
    kept either way, so shutdown always ends them.
    """

    def __init__(self, max_streams: int, max_per_caller: int) -> None:
        if max_streams < 0 or max_per_caller < 0:
            raise ValueError("stream limits must be >= 0 (0 for no limit)")
        self._max = max_streams
        self._max_per_caller = max_per_caller
        #: Each open stream's task and the caller it counts against.
        self._open: dict[asyncio.Task[Any], str] = {}
        self._per_caller: dict[str, int] = {}
        #: Streams :meth:`end_all` cancelled: their cancellation becomes UNAVAILABLE.
        self._ending: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def open(self) -> int:
        """Streams open now."""
        return len(self._open)

    def open_for(self, caller: str) -> int:
        """Streams ``caller`` (a :func:`~nexus_grpc.ratelimit.caller_key`) has open now."""
        return self._per_caller.get(caller, 0)

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap streaming methods' handlers; return unary ones untouched."""
        if method.arity is Arity.UNARY_UNARY:
            return next
        limit = self._max
        per_caller = self._max_per_caller
        open_ = self._open
        counts = self._per_caller
        ending = self._ending

        async def streamed(request: Any, context: Any) -> Any:
            if self._closing:
                raise ShuttingDownError()
            key = caller_key(context)
            held = counts.get(key, 0)
            # One event loop: nothing runs between these checks and the increments.
            if per_caller and held >= per_caller:
                raise _too_many("for this caller", per_caller)
            if limit and len(open_) >= limit:
                raise _too_many("on this server", limit)
            task = asyncio.current_task()
            assert task is not None  # a pipeline handler always runs in a task
            open_[task] = key
            counts[key] = held + 1
            try:
                result = await next(request, context)
            except asyncio.CancelledError:
                if task not in ending:
                    raise
                # Our own cancellation: the stream ends with a status, not as cancelled.
                task.uncancel()
                raise ShuttingDownError() from None
            finally:
                del open_[task]
                left = counts[key] - 1
                if left:
                    counts[key] = left
                else:
                    del counts[key]
            if task in ending:
                # The handler swallowed the cancellation; the client must still learn
                # that this server is going away rather than see a normal end.
                ending.discard(task)
                task.uncancel()
                raise ShuttingDownError()
            return result

        return streamed

    def end_all(self) -> int:
        """End every open stream with UNAVAILABLE and refuse new ones; how many were open.

        The streams end as soon as their tasks run next (their status goes out in band
        on their own transport); the caller need not wait for them.
        """
        self._closing = True
        return end_tasks(self._open, self._ending)
