"""Test plugin: an event-only consumer that records every OrderCreated it handles.

Each delivery is logged in ``deliveries`` (its own transaction, so it survives a crash).
The effect — a line in ``ledger`` naming the order (in ``note``) — is written with the
inbox record, once per event. Each line gets a fresh id, so nothing but the inbox keeps
a second delivery from adding a second line: the tests count lines per order.
With ``[plugin.order_ledger] hang_after_commit = true`` the handler commits its effect
and then never returns: the entry is never acknowledged, as if the process had died
between the two.
"""

from __future__ import annotations

import asyncio
import os

from nexus.orders.v1 import events_pb2, orders_pb2

from nexus_grpc import Plugin, PluginContext
from nexus_grpc.events import Delivery, subscribe


class OrderLedger:
    """Keeps one ledger line per order created."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._hang = bool(ctx.config.get("hang_after_commit", False))

    @subscribe(events_pb2.OrderCreated)
    async def on_order_created(self, event: events_pb2.OrderCreated, delivery: Delivery) -> None:
        """Record the delivery, then a ledger line for the order, once."""
        events = self._ctx.events
        assert events is not None
        await self._ctx.storage.repository(orders_pb2.Order, collection="deliveries").create(
            orders_pb2.Order(id=f"{os.getpid()}-{delivery.envelope.id}-{delivery.attempt}")
        )
        async with self._ctx.storage.transaction() as unit:
            if await events.first_time(unit, delivery):
                line = orders_pb2.Order(note=event.order.id)  # the id: a fresh one
                await unit.repository(orders_pb2.Order, collection="ledger").create(line)
        if self._hang:
            await asyncio.Event().wait()


plugin = Plugin(subscribers=[OrderLedger])
