"""Method name → route: the immutable routing table and the router that swaps it.

grpcio cannot add methods to a started server nor remove any, so the server has one
generic handler (:mod:`nexus_grpc.dispatcher`) that looks calls up here. A table is
never mutated: loading or unloading a plugin builds a new table (a new *generation*)
and swaps it in with one attribute assignment, so a call sees either the old table or
the new one, never half of each. Calls already running keep the route they started
with.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

if TYPE_CHECKING:
    from nexus_grpc.access.policy import EffectivePolicy
    from nexus_grpc.plugins.spec import OwnershipHook

__all__ = ["Arity", "CallHandler", "InFlight", "MethodInfo", "Route", "Router", "RoutingTable"]

#: The one shape every handler has once bound into a route: ``(request, context)``
#: where request is a message or, for client streaming, an async iterator of them.
#: Streaming responses are written with ``context.write``; the return value is the
#: response of unary-response methods and None otherwise.
CallHandler = Callable[[Any, Any], Awaitable[Any]]


class Arity(enum.Enum):
    """Whether requests and responses are single messages or streams."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @classmethod
    def of(cls, descriptor: MethodDescriptor) -> Arity:
        """The arity a method descriptor declares."""
        client = "stream" if descriptor.client_streaming else "unary"
        server = "stream" if descriptor.server_streaming else "unary"
        return cls(f"{client}_{server}")

    @property
    def grpc_type(self) -> str:
        """The ``grpc_type`` label go-grpc-prometheus uses for this arity."""
        return {
            Arity.UNARY_UNARY: "unary",
            Arity.UNARY_STREAM: "server_stream",
            Arity.STREAM_UNARY: "client_stream",
            Arity.STREAM_STREAM: "bidi_stream",
        }[self]


class InFlight:
    """Counts the calls a plugin generation is serving, so unloading can wait for them.

    Each generation of a plugin has its own counter: a reload drains the old code's
    calls while the new code already serves new ones.
    """

    def __init__(self) -> None:
        self._count = 0
        # Made by the first wait while calls run, set when they are over: a call
        # itself only adds and subtracts (this runs twice per call).
        self._idle: asyncio.Event | None = None

    @property
    def count(self) -> int:
        """Calls currently running."""
        return self._count

    def enter(self) -> None:
        """A call started."""
        self._count += 1

    def leave(self) -> None:
        """A call ended, however it ended."""
        self._count -= 1
        if self._count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, seconds: float | None = None) -> bool:
        """Wait until no call is running; False when ``seconds`` passed first."""
        if self._count == 0:
            return True
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        idle = self._idle
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a
            # cancellation that lands in the same turn as the wake.
            async with asyncio.timeout(seconds):
                await idle.wait()
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class MethodInfo:
    """What the pipeline knows about a method when it binds its stages."""

    #: "/package.Service/Method", as it appears on the wire.
    path: str
    #: Name of the plugin serving the method ("nexus" for the host's own services).
    plugin: str
    descriptor: MethodDescriptor
    arity: Arity
    #: Calls of this plugin in progress (shared by all its methods).
    in_flight: InFlight = field(compare=False)
    #: The access policy the contract declares (see nexus_grpc.access.policy).
    policy: EffectivePolicy | None = field(default=None, compare=False)
    #: The servicer's ownership hook (``owns``), for permissions with scope own/team.
    ownership: OwnershipHook | None = field(default=None, compare=False)
    #: The serving plugin's category ("core" for the host's own services).
    category: str = "core"
    #: ``bytes -> request`` as the servicer's generated code registered it; None for the
    #: class the descriptor's pool makes. (The two differ when a servicer serves a
    #: service under another descriptor, as reflection v1 does with v1alpha's code.)
    request_deserializer: Callable[[bytes], Any] | None = field(default=None, compare=False)

    @property
    def service(self) -> str:
        """Fully qualified service name."""
        return str(self.descriptor.containing_service.full_name)

    @property
    def method(self) -> str:
        """Bare method name."""
        return str(self.descriptor.name)

    @property
    def parse_request(self) -> Callable[[bytes], Any]:
        """``bytes -> request message`` for this method (look it up when binding, not per call)."""
        if self.request_deserializer is not None:
            return self.request_deserializer
        return message_factory.GetMessageClass(self.descriptor.input_type).FromString


@dataclass(frozen=True)
class Route:
    """Everything needed to serve one method, bound once when the table is built."""

    info: MethodInfo
    #: The handler wrapped in the call pipeline; shared by every transport.
    call: CallHandler
    #: ``call`` packaged for grpcio with the response serializer; requests reach the
    #: pipeline as bytes and its decode stage parses them.
    grpc_handler: grpc.RpcMethodHandler[Any, Any]

    @property
    def path(self) -> str:
        """Wire path of the method."""
        return self.info.path

    @property
    def plugin(self) -> str:
        """Plugin serving the method."""
        return self.info.plugin

    @property
    def service(self) -> str:
        """Fully qualified service name."""
        return self.info.service


@dataclass(frozen=True)
class RoutingTable:
    """One immutable generation of routes, keyed by wire path."""

    generation: int = 0
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))

    def services(self) -> list[str]:
        """Fully qualified names of every routed service, sorted."""
        return sorted({route.service for route in self.routes.values()})

    def plugin_of(self, service: str) -> str | None:
        """The plugin serving ``service``, if any."""
        for route in self.routes.values():
            if route.service == service:
                return route.plugin
        return None

    def with_routes(self, added: Iterable[Route]) -> RoutingTable:
        """A new generation with ``added`` routes; a path may be routed once only."""
        routes = dict(self.routes)
        for route in added:
            existing = routes.get(route.path)
            if existing is not None:
                raise ValueError(
                    f"{route.path} is served by plugin {existing.plugin!r} already; "
                    f"plugin {route.plugin!r} cannot serve it too"
                )
            routes[route.path] = route
        return RoutingTable(self.generation + 1, MappingProxyType(routes))

    def without_plugin(self, plugin: str) -> RoutingTable:
        """A new generation with none of ``plugin``'s routes."""
        routes = {path: r for path, r in self.routes.items() if r.plugin != plugin}
        return RoutingTable(self.generation + 1, MappingProxyType(routes))

    def replacing(self, plugin: str, added: Iterable[Route]) -> RoutingTable:
        """A new generation where ``plugin``'s routes are ``added`` (one step: no
        generation ever lacks the plugin between its old and its new code)."""
        kept = self.without_plugin(plugin).with_routes(added)
        return RoutingTable(self.generation + 1, kept.routes)

    def routes_of(self, plugin: str) -> list[Route]:
        """``plugin``'s routes, by wire path."""
        return sorted((r for r in self.routes.values() if r.plugin == plugin), key=lambda r: r.path)


class Router:
    """Holds the current routing table; readers take ``router.table`` once per call."""

    def __init__(self) -> None:
        self.table = RoutingTable()
        self._listeners: list[Callable[[RoutingTable], None]] = []

    def lookup(self, path: str) -> Route | None:
        """The route for a wire path in the current generation."""
        return self.table.routes.get(path)

    def add(self, routes: Iterable[Route]) -> RoutingTable:
        """Install ``routes`` as a new generation."""
        return self._swap(self.table.with_routes(routes))

    def remove_plugin(self, plugin: str) -> RoutingTable:
        """Drop ``plugin``'s routes as a new generation; its running calls go on."""
        return self._swap(self.table.without_plugin(plugin))

    def replace_plugin(self, plugin: str, routes: Iterable[Route]) -> RoutingTable:
        """Swap ``plugin``'s routes for ``routes`` as one new generation; the old
        routes' running calls go on with the code they started with."""
        return self._swap(self.table.replacing(plugin, routes))

    def on_change(self, listener: Callable[[RoutingTable], None]) -> None:
        """Call ``listener`` with every new generation (the gateway rebuilds its routes)."""
        self._listeners.append(listener)

    def _swap(self, table: RoutingTable) -> RoutingTable:
        self.table = table
        for listener in self._listeners:
            listener(table)
        return table
