"""Published services: a plugin calls another plugin's gRPC service in-process.

A plugin lists the services it calls under ``requires`` in its manifest and gets
clients of them from ``ctx.services``::

    inventory = ctx.services.client(inventory_pb2_grpc.InventoryServiceStub)
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1"))

The stub is the generated one, over an :class:`InProcessChannel`. A call is looked up
in the current routing table and run through the route's pipeline handler — the one
gRPC, REST and gRPC-Web calls run — with a
:class:`~nexus_grpc.pipeline.context.CallContext` whose transport is ``inproc`` and
whose peer is ``inproc:<calling plugin>``: the callee's policy, rate limits, validation,
metrics, audit and access log apply. Failures come back as ``grpc.aio.AioRpcError``
with the code, message and trailing metadata (``google.rpc`` details included) a
network client would get. Calling a service the manifest does not require is refused
when the stub is made (:class:`UndeclaredServiceError`).

Messages are not serialized: requests and responses are copied with ``CopyFrom``
(about half the cost of serializing and parsing), when they are sent, so neither side
sees the other change them later. A message of another class than the method's is
serialized and parsed, as over the network.

Identity, deadline and request id:

- Inside a call (its handler, and tasks the handler started while the call lasts) an
  in-process call carries that call's principal, so the callee sees the same user, and
  its deadline (``timeout=`` can shorten it, not extend it); a deadline already passed
  fails with DEADLINE_EXCEEDED before anything is called. An anonymous caller stays
  anonymous: the plugin's identity never stands in for it.
- Outside any call (start and stop hooks, event handlers, background tasks) the call
  carries the plugin's own identity: subject ``plugin:<name>``, role ``plugin`` and
  exactly the grants its manifest lists under ``permissions`` — none by default. The
  callee's policy judges it like any user.
- ``as_plugin=True`` makes a client that always uses the plugin's identity (with the
  deadline of the call it is made in): work the plugin does on its own authority, such
  as reserving stock for a customer who may not touch the inventory. The audit and the
  access log name ``plugin:<name>``.
- ``authorization`` metadata passed to a call replaces both: the call is authenticated
  with that token, as over the network.
- The request id of the current call (an event's correlation id in event handlers) is
  sent as ``x-request-id``, so the callee's log lines carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
)
from types import TracebackType
from typing import Any, TypeVar

import grpc

from nexus_grpc.auth.principal import Grant, Principal, principal_var
from nexus_grpc.logs import current_request_id
from nexus_grpc.pipeline.auth import INPROC_PRINCIPAL
from nexus_grpc.pipeline.context import CallContext, call_result, current_call_var, start_call
from nexus_grpc.routing import Arity, Route, Router

__all__ = [
    "INPROC",
    "PLUGIN_ROLE",
    "InProcessChannel",
    "Services",
    "UndeclaredServiceError",
    "outside_calls",
    "plugin_principal",
]

_log = logging.getLogger("nexus.services")

#: The ``transport`` of in-process calls (metrics label, audit records).
INPROC = "inproc"
#: Role of every plugin's own identity.
PLUGIN_ROLE = "plugin"

T = TypeVar("T")
_OK = grpc.StatusCode.OK
#: What ``read()`` returns after the last message (absent from grpc's type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
#: Streamed messages waiting for the reader before the writer waits too.
_PIPE_LIMIT = 16


class UndeclaredServiceError(LookupError):
    """A plugin asked for a client of a service its manifest does not require."""


def plugin_principal(plugin: str, permissions: Iterable[str] = ()) -> Principal:
    """The identity of ``plugin`` itself: ``plugin:<name>`` with ``permissions`` only."""
    return Principal(
        subject=f"plugin:{plugin}",
        roles=(PLUGIN_ROLE,),
        grants=frozenset(Grant.parse(permission) for permission in permissions),
    )


def outside_calls(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``handler`` run as outside any call, whatever task runs it (event handlers).

    A task inherits the call it was started in; an event delivered by such a task must
    still not act as the user whose call published it.
    """

    async def outside(*args: Any, **kwargs: Any) -> T:
        token = current_call_var.set(None)
        try:
            return await handler(*args, **kwargs)
        finally:
            current_call_var.reset(token)

    return outside


class Services:
    """``ctx.services``: clients of the services the plugin's manifest requires."""

    def __init__(
        self,
        router: Router,
        plugin: str,
        required: Iterable[str],
        *,
        permissions: Iterable[str] = (),
        source: str = "",
    ) -> None:
        self._router = router
        self._plugin = plugin
        self._required = frozenset(required)
        self._source = source
        #: The plugin's own identity (calls made outside any call, and ``as_plugin``).
        self.identity = plugin_principal(plugin, permissions)

    @property
    def required(self) -> frozenset[str]:
        """The services the manifest requires: the only ones a client may call."""
        return self._required

    def channel(self, *, as_plugin: bool = False) -> InProcessChannel:
        """A channel for generated stubs; ``as_plugin`` always calls as the plugin itself."""
        return InProcessChannel(self, as_plugin=as_plugin)

    def client(self, stub: Callable[[InProcessChannel], T], *, as_plugin: bool = False) -> T:
        """``stub(channel)``: e.g. ``ctx.services.client(InventoryServiceStub)``."""
        return stub(self.channel(as_plugin=as_plugin))

    def _check(self, path: str) -> str:
        service, slash, method = path.removeprefix("/").partition("/")
        if not path.startswith("/") or not slash or not service or not method:
            raise ValueError(f"{path!r} is not a method path such as '/pkg.v1.Service/Method'")
        if service not in self._required:
            where = f" in {self._source}" if self._source else ""
            raise UndeclaredServiceError(
                f"plugin {self._plugin!r} calls {service}, which its manifest does not "
                f"require; add it to `requires`{where}"
            )
        return service


class InProcessChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` for generated stubs whose calls never leave the process."""

    def __init__(self, services: Services, *, as_plugin: bool = False) -> None:
        self._services = services
        self._as_plugin = as_plugin

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _UnaryUnary:
        """A callable for a unary method (what generated stubs ask for)."""
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _UnaryStream:
        """A callable for a server-streaming method."""
        return _UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _StreamUnary:
        """A callable for a client-streaming method."""
        return _StreamUnary(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> _StreamStream:
        """A callable for a bidirectional-streaming method."""
        return _StreamStream(self, method, request_serializer, response_deserializer)

    async def close(self, grace: float | None = None) -> None:
        """Nothing to close: there is no connection."""

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """Always READY."""
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """The state never changes: waits forever, as for a connection that stays up."""
        await asyncio.Event().wait()

    async def channel_ready(self) -> None:
        """Ready at once."""

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _context(self, timeout: float | None, metadata: Any) -> tuple[_InProcessContext, bool]:
        """The callee's context: identity, deadline, request id. True if already expired."""
        current = current_call_var.get()
        if current is not None and not current.active:
            current = None  # a task that outlived the call it was started in
        remaining = current.context.time_remaining() if current is not None else None
        if timeout is not None:
            remaining = timeout if remaining is None else min(remaining, timeout)
        sent = [(str(key), value) for key, value in metadata or ()]
        keys = {key for key, _ in sent}
        if "x-request-id" not in keys:
            request_id = current_request_id()
            if request_id:
                sent.append(("x-request-id", request_id))
        principal: Principal | None
        if "authorization" in keys:
            principal = None  # authenticated by the token, as over the network
        elif self._as_plugin or current is None:
            principal = self._services.identity
        else:
            principal = principal_var.get()  # None: the caller is anonymous, and stays so
        context = _InProcessContext(
            principal=principal,
            metadata=tuple(sent),
            peer=f"inproc:{self._services._plugin}",
            deadline=time.monotonic() + remaining if remaining is not None else None,
        )
        return context, remaining is not None and remaining <= 0


class _InProcessContext(CallContext):
    """The callee's context; the auth stage takes the caller's principal from it."""

    def __init__(
        self,
        *,
        principal: Principal | None,
        metadata: tuple[tuple[str, str | bytes], ...],
        peer: str,
        deadline: float | None,
    ) -> None:
        super().__init__(transport=INPROC, metadata=metadata, peer=peer, deadline=deadline)
        setattr(self, INPROC_PRINCIPAL, principal)


# Message copies --------------------------------------------------------------------------


def _copier(
    parse: Callable[[bytes], Any] | None, serialize: Callable[[Any], bytes] | None
) -> Callable[[Any], Any]:
    """Copies a message into the class ``parse`` (a generated ``FromString``) belongs to."""
    # FromString is bound to its message class: the fast path needs no descriptor lookup.
    target = getattr(parse, "__self__", None)

    def copy(message: Any) -> Any:
        if type(message) is target and target is not None:
            clone = target()
            clone.CopyFrom(message)
            return clone
        # Another class, or raw bytes: what a network hop would do.
        if serialize is not None:
            data = serialize(message)
        elif isinstance(message, bytes):
            data = message
        else:
            data = message.SerializeToString()
        return parse(data) if parse is not None else data

    return copy


# Calls -----------------------------------------------------------------------------------


class _MultiCallable:
    """One method of a stub: checks the requirement once, finds the route per call."""

    arity: Arity

    def __init__(
        self,
        channel: InProcessChannel,
        path: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        channel._services._check(path)
        self._channel = channel
        self._path = path
        self._request_serializer = request_serializer
        self._response_deserializer = response_deserializer
        self._bound: tuple[Route, Callable[[Any], Any], Callable[[Any], Any]] | None = None

    def _new_call(self, context: _InProcessContext, copy_out: Callable[[Any], Any]) -> _Call:
        raise NotImplementedError

    def _start(self, request: Any, timeout: float | None, metadata: Any) -> Any:
        """Start the call: ``request`` is a message or a request iterator (or None)."""
        context, expired = self._channel._context(timeout, metadata)
        route = self._channel._services._router.lookup(self._path)
        if route is None:
            return self._failed(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"{self._path} is not served now: the plugin serving it stopped or failed",
            )
        if route.info.arity is not self.arity:
            return self._failed(
                context,
                grpc.StatusCode.UNIMPLEMENTED,
                f"{self._path} is {route.info.arity.value}, called as {self.arity.value}; "
                "regenerate the stubs",
            )
        if expired:
            return self._failed(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call"
            )
        copy_in, copy_out = self._copiers(route)
        call = self._new_call(context, copy_out)
        try:
            message = call._request(request, copy_in)
        except Exception as error:
            return self._failed(
                context, grpc.StatusCode.INTERNAL, f"the request could not be copied: {error}"
            )
        handler = route.call

        async def serve(request: Any, context: Any) -> Any:
            response = await handler(request, context)
            # Copied as the handler returns it, before its code can touch it again.
            return copy_out(response) if response is not None else None

        call._begin(start_call(serve, message, context))
        return call

    def _copiers(self, route: Route) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        bound = self._bound
        if bound is None or bound[0] is not route:
            handler = route.grpc_handler
            bound = self._bound = (
                route,
                _copier(handler.request_deserializer, self._request_serializer),
                _copier(self._response_deserializer, handler.response_serializer),
            )
        return bound[1], bound[2]

    def _failed(self, context: _InProcessContext, code: grpc.StatusCode, details: str) -> _Call:
        context.set_code(code)
        context.set_details(details)
        call = self._new_call(context, _unchanged)
        call._begin(None)
        return call


def _unchanged(message: Any) -> Any:
    return message


class _Call:
    """What all four call kinds share: status, metadata, cancellation."""

    def __init__(self, context: _InProcessContext, path: str) -> None:
        self._context = context
        self._path = path
        self._task: asyncio.Task[Any] | None = None
        #: Streamed responses (callee to caller) and requests (caller to callee).
        self._responses: _Pipe | None = None
        self._requests: _Pipe | None = None

    def _request(self, request: Any, copy_in: Callable[[Any], Any]) -> Any:
        """What the handler gets: a copy of the request."""
        return copy_in(request)

    def _begin(self, task: asyncio.Task[Any] | None) -> None:
        self._task = task
        if task is not None:
            task.add_done_callback(self._ended)
        else:
            self._ended(None)

    def _ended(self, task: object) -> None:
        for pipe in (self._responses, self._requests):
            if pipe is not None:
                pipe.close()

    async def _outcome(self) -> Any:
        """The handler's return value once the call ended; AioRpcError unless OK."""
        result = None
        if self._task is not None:
            try:
                result = await call_result(self._task, self._context)
            except asyncio.CancelledError:
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
        if self._task is None or self._task.done():
            return False
        self._context.cancelled_by_client = True
        self._context.set_code(grpc.StatusCode.CANCELLED)
        self._context.set_details("cancelled by the caller")
        self._task.cancel()
        return True

    def cancelled(self) -> bool:
        """Whether the caller cancelled the call."""
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


class _ResponseStream(_Call):
    """Reading a stream of responses: ``read()`` and ``async for``."""

    def __init__(
        self, context: _InProcessContext, path: str, copy_out: Callable[[Any], Any]
    ) -> None:
        super().__init__(context, path)
        pipe = self._responses = _Pipe()

        async def write(message: Any) -> None:
            # Copied when written, as grpc serializes it then: the handler may reuse it.
            await pipe.put(copy_out(message))

        context._writer = write

    async def read(self) -> Any:
        """The next response, ``grpc.aio.EOF`` after the last; AioRpcError on failure."""
        assert self._responses is not None
        try:
            item = await self._responses.get()
        except asyncio.CancelledError:
            # A reader cancelled mid-read gives up on the call, as with grpc.aio.
            self.cancel()
            raise
        if item is _END:
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


class _RequestStream(_Call):
    """Sending a stream of requests: an iterator, or ``write()`` and ``done_writing()``."""

    def _request(self, request: Any, copy_in: Callable[[Any], Any]) -> Any:
        self._copy_in = copy_in
        if request is None:
            pipe = self._requests = _Pipe()
            return pipe.messages()
        return _copied(request, copy_in)

    async def write(self, request: Any) -> None:
        """Send one request (calls made without a request iterator)."""
        if self.done():
            await self._outcome()
            raise asyncio.InvalidStateError("the call is over")
        pipe = self._requests
        if pipe is None:
            raise grpc.aio.UsageError("write() is for calls made without a request iterator")
        if pipe.closed:
            raise asyncio.InvalidStateError("done_writing() was called")
        try:
            await pipe.put(self._copy_in(request))
        except _ClosedError:
            await self._outcome()
            raise asyncio.InvalidStateError("the call ended before the request was read") from None

    async def done_writing(self) -> None:
        """No more requests."""
        if self._requests is not None:
            self._requests.close()
        elif not self.done():
            raise grpc.aio.UsageError("done_writing() is for calls made without a request iterator")


async def _copied(source: Any, copy_in: Callable[[Any], Any]) -> AsyncIterator[Any]:
    if isinstance(source, AsyncIterable):
        async for request in source:
            yield copy_in(request)
    else:
        for request in source:
            yield copy_in(request)


class _UnaryUnaryCall(_Call, grpc.aio.UnaryUnaryCall[Any, Any]):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._outcome().__await__()


class _UnaryStreamCall(_ResponseStream, grpc.aio.UnaryStreamCall[Any, Any]):
    pass


class _StreamUnaryCall(_RequestStream, grpc.aio.StreamUnaryCall[Any, Any]):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._outcome().__await__()


class _StreamStreamCall(_RequestStream, _ResponseStream, grpc.aio.StreamStreamCall[Any, Any]):
    pass


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    arity = Arity.UNARY_UNARY

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _UnaryUnaryCall:
        call: _UnaryUnaryCall = self._start(request, timeout, metadata)
        return call

    def _new_call(self, context: _InProcessContext, copy_out: Callable[[Any], Any]) -> _Call:
        return _UnaryUnaryCall(context, self._path)


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    arity = Arity.UNARY_STREAM

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _UnaryStreamCall:
        call: _UnaryStreamCall = self._start(request, timeout, metadata)
        return call

    def _new_call(self, context: _InProcessContext, copy_out: Callable[[Any], Any]) -> _Call:
        return _UnaryStreamCall(context, self._path, copy_out)


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    arity = Arity.STREAM_UNARY

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _StreamUnaryCall:
        call: _StreamUnaryCall = self._start(request_iterator, timeout, metadata)
        return call

    def _new_call(self, context: _InProcessContext, copy_out: Callable[[Any], Any]) -> _Call:
        return _StreamUnaryCall(context, self._path)


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    arity = Arity.STREAM_STREAM

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _StreamStreamCall:
        call: _StreamStreamCall = self._start(request_iterator, timeout, metadata)
        return call

    def _new_call(self, context: _InProcessContext, copy_out: Callable[[Any], Any]) -> _Call:
        return _StreamStreamCall(context, self._path, copy_out)


# Streams of messages between the two tasks ------------------------------------------------


class _End:
    """Marks the end of a pipe."""


_END = _End()


class _ClosedError(Exception):
    """The pipe was closed while a writer waited."""


class _Pipe:
    """Messages from one task to another; a writer waits once ``_PIPE_LIMIT`` are queued."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self.closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, item: Any) -> None:
        while len(self._items) >= _PIPE_LIMIT and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        if self.closed:
            raise _ClosedError()
        self._items.append(item)
        self._readable.set()

    def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._writable.set()

    async def wait_readable(self) -> None:
        while not self._items and not self.closed:
            self._readable.clear()
            await self._readable.wait()

    async def get(self) -> Any:
        await self.wait_readable()
        if not self._items:
            return _END
        item = self._items.popleft()
        self._writable.set()
        return item

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            item = await self.get()
            if item is _END:
                return
            yield item
