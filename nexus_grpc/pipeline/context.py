"""The servicer context of calls the host runs itself, and running them.

Handlers and pipeline stages are written against grpc.aio's ``ServicerContext``. Calls
that do not arrive over gRPC — REST and gRPC-Web (:mod:`nexus_grpc.gateway`), one plugin
calling another in-process (:mod:`nexus_grpc.plugins.services`) — get a
:class:`CallContext` with the same methods and behaviour (``abort`` raises
``grpc.aio.AbortError``, ``write`` sends a streamed response), and run through the
route's pipeline handler with :func:`start_call` and :func:`call_result`, which apply
the deadline as a grpc.aio server does. A plugin cannot tell which transport brought a
call.

:data:`current_call_var` names the call the current task is serving (the observe stage
sets it and ends it), so an in-process call made while serving one can carry its
principal and deadline, and end with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

import grpc

from nexus_grpc.bounded import MESSAGE_LIMIT, clip
from nexus_grpc.routing import CallHandler

__all__ = [
    "CallContext",
    "CurrentCall",
    "Metadata",
    "call_result",
    "current_call_var",
    "invocation_metadata",
    "note_lookup_metadata",
    "received_metadata",
    "start_call",
]

Metadata = tuple[tuple[str, str | bytes], ...]


class CallContext:
    """``grpc.aio.ServicerContext`` for calls the host runs itself (REST, gRPC-Web, in-process)."""

    def __init__(
        self,
        *,
        transport: str,
        metadata: Metadata,
        peer: str,
        deadline: float | None,
        writer: Callable[[Any], Awaitable[None]] | None = None,
        auth_context: Mapping[str, Sequence[bytes]] | None = None,
    ) -> None:
        #: "rest", "grpc-web" or "inproc": pipeline stages label metrics with it.
        self.transport = transport
        self._auth_context = auth_context
        self._metadata = metadata
        self._peer = peer
        #: ``time.monotonic()`` value of the deadline, None without one.
        self._deadline = deadline
        self._writer = writer
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: Metadata = ()
        self.initial_metadata: Metadata | None = None
        self.cancelled_by_client = False
        #: True once the deadline passed and the call was cancelled for it.
        self.expired = False

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
        # A handler's own abort() may quote the request: bounded like every status.
        self._details = clip(details, MESSAGE_LIMIT)
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
        self._details = clip(details, MESSAGE_LIMIT)

    def details(self) -> str | None:
        """The status message set so far."""
        return self._details

    def time_remaining(self) -> float | None:
        """Seconds until the deadline, None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        """The client address, "ipv4:1.2.3.4:5678" as grpc reports it ("inproc:<plugin>")."""
        return self._peer

    def cancelled(self) -> bool:
        """True once the client went away."""
        return self.cancelled_by_client

    def done(self) -> bool:
        """True once the client went away (the call is over)."""
        return self.cancelled_by_client

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        """The connection's TLS properties as grpc names them (nexus_grpc.tls.identity);
        empty over plaintext and in-process."""
        return self._auth_context or {}

    def set_compression(self, compression: Any) -> None:
        """Accepted and ignored: HTTP compression is the HTTP server's business."""

    def disable_next_message_compression(self) -> None:
        """Accepted and ignored."""

    async def write(self, message: Any) -> None:
        """Send one message of a streamed response."""
        if self._writer is None:
            raise RuntimeError("write() is only for methods that stream responses")
        await self._writer(message)


class CurrentCall:
    """The call a task is serving; ``active`` turns False when the call ends.

    Tasks a handler starts inherit the variable holding it and may outlive the call;
    they find ``active`` False then. Work that must not outlive the call (an in-process
    call carrying its principal) registers with :meth:`on_end` and is stopped then.
    """

    __slots__ = ("_on_end", "active", "context", "metadata")

    def __init__(self, context: Any, metadata: Any = None) -> None:
        self.context = context
        #: ``context.invocation_metadata()`` when the call started, if it was read then:
        #: grpc.aio builds the tuple anew on each call of it (~1-2 µs).
        self.metadata = metadata
        self.active = True
        self._on_end: set[Callable[[], object]] | None = None

    def on_end(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` when the call ends (at once if it has); returns the undo."""
        if not self.active:
            callback()
            return _nothing
        if self._on_end is None:
            self._on_end = set()
        callbacks = self._on_end
        callbacks.add(callback)
        return lambda: callbacks.discard(callback)

    def end(self) -> None:
        """The call is over: ``active`` turns False and the :meth:`on_end` callbacks run."""
        self.active = False
        if self._on_end is None:
            return  # nearly always: no in-process call outlived its parent's
        callbacks, self._on_end = self._on_end, None
        for callback in callbacks:
            callback()


def invocation_metadata(context: Any) -> Any:
    """``context.invocation_metadata()``, as the observe stage read it for the call
    being served when ``context`` is that call's."""
    current = current_call_var.get()
    if current is not None and current.context is context and current.metadata is not None:
        return current.metadata
    return context.invocation_metadata()


def note_lookup_metadata(metadata: Any) -> None:
    """Keep the metadata grpc.aio decoded to look up the call the current task serves.

    grpc.aio builds the metadata tuple anew on each ``invocation_metadata()``, ~10k
    instructions per build (a named tuple per entry), an eighth of the stages' own work
    on a call. It builds one to look the call up (``HandlerCallDetails``), in the task
    that then runs the call's handler, so the dispatcher notes it here and
    :func:`received_metadata` hands it to the stages instead of a second build.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: grpcio's threaded server, nothing to keep
        return
    if task is not None:
        # A weak reference: the task holds its context, which holds this; a strong one
        # would keep every call's task (and its token) until the cyclic collector ran.
        _looked_up_var.set((weakref.ref(task), metadata))


def received_metadata(context: Any) -> Any:
    """``context.invocation_metadata()`` of the call starting in the current task.

    The metadata noted at lookup (:func:`note_lookup_metadata`) when it was noted by
    this very task for a grpc.aio call; grpc.aio serves each call in a task of its own,
    so it belongs to this call and to no other. The host's own contexts (REST,
    gRPC-Web, in-process: they have a ``transport``) run in tasks of their own too,
    and are asked.
    """
    noted = _looked_up_var.get()
    if (
        noted is not None
        and noted[0]() is asyncio.current_task()
        and not hasattr(context, "transport")
    ):
        return noted[1]
    return context.invocation_metadata()


def _nothing() -> None:
    return None


#: The metadata grpc.aio decoded to look up the current task's call, and that task.
_looked_up_var: contextvars.ContextVar[
    tuple[weakref.ReferenceType[asyncio.Task[Any]], Any] | None
] = contextvars.ContextVar("nexus_looked_up_metadata", default=None)


#: The call the current task is serving (set by the observe stage); None outside calls.
current_call_var: contextvars.ContextVar[CurrentCall | None] = contextvars.ContextVar(
    "nexus_current_call", default=None
)


def start_call(call: CallHandler, request: Any, context: CallContext) -> asyncio.Task[Any]:
    """Run a route's pipeline handler in a task of its own, as grpc.aio serves a call.

    When ``context``'s deadline passes first, the call's code becomes DEADLINE_EXCEEDED
    and the task is cancelled — what a grpc.aio server does to a handler — so the
    pipeline's stages see the cancellation at the deadline. Wait for the outcome with
    :func:`call_result`.
    """
    task = asyncio.ensure_future(call(request, context))
    remaining = context.time_remaining()
    if remaining is None:
        return task
    if remaining <= 0:
        # Already expired (Grpc-Timeout: 0S): cancelled before its first step, the
        # handler never runs, as grpc core never starts a call past its deadline.
        _expire(task, context)
        return task
    timer = asyncio.get_running_loop().call_later(remaining, _expire, task, context)
    task.add_done_callback(lambda _: timer.cancel())
    return task


def _expire(task: asyncio.Task[Any], context: CallContext) -> None:
    if task.done():
        return
    context.expired = True
    context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
    context.set_details("deadline exceeded")
    task.cancel()


async def call_result(task: asyncio.Task[Any], context: CallContext) -> Any:
    """The return value of a call :func:`start_call` started; None when it failed.

    The status is ``context.code()`` (None or OK: success) and ``context.details()``:
    an error the pipeline turned into a status, or DEADLINE_EXCEEDED. A call cancelled
    otherwise raises ``asyncio.CancelledError``; cancelling the waiting task cancels
    the call.
    """
    try:
        return await task
    except grpc.aio.AbortError:
        return None
    except asyncio.CancelledError:
        waiter = asyncio.current_task()
        if context.expired and task.cancelled() and (waiter is None or not waiter.cancelling()):
            return None
        raise
