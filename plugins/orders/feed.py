"""In-process feed of order changes for WatchOrders subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nexus.orders.v1 import orders_pb2

# A watcher that falls this far behind is disconnected rather than allowed to make the
# host buffer without bound.
MAX_BACKLOG = 1024


class WatcherTooSlowError(Exception):
    """A watcher's backlog overflowed; it missed changes and must re-watch."""


class ChangeFeed:
    """Fans each change out to every current subscriber."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[orders_pb2.WatchOrdersResponse | None]] = set()

    def publish(self, change: orders_pb2.WatchOrdersResponse) -> None:
        """Deliver ``change`` to every subscriber; overflowing subscribers are cut off."""
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                # Make room for the end-of-feed marker so the reader wakes and stops.
                queue.get_nowait()
                queue.put_nowait(None)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[orders_pb2.WatchOrdersResponse]]:
        """Changes published from now on, until the block exits."""
        queue: asyncio.Queue[orders_pb2.WatchOrdersResponse | None] = asyncio.Queue(MAX_BACKLOG)
        self._subscribers.add(queue)

        async def changes() -> AsyncIterator[orders_pb2.WatchOrdersResponse]:
            while True:
                change = await queue.get()
                if change is None:
                    raise WatcherTooSlowError
                yield change

        try:
            yield changes()
        finally:
            self._subscribers.discard(queue)
