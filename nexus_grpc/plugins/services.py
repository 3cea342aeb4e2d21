"""Published services: a plugin calls another plugin's gRPC service in-process.

A plugin lists the services it calls under ``requires`` in its manifest and gets
clients of them from ``ctx.services``::

    inventory = ctx.services.client(inventory_pb2_grpc.InventoryServiceStub)
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1"))

The stub is the generated one, over an :class:`InProcessChannel`
(:mod:`._inproc_channel`; the call objects are in :mod:`._inproc_calls`). A call runs
through the route's pipeline handler with a context whose transport is ``inproc`` and
whose peer is ``inproc:<calling plugin>``: the callee's policy, rate limits, validation,
metrics, audit and access log apply. Failures come back as ``grpc.aio.AioRpcError``
with the code, message and trailing metadata (``google.rpc`` details included) a
network client would get. Calling a service the manifest does not require is refused
when the stub is made (:class:`UndeclaredServiceError`).

Who calls — the rules of :meth:`Services._outgoing`:

- Inside a call (its handler, and tasks the handler started while the call lasts) an
  in-process call carries that call's principal, as the auth stage verified it (it is
  not verified again), so the callee sees the same user, and its deadline
  (``timeout=`` can shorten it, not extend it); a deadline already passed fails with
  DEADLINE_EXCEEDED before anything is called. An anonymous caller stays anonymous: the
  plugin's identity never stands in for it. Such a call ends with the call it was made
  in: when that call ends first, it is cancelled, so nothing goes on in the user's name
  afterwards.
- Outside any call (start and stop hooks, event handlers, tasks that outlive their
  call) the call carries the plugin's own identity: subject ``plugin:<name>``, role
  ``plugin`` and exactly the grants its manifest lists under ``permissions`` — none by
  default. The callee's policy judges it like any user.
- ``as_plugin=True`` makes a client that always uses the plugin's identity (with the
  deadline of the call it is made in): work the plugin does on its own authority, such
  as reserving stock for a customer who may not touch the inventory. Such a call may
  outlive the call it was made in. The audit and the access log name ``plugin:<name>``.
- ``authorization`` metadata passed to a call replaces both: the call is authenticated
  with that token, as over the network.
- The request id of the current call (an event's correlation id in event handlers) is
  sent as ``x-request-id``, so the callee's log lines carry it; with tracing on, the
  current span's W3C ``traceparent`` (and ``tracestate``, ``baggage``) too.

The principal travels in an attribute of the host's own context object
(:data:`~nexus_grpc.pipeline.auth.INPROC_PRINCIPAL`), never in metadata, so no network
request can claim one. Plugins are trusted code in the host's process: these rules keep
authority explicit and audited, they do not sandbox a hostile plugin.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from nexus_grpc import tracing
from nexus_grpc.auth.principal import Grant, Principal, principal_var
from nexus_grpc.logs import current_request_id
from nexus_grpc.pipeline.auth import INPROC_PRINCIPAL
from nexus_grpc.pipeline.context import CallContext, CurrentCall, current_call_var
from nexus_grpc.plugins._inproc_channel import InProcessChannel
from nexus_grpc.routing import Route, Router

__all__ = [
    "INPROC",
    "PLUGIN_ROLE",
    "InProcessChannel",
    "Services",
    "UndeclaredServiceError",
    "outside_calls",
    "plugin_principal",
]

#: The ``transport`` of in-process calls (metrics label, audit records).
INPROC = "inproc"
#: Role of every plugin's own identity.
PLUGIN_ROLE = "plugin"

T = TypeVar("T")


class UndeclaredServiceError(LookupError):
    """A plugin asked for a client of a service its manifest does not require."""


def plugin_principal(plugin: str, permissions: Iterable[str] = ()) -> Principal:
    """The identity of ``plugin`` itself: ``plugin:<name>`` with ``permissions`` only."""
    return Principal(
        subject=f"plugin:{plugin}",
        roles=(PLUGIN_ROLE,),
        grants=frozenset(Grant.parse(permission) for permission in permissions),
        via="plugin",
    )


def outside_calls(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``handler`` run as outside any call, whatever task runs it (event handlers).

    A task inherits the call and the principal of the task that started it; an event
    delivered by such a task must still not act as the user whose call published it.
    """

    async def outside(*args: Any, **kwargs: Any) -> T:
        call = current_call_var.set(None)
        principal = principal_var.set(None)
        try:
            return await handler(*args, **kwargs)
        finally:
            principal_var.reset(principal)
            current_call_var.reset(call)

    return outside


class _InProcessContext(CallContext):
    """The callee's context; the auth stage takes the caller's principal from it."""

    def __init__(
        self,
        principal: Principal | None,
        *,
        metadata: tuple[tuple[str, str | bytes], ...],
        peer: str,
        deadline: float | None,
    ) -> None:
        super().__init__(transport=INPROC, metadata=metadata, peer=peer, deadline=deadline)
        setattr(self, INPROC_PRINCIPAL, principal)


class _Outgoing(NamedTuple):
    """An in-process call about to start."""

    #: The callee's context: principal, deadline, metadata.
    context: CallContext
    #: The deadline has passed already: the call fails without running.
    expired: bool
    #: The call it carries the principal of, and ends with.
    within: CurrentCall | None


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
        self._identity = plugin_principal(plugin, permissions)

    @property
    def identity(self) -> Principal:
        """The plugin's own identity (calls made outside any call, and ``as_plugin``)."""
        return self._identity

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

    def _check(self, path: str) -> None:
        """Refuse a method of a service the manifest does not require."""
        service, slash, method = path.removeprefix("/").partition("/")
        if not path.startswith("/") or not slash or not service or not method:
            raise ValueError(f"{path!r} is not a method path such as '/pkg.v1.Service/Method'")
        if service not in self._required:
            where = f" in {self._source}" if self._source else ""
            raise UndeclaredServiceError(
                f"plugin {self._plugin!r} calls {service}, which its manifest does not "
                f"require; add it to `requires`{where}"
            )

    def _route(self, path: str) -> Route | None:
        """The route serving ``path`` now; None once its plugin stopped."""
        return self._router.lookup(path)

    def _outgoing(self, timeout: float | None, metadata: Any, *, as_plugin: bool) -> _Outgoing:
        """The callee's context for a call made now: who calls, until when, which request."""
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
        if tracing.enabled() and "traceparent" not in keys:
            # The callee's server span is a child of the current span (the caller's
            # call, or an event handler's span), as over the network.
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            sent.extend(carrier.items())
        within = None
        principal: Principal | None
        if "authorization" in keys:
            principal = None  # authenticated by the token, as over the network
        elif as_plugin or current is None:
            principal = self._identity
        else:
            principal = principal_var.get()  # None: the caller is anonymous, and stays so
            within = current
        context = _InProcessContext(
            principal,
            metadata=tuple(sent),
            peer=f"inproc:{self._plugin}",
            deadline=time.monotonic() + remaining if remaining is not None else None,
        )
        return _Outgoing(context, remaining is not None and remaining <= 0, within)
