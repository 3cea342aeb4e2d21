"""What a plugin publishes with: ``ctx.events.publish(message)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from nexus_grpc.events.bus import EventBus
from nexus_grpc.events.envelope import Envelope, seal
from nexus_grpc.logs import current_request_id

__all__ = ["SUBSCRIPTION_ATTRIBUTE", "Publisher", "subscribe", "subscriptions_of"]

#: Attribute the ``subscribe`` decorator sets on a servicer method.
SUBSCRIPTION_ATTRIBUTE = "__nexus_subscribes__"


class Publisher:
    """Publishes a plugin's events; only the types its manifest declares."""

    def __init__(self, bus: EventBus, source: str, declared: frozenset[str]) -> None:
        self._bus = bus
        self._source = source
        self._declared = declared

    async def publish(self, message: Message, *, subject: str = "") -> Envelope:
        """Publish ``message``; the request id of the current call becomes its correlation id."""
        event_type = message.DESCRIPTOR.full_name
        if event_type not in self._declared:
            raise ValueError(
                f"plugin {self._source!r} publishes {event_type} but its manifest does not "
                "list it: add it to `publishes`"
            )
        envelope = seal(
            message, source=self._source, subject=subject, correlation_id=current_request_id()
        )
        await self._bus.publish(envelope)
        return envelope


def subscribe(event_type: type[Message]) -> Callable[[Any], Any]:
    """Mark a servicer method as the plugin's handler of ``event_type`` events.

    The method is ``async def on_x(self, event, delivery)``; it must be idempotent:
    at-least-once backends may deliver an event again.
    """

    def mark(method: Any) -> Any:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"{method.__qualname__} must be `async def` to handle events")
        setattr(method, SUBSCRIPTION_ATTRIBUTE, event_type.DESCRIPTOR.full_name)
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
            found[event_type] = getattr(servicer, name)
    return found
