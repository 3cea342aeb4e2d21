"""Event subscriptions that outlive a plugin generation.

A plugin's consumer group must survive a reload: were the old handler unsubscribed
and a new one subscribed, the Redis worker would be stopped and started again (events
read but not acknowledged handed back, read twice) and the memory bus would drop its
queue. Instead the bus gets one :class:`EventRelay` per (plugin, event type), once,
and a swap only changes the handler behind it: an event being handled finishes with
the old code, the next one is handled by the new code, none is lost or handled twice.

While the plugin is unloaded its relays hold deliveries: each waits (on Redis the
entry stays pending for this consumer, the heartbeat keeps it; in memory it stays
queued) until the plugin is loaded back. An event type a new version no longer
consumes fails its deliveries, so they end as dead letters, visible and redrivable.
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf.message import Message

from nexus_grpc.events import Delivery, EventBus
from nexus_grpc.events.bus import Handler

__all__ = ["EventRelay", "Relays"]


class NotConsumedError(RuntimeError):
    """The plugin's current version does not consume this event type any more."""


class EventRelay:
    """The handler the bus knows; forwards to the current generation's handler."""

    def __init__(self, plugin: str, event_type: str) -> None:
        self.plugin = plugin
        self.event_type = event_type
        self._handler: Handler | None = None
        self._dropped = False
        self._resumed = asyncio.Event()

    def set(self, handler: Handler) -> None:
        """Deliver to ``handler`` from now on (held deliveries go to it too)."""
        self._handler, self._dropped = handler, False
        self._resumed.set()

    def hold(self) -> None:
        """The plugin is unloaded: keep deliveries waiting until it is back."""
        self._handler, self._dropped = None, False
        self._resumed.clear()

    def drop(self) -> None:
        """The plugin serves on without this event type: fail its deliveries."""
        self._handler, self._dropped = None, True
        self._resumed.set()

    async def __call__(self, event: Message, delivery: Delivery) -> None:
        while True:
            handler = self._handler
            if handler is not None:
                await handler(event, delivery)
                return
            if self._dropped:
                raise NotConsumedError(
                    f"plugin {self.plugin!r} no longer consumes {self.event_type}"
                )
            await self._resumed.wait()


class Relays:
    """Every relay of a host, created (and subscribed) once per plugin and type."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._relays: dict[tuple[str, str], EventRelay] = {}

    def install(self, plugin: str, handlers: dict[str, Any]) -> None:
        """Route ``plugin``'s events to ``handlers`` (type → handler); types it had
        before and has no handler for now are dropped."""
        for event_type, handler in handlers.items():
            key = (plugin, event_type)
            relay = self._relays.get(key)
            if relay is None:
                relay = self._relays[key] = EventRelay(plugin, event_type)
                self._bus.subscribe(plugin, event_type, relay)
            relay.set(handler)
        for (name, event_type), relay in self._relays.items():
            if name == plugin and event_type not in handlers:
                relay.drop()

    def hold(self, plugin: str) -> None:
        """``plugin`` is unloaded: its deliveries wait for it to come back."""
        for (name, _), relay in self._relays.items():
            if name == plugin:
                relay.hold()
