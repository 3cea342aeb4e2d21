"""In-process feed of order changes for WatchOrders subscribers.

A change is queued only to the watchers that may see it and asked for it: watchers are
filed under the customer they watch (the ownership check has already set that to the
caller for grants of scope own), plus the few whose grant covers every customer. So an
order costs its publisher the watchers of its customer, not every watcher of the host,
and a watcher's queue never holds a change it is not allowed to see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nexus.orders.v1 import orders_pb2

# A watcher that falls this far behind is ended (RESOURCE_EXHAUSTED, "watch again")
# rather than allowed to make the host buffer without bound, or silently skipped past
# changes it would then never know it missed.
MAX_BACKLOG = 1024

_Queue = asyncio.Queue[orders_pb2.WatchOrdersResponse | None]


class WatcherTooSlowError(Exception):
    """A watcher's backlog overflowed; it missed changes and must re-watch."""


class ChangeFeed:
    """Fans each change out to the subscribers of its customer and to those of all."""

    def __init__(self, backlog: int = MAX_BACKLOG) -> None:
        self._backlog = backlog
        #: Subscribers of one customer's orders, by customer id.
        self._by_customer: dict[str, set[_Queue]] = {}
        #: Subscribers of every customer's orders (grants of scope all, no filter).
        self._everyone: set[_Queue] = set()
        #: Changes put into subscribers' queues so far (each copy counts).
        self.queued = 0

    @property
    def subscribers(self) -> int:
        """Subscriptions open now."""
        return len(self._everyone) + sum(len(s) for s in self._by_customer.values())

    def publish(self, change: orders_pb2.WatchOrdersResponse) -> None:
        """Queue ``change`` for the subscribers that may see it; overflowing ones are cut off."""
        mine = self._by_customer.get(change.order.customer_id)
        if mine:
            self._deliver(mine, change)
        if self._everyone:
            self._deliver(self._everyone, change)

    def _deliver(self, queues: set[_Queue], change: orders_pb2.WatchOrdersResponse) -> None:
        overflowed: list[_Queue] = []
        for queue in queues:
            try:
                queue.put_nowait(change)
                self.queued += 1
            except asyncio.QueueFull:
                overflowed.append(queue)
        for queue in overflowed:
            queues.discard(queue)
            # Make room for the end-of-feed marker so the reader wakes and stops.
            queue.get_nowait()
            queue.put_nowait(None)

    @asynccontextmanager
    async def subscribe(
        self, customer_id: str
    ) -> AsyncIterator[AsyncIterator[orders_pb2.WatchOrdersResponse]]:
        """Changes of ``customer_id``'s orders ("": every customer's) from now on, until
        the block exits. The caller must have checked that it may see them."""
        queue: _Queue = asyncio.Queue(self._backlog)
        group = self._by_customer.setdefault(customer_id, set()) if customer_id else self._everyone
        group.add(queue)

        async def changes() -> AsyncIterator[orders_pb2.WatchOrdersResponse]:
            while True:
                change = await queue.get()
                if change is None:
                    raise WatcherTooSlowError
                yield change

        try:
            yield changes()
        finally:
            group.discard(queue)
            # No empty set kept per customer ever watched: the index stays as small as
            # the set of watchers. (Only this group: a newer one may have replaced it.)
            if customer_id and not group and self._by_customer.get(customer_id) is group:
                del self._by_customer[customer_id]
