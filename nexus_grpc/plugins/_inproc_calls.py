"""The call objects of in-process calls: what a generated stub's method returns.

They behave as grpc.aio's: ``await`` a unary response; ``read()`` or ``async for`` a
stream of responses; a request iterator, or ``write()`` and ``done_writing()``, for a
stream of requests; ``code()``, ``details()``, metadata, ``cancel()``. Streamed messages
go between the two tasks through bounded pipes (:mod:`._inproc_pipe`), so a writer
waits for a slow reader.

The callee runs in a task of its own. The call ends — the task is cancelled, the status
is CANCELLED — when it is cancelled; when the task awaiting, reading or writing it is
cancelled; when the caller drops it (garbage collection, as grpc.aio does); when its
request iterator raises (as grpc.aio does); and when it carries the principal of the
call it was made in and that call ends. Running tasks are held here: the event loop
holds tasks weakly, and would destroy a pending one nobody else refers to.

A request iterator is the caller's code, so it runs in a task started where the call was
made, with the caller's identity — never inside the callee's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator
from typing import Any

import grpc

from nexus_grpc.logs import current_request_id
from nexus_grpc.pipeline.context import CallContext, CurrentCall, call_result
from nexus_grpc.plugins._inproc_pipe import END, ClosedError, Pipe

__all__ = [
    "Call",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "cancel_call",
]

_log = logging.getLogger("nexus.services")

_OK = grpc.StatusCode.OK
#: What ``read()`` returns after the last message (absent from grpc's type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

#: Callee tasks and request senders in progress (see the module docstring).
_running: set[asyncio.Task[Any]] = set()


def _hold(task: asyncio.Task[Any]) -> None:
    _running.add(task)
    task.add_done_callback(_running.discard)


def cancel_call(task: asyncio.Task[Any], context: CallContext, details: str) -> bool:
    """End the callee's ``task`` with CANCELLED; False when it had ended already."""
    if task.done():
        return False
    context.cancelled_by_client = True
    context.set_code(grpc.StatusCode.CANCELLED)
    context.set_details(details)
    task.cancel()
    return True


class Call:
    """What the four kinds of calls share: the callee's task, status, metadata, cancel.

    Nothing the callee's task holds refers back to the call object, so dropping it
    cancels the call (:meth:`__del__`).
    """

    #: Set by the kinds that stream requests / responses.
    streams_requests = False
    streams_responses = False

    def __init__(
        self, context: CallContext, path: str, copy_out: Callable[[Any], Any] | None = None
    ) -> None:
        self._context = context
        self._path = path
        self._task: asyncio.Task[Any] | None = None
        self._responses: Pipe | None = None
        self._requests: Pipe | None = None
        #: The caller's request iterator (None: requests come with ``write()``).
        self._source: Any = None
        self._copy_in: Callable[[Any], Any] = _unchanged
        if self.streams_responses:
            responses = self._responses = Pipe()
            copy = copy_out or _unchanged

            async def write(message: Any) -> None:
                # Copied when written, as grpc serializes it then: the handler may reuse it.
                await responses.put(copy(message))

            context._writer = write

    def _request(self, request: Any, copy_in: Callable[[Any], Any]) -> Any:
        """What the callee's handler gets: a copy of the request, or a stream of copies."""
        if not self.streams_requests:
            return copy_in(request)
        self._copy_in = copy_in
        self._source = request
        self._requests = Pipe()
        return self._requests.messages()

    def _begin(self, task: asyncio.Task[Any] | None, within: CurrentCall | None) -> None:
        """The callee runs in ``task`` (None: the call failed before it started) and,
        with ``within``, ends when that call does."""
        self._task = task
        if task is None:
            _ended(self._responses, self._requests, None, None)
            return
        _running.add(task)  # _ended discards it
        sender = None
        if self._source is not None:
            assert self._requests is not None
            # Started here, in the caller's task: the iterator runs as the caller.
            sender = asyncio.ensure_future(
                _send(self._source, self._requests, self._copy_in, task, self._context, self._path)
            )
            _hold(sender)
        task.add_done_callback(functools.partial(_ended, self._responses, self._requests, sender))
        if within is not None:
            stop = functools.partial(
                cancel_call, task, self._context, "the call it was made in ended"
            )
            undo = within.on_end(stop)
            task.add_done_callback(lambda _: undo())

    def __del__(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            # Dropped while running: nobody can read the outcome any more.
            with contextlib.suppress(RuntimeError):  # the event loop is closed already
                cancel_call(task, self._context, "cancelled upon garbage collection")

    async def _outcome(self) -> Any:
        """The handler's return value once the call ended; AioRpcError unless OK."""
        result = None
        if self._task is not None:
            try:
                result = await call_result(self._task, self._context)
            except asyncio.CancelledError:
                # Cancelled by cancel() or one of the rules above — or by the caller's
                # own cancellation, which this await passes on to the callee.
                if self._context.code() is None:
                    self._context.cancelled_by_client = True
                    self._context.set_code(grpc.StatusCode.CANCELLED)
                    self._context.set_details("cancelled by the caller")
                raise
            except Exception:
                # Not a status the pipeline set: a host bug, logged; the caller gets
                # what a gRPC server answers then.
                _log.exception("in-process call of %s failed", self._path)
                self._context.set_code(grpc.StatusCode.INTERNAL)
                self._context.set_details(f"internal error (request id {current_request_id()})")
        code = self._context.code() or _OK
        if code is not _OK:
            raise grpc.aio.AioRpcError(
                code,
                grpc.aio.Metadata(*(self._context.initial_metadata or ())),
                grpc.aio.Metadata(*self._context.trailing_metadata()),
                self._context.details() or "",
                f"in-process call of {self._path} ended with {code.name}",
            )
        return result

    async def _settled(self) -> None:
        """Wait for the end of the call, however it ended."""
        if self._task is not None and not self._task.done():
            await asyncio.wait((self._task,))
        # The task is done: this does not wait, and a CancelledError is the call's own.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await self._outcome()

    def cancel(self) -> bool:
        """Cancel the call; False when it had ended already."""
        if self._task is None:
            return False
        return cancel_call(self._task, self._context, "cancelled by the caller")

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return self._context.cancelled_by_client

    def done(self) -> bool:
        """Whether the call ended."""
        return self._task is None or self._task.done()

    def time_remaining(self) -> float | None:
        """Seconds until the deadline, None without one."""
        return self._context.time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the call ended."""
        if self._task is None:
            asyncio.get_running_loop().call_soon(callback, self)
        else:
            self._task.add_done_callback(lambda _: callback(self))

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """Metadata the callee sent first (there at its first message at the latest)."""
        if self._context.initial_metadata is None:
            if self._responses is not None:
                await self._responses.wait_readable()
            else:
                await self._settled()
        return grpc.aio.Metadata(*(self._context.initial_metadata or ()))

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        """Metadata the callee sent last; waits for the end of the call."""
        await self._settled()
        return grpc.aio.Metadata(*self._context.trailing_metadata())

    async def code(self) -> grpc.StatusCode:
        """The status code; waits for the end of the call."""
        await self._settled()
        return self._context.code() or _OK

    async def details(self) -> str:
        """The status message; waits for the end of the call."""
        await self._settled()
        return self._context.details() or ""

    async def wait_for_connection(self) -> None:
        """Connected at once: there is no connection."""


class _Awaits(Call):
    """A unary response: ``await call``."""

    def __await__(self) -> Generator[Any, None, Any]:
        return self._outcome().__await__()


class _Reads(Call):
    """A stream of responses: ``read()`` and ``async for``."""

    streams_responses = True

    async def read(self) -> Any:
        """The next response, ``grpc.aio.EOF`` after the last; AioRpcError on failure."""
        assert self._responses is not None
        try:
            item = await self._responses.get()
        except asyncio.CancelledError:
            # A reader cancelled mid-read gives up on the call, as with grpc.aio.
            self.cancel()
            raise
        if item is END:
            await self._outcome()
            return _EOF
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is _EOF:
                return
            yield message


class _Writes(Call):
    """A stream of requests: an iterator, or ``write()`` and ``done_writing()``."""

    streams_requests = True

    async def write(self, request: Any) -> None:
        """Send one request (calls made without a request iterator)."""
        if self._source is not None:
            raise grpc.aio.UsageError("write() is for calls made without a request iterator")
        if self.done():
            raise asyncio.InvalidStateError("the call is over")
        pipe = self._requests
        assert pipe is not None
        if pipe.closed:
            raise asyncio.InvalidStateError("done_writing() was called")
        try:
            await pipe.put(self._copy_in(request))
        except ClosedError:
            await self._outcome()
            raise asyncio.InvalidStateError("the call ended before the request was read") from None
        except asyncio.CancelledError:
            # A writer cancelled while it waits for room gives up on the call: the callee
            # must not wait for the rest for ever (grpc.aio cancels too).
            self.cancel()
            raise

    async def done_writing(self) -> None:
        """No more requests."""
        if self._source is not None:
            raise grpc.aio.UsageError("done_writing() is for calls made without a request iterator")
        if self._requests is not None:
            self._requests.close()


class UnaryUnaryCall(_Awaits, grpc.aio.UnaryUnaryCall[Any, Any]):
    """The call of a unary method."""


class UnaryStreamCall(_Reads, grpc.aio.UnaryStreamCall[Any, Any]):
    """The call of a server-streaming method."""


class StreamUnaryCall(_Writes, _Awaits, grpc.aio.StreamUnaryCall[Any, Any]):
    """The call of a client-streaming method."""


class StreamStreamCall(_Writes, _Reads, grpc.aio.StreamStreamCall[Any, Any]):
    """The call of a bidirectional-streaming method."""


async def _send(
    source: Any,
    pipe: Pipe,
    copy_in: Callable[[Any], Any],
    task: asyncio.Task[Any],
    context: CallContext,
    path: str,
) -> None:
    """Feed the caller's request iterator to the callee; cancel the call if it raises."""
    try:
        if isinstance(source, AsyncIterable):
            async for request in source:
                await pipe.put(copy_in(request))
        else:
            for request in source:
                await pipe.put(copy_in(request))
    except ClosedError:
        return  # the callee ended first
    except Exception:
        # The caller's bug, logged as the caller's; grpc.aio cancels the call too.
        _log.warning(
            "the request iterator of an in-process call of %s raised; the call is cancelled",
            path,
            exc_info=True,
        )
        cancel_call(task, context, "the request iterator raised")
        return
    pipe.close()


def _ended(
    responses: Pipe | None,
    requests: Pipe | None,
    sender: asyncio.Task[Any] | None,
    task: asyncio.Task[Any] | None,
) -> None:
    """The callee ended: the reader sees the end, writers and the sender stop."""
    if task is not None:
        _running.discard(task)
    for pipe in (responses, requests):
        if pipe is not None:
            pipe.close()
    if sender is not None:
        sender.cancel()


def _unchanged(message: Any) -> Any:
    return message
