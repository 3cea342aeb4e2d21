"""The in-process channel: generated stubs over it run routes of the current table.

Each method of a stub is a multi-callable bound to the method's path; the requirement is
checked once, when the stub is made. A call looks the route up in the current routing
table (the plugin serving it may have stopped since), checks the arity, copies the
request and runs the route's pipeline handler — the one gRPC, REST and gRPC-Web calls
run — in a task of its own with :func:`~nexus_grpc.pipeline.context.start_call`, which
applies the deadline as a grpc.aio server does.

Messages are not serialized: requests and responses are copied with ``CopyFrom``
(about half the cost of serializing and parsing), when they are sent, so neither side
sees the other change them later. A message of another class than the method's is
serialized and parsed, as over the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from nexus_grpc.auth.principal import principal_var
from nexus_grpc.pipeline.context import CallContext, start_call
from nexus_grpc.plugins._inproc_calls import (
    Call,
    StreamStreamCall,
    StreamUnaryCall,
    UnaryStreamCall,
    UnaryUnaryCall,
)
from nexus_grpc.routing import Arity, Route

if TYPE_CHECKING:
    from nexus_grpc.plugins.services import Services

__all__ = ["InProcessChannel"]

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


class InProcessChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` for generated stubs whose calls never leave the process."""

    def __init__(self, services: Services, *, as_plugin: bool = False) -> None:
        self._services = services
        self._as_plugin = as_plugin

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _UnaryUnary:
        """A callable for a unary method (what generated stubs ask for)."""
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _UnaryStream:
        """A callable for a server-streaming method."""
        return _UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _StreamUnary:
        """A callable for a client-streaming method."""
        return _StreamUnary(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
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


def _copier(parse: Deserializer, serialize: Serializer) -> Callable[[Any], Any]:
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


class _MultiCallable:
    """One method of a stub: checks the requirement once, finds the route per call."""

    arity: Arity
    call_type: type[Call]

    def __init__(
        self,
        channel: InProcessChannel,
        path: str,
        request_serializer: Serializer,
        response_deserializer: Deserializer,
    ) -> None:
        channel._services._check(path)
        self._channel = channel
        self._path = path
        self._request_serializer = request_serializer
        self._response_deserializer = response_deserializer
        self._bound: tuple[Route, Callable[[Any], Any], Callable[[Any], Any]] | None = None

    def _start(self, request: Any, timeout: float | None, metadata: Any) -> Any:
        """Start the call: ``request`` is a message or a request iterator (or None)."""
        services = self._channel._services
        outgoing = services._outgoing(timeout, metadata, as_plugin=self._channel._as_plugin)
        context = outgoing.context
        route = services._route(self._path)
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
        if outgoing.expired:
            return self._failed(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call"
            )
        copy_in, copy_out = self._copiers(route)
        call = self.call_type(context, self._path, copy_out)
        try:
            message = call._request(request, copy_in)
        except Exception as error:
            return self._failed(
                context, grpc.StatusCode.INTERNAL, f"the request could not be copied: {error}"
            )
        handler = route.call

        async def serve(request: Any, context: Any) -> Any:
            # The callee's task starts anonymous, like a network call's: its auth stage
            # takes the caller's identity from the context, and a call refused before
            # that is not logged under the caller's name.
            principal_var.set(None)
            response = await handler(request, context)
            # Copied as the handler returns it, before its code can touch it again.
            return copy_out(response) if response is not None else None

        call._begin(start_call(serve, message, context), outgoing.within)
        return call

    def _copiers(self, route: Route) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        bound = self._bound
        if bound is None or bound[0] is not route:
            handler = route.grpc_handler
            bound = self._bound = (
                route,
                _copier(route.info.parse_request, self._request_serializer),
                _copier(self._response_deserializer, handler.response_serializer),
            )
        return bound[1], bound[2]

    def _failed(self, context: CallContext, code: grpc.StatusCode, details: str) -> Call:
        context.set_code(code)
        context.set_details(details)
        call = self.call_type(context, self._path)
        call._begin(None, None)
        return call


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    arity = Arity.UNARY_UNARY
    call_type = UnaryUnaryCall

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> UnaryUnaryCall:
        call: UnaryUnaryCall = self._start(request, timeout, metadata)
        return call


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    arity = Arity.UNARY_STREAM
    call_type = UnaryStreamCall

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> UnaryStreamCall:
        call: UnaryStreamCall = self._start(request, timeout, metadata)
        return call


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    arity = Arity.STREAM_UNARY
    call_type = StreamUnaryCall

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> StreamUnaryCall:
        call: StreamUnaryCall = self._start(request_iterator, timeout, metadata)
        return call


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    arity = Arity.STREAM_STREAM
    call_type = StreamStreamCall

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> StreamStreamCall:
        call: StreamStreamCall = self._start(request_iterator, timeout, metadata)
        return call
