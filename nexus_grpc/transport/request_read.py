"""A bound on how long a native gRPC call may take to send its request message.

grpc.aio enters a unary-request handler only once the request message has arrived, so
a client that opens a call without a deadline and never sends the message (or sends
half of it) holds the call, its task and its stream forever; no pipeline stage runs
yet. :func:`read_bounded` serves such a method with grpcio's stream-request arity
instead and reads the one message itself, watched by a :class:`ReadWatch` when the
client set no deadline (grpc core already ends the call at the client's deadline). The
pipeline still receives a single request message, as for any unary-request call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

__all__ = ["ReadWatch", "read_bounded"]

# What ServicerContext.read() returns at the end of the stream (missing from grpc-stubs).
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


class ReadWatch:
    """Cancels the reads that outlive ``timeout`` seconds, with one timer for all calls.

    A timer per call (``asyncio.timeout``) costs ~10 µs on our machines, the whole
    pipeline's budget; registering a read here is two dict operations. Reads are swept
    every tenth of the timeout, so one ends within 1.1 times it.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tick = timeout / 10
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        #: Tasks whose read this watch cancelled (and which must answer for it).
        self.expired: set[asyncio.Task[Any]] = set()

    def start(self, task: asyncio.Task[Any]) -> None:
        """Watch ``task``'s read from now."""
        self._reading[task] = time.monotonic() + self.timeout
        if self._sweep_handle is None:
            self._sweep_handle = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def stop(self, task: asyncio.Task[Any]) -> None:
        """``task``'s read is over."""
        self._reading.pop(task, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        late = [task for task, end in self._reading.items() if end <= now]
        for task in late:
            del self._reading[task]
            self.expired.add(task)
            task.cancel()
        self._sweep_handle = (
            asyncio.get_running_loop().call_later(self._tick, self._sweep)
            if self._reading
            else None
        )


def read_bounded(
    handler: grpc.RpcMethodHandler[Any, Any], watch: ReadWatch
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` itself for stream-request methods, else one whose read ``watch`` bounds."""
    if handler.request_streaming:
        return handler
    # The pipeline's handlers are coroutine functions; grpc-stubs types them as sync.
    call: Callable[[Any, Any], Awaitable[Any]]
    if handler.response_streaming:
        call = handler.unary_stream  # type: ignore[assignment]
        factory: Any = grpc.stream_stream_rpc_method_handler
    else:
        call = handler.unary_unary  # type: ignore[assignment]
        factory = grpc.stream_unary_rpc_method_handler
    message = f"the request message did not arrive within {watch.timeout:g}s"

    async def read_then_call(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= watch.timeout:
            # grpc core ends the call at the client's deadline, sooner than the watch.
            request = await context.read()
        else:
            task = asyncio.current_task()
            assert task is not None
            watch.start(task)
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if task not in watch.expired:
                    raise
                watch.expired.discard(task)
                task.uncancel()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
            finally:
                watch.stop(task)
        if request is _EOF:
            # What grpc-java answers a unary call that half-closes without a message.
            await context.abort(grpc.StatusCode.INTERNAL, "the call sent no request message")
        return await call(request, context)

    return factory(  # type: ignore[no-any-return]
        read_then_call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
