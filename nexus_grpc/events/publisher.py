"""What a plugin publishes with: ``ctx.events.publish(message)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from nexus_grpc import tracing
from nexus_grpc.events.bus import Delivery, EventBus
from nexus_grpc.events.envelope import Envelope, open_envelope, seal
from nexus_grpc.events.outbox import Inbox, Outbox
from nexus_grpc.events.redis_bus import BusUnavailableError
from nexus_grpc.events.tracing import publishing
from nexus_grpc.logs import current_request_id
from nexus_grpc.storage import UnitOfWork

__all__ = ["SUBSCRIPTION_ATTRIBUTE", "Publisher", "subscribe", "subscriptions_of"]

#: Attribute the ``subscribe`` decorator sets on a servicer method.
SUBSCRIPTION_ATTRIBUTE = "__nexus_subscribes__"
#: The event class the method was decorated with (its plugin's own generation of it).
_CLASS_ATTRIBUTE = "__nexus_subscribes_class__"


class Publisher:
    """A plugin's side of the bus: publishes the types its manifest declares, and
    deduplicates what it consumes.

    With an ``outbox``, events published inside a unit of work commit with its data
    (see :mod:`nexus_grpc.events.outbox`), and events the bus refuses outside one are
    kept for the relay instead of failing the caller.
    """

    def __init__(
        self,
        bus: EventBus,
        source: str,
        declared: frozenset[str],
        *,
        outbox: Outbox | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        self._bus = bus
        self._source = source
        self._declared = declared
        self._outbox = outbox
        self._inbox = inbox

    async def publish(
        self, message: Message, *, subject: str = "", transaction: UnitOfWork | None = None
    ) -> Envelope:
        """Publish ``message``; the request id of the current call becomes its correlation id.

        With ``transaction`` (a unit of work of the plugin's own storage), the event is
        stored in it and published once it commits: never for a rollback, never lost
        after a commit. Without, it goes to the bus now; when the bus is unreachable it
        is kept in the outbox and relayed later (raises BusUnavailableError only when
        the host has no outbox). Inside a unit of work, always pass it: keeping the
        event is a write of its own, which on SQLite waits for the unit's write lock
        (the busy timeout, then ConflictError).
        """
        event_type = message.DESCRIPTOR.full_name
        if event_type not in self._declared:
            raise ValueError(
                f"plugin {self._source!r} publishes {event_type} but its manifest does not "
                "list it: add it to `publishes`"
            )
        envelope = seal(
            message, source=self._source, subject=subject, correlation_id=current_request_id()
        )
        if tracing.enabled():
            backend = str(getattr(self._bus, "backend", "custom"))
            with publishing(envelope, backend=backend):
                await self._hand_over(envelope, transaction)
        else:
            await self._hand_over(envelope, transaction)
        return envelope

    async def _hand_over(self, envelope: Envelope, transaction: UnitOfWork | None) -> None:
        if transaction is not None:
            if self._outbox is None:
                raise RuntimeError("this host has no outbox: publish outside the transaction")
            await self._outbox.stage(transaction, self._source, envelope)
            return
        try:
            await self._bus.publish(envelope)
        except BusUnavailableError:
            if self._outbox is None:
                raise
            await self._outbox.keep(self._source, envelope)

    async def first_time(self, transaction: UnitOfWork, delivery: Delivery) -> bool:
        """Whether ``delivery``'s event is new to this plugin; records it in ``transaction``.

        ``if not await ctx.events.first_time(unit, delivery): return`` at the top of a
        handler's unit of work makes at-least-once delivery take effect once.
        """
        if self._inbox is None:
            raise RuntimeError(f"plugin {self._source!r} has no inbox: it consumes no events")
        return await self._inbox.first_time(transaction, delivery)


def subscribe(event_type: type[Message]) -> Callable[[Any], Any]:
    """Mark a servicer method as the plugin's handler of ``event_type`` events.

    The method is ``async def on_x(self, event, delivery)``; it must be idempotent:
    at-least-once backends may deliver an event again.
    """

    def mark(method: Any) -> Any:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"{method.__qualname__} must be `async def` to handle events")
        setattr(method, SUBSCRIPTION_ATTRIBUTE, event_type.DESCRIPTOR.full_name)
        setattr(method, _CLASS_ATTRIBUTE, event_type)
        return method

    return mark


def subscriptions_of(servicer: object) -> dict[str, Any]:
    """Event type → bound handler, for the methods of ``servicer`` marked with ``subscribe``."""
    found: dict[str, Any] = {}
    for name in dir(type(servicer)):
        function = getattr(type(servicer), name, None)
        event_type = getattr(function, SUBSCRIPTION_ATTRIBUTE, None)
        if isinstance(event_type, str):
            if event_type in found:
                raise ValueError(f"{type(servicer).__qualname__} handles {event_type} twice")
            found[event_type] = _in_own_class(
                getattr(servicer, name), getattr(function, _CLASS_ATTRIBUTE, None)
            )
    return found


def _in_own_class(handler: Any, event_class: type[Message] | None) -> Any:
    """``handler``, given its events as instances of ``event_class``.

    The bus opens an envelope with the default pool's class of its type. A plugin
    upgraded to a changed contract has its classes in its generation's pool, so its
    handlers get the payload parsed again into their own class, by name.
    """
    if event_class is None or event_class.DESCRIPTOR.file.pool is descriptor_pool.Default():
        return handler

    async def in_own_class(event: Message, delivery: Delivery) -> None:
        if type(event) is not event_class:
            event = open_envelope(delivery.envelope, into=event_class)
        await handler(event, delivery)

    return in_own_class
