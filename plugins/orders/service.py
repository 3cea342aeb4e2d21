"""nexus.orders.v1.OrdersService over the host's repository."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from nexus.inventory.v1 import inventory_pb2
from nexus.orders.v1 import events_pb2, orders_pb2, orders_pb2_grpc

from nexus_grpc import PluginContext, StatusError, quote
from nexus_grpc.auth.principal import Scope
from nexus_grpc.errors import InvalidArgumentError, NotFoundError
from nexus_grpc.events import Delivery, subscribe
from nexus_grpc.plugins.spec import OwnershipCheck
from nexus_grpc.storage import Repository, UnitOfWork

from .feed import ChangeFeed, WatcherTooSlowError
from .prices import PriceList
from .validation import (
    FROZEN_FIELDS,
    UPDATABLE_FIELDS,
    validate_create,
    validate_list,
    validate_update,
)

DEFAULT_PAGE_SIZE = 50
_FINAL_STATES = (orders_pb2.ORDER_STATUS_CANCELLED, orders_pb2.ORDER_STATUS_REJECTED)

Context = Any  # grpc.aio.ServicerContext or the gateway's equivalent


class OrdersService(orders_pb2_grpc.OrdersServiceServicer):
    """Orders stored in the plugin's namespace; changes fanned out to watchers."""

    def __init__(self, ctx: PluginContext) -> None:
        self._storage = ctx.storage
        self._orders = ctx.storage.repository(orders_pb2.Order)
        self._feed = ChangeFeed()
        self._events = ctx.events
        self._prices = PriceList.from_config(ctx.config)

    async def owns(self, check: OwnershipCheck) -> bool:
        """Whether the caller may act on the order(s) the request names.

        An order belongs to the user whose name is its ``customer_id``. Callers whose
        grant reaches their own orders only may create orders for themselves, see and
        change their own orders, and list or watch only their own (the filter is set
        for them). An order of someone else and an order that does not exist get the
        same answer, so ids cannot be probed. Orders have no team: team-scoped grants
        see nothing.
        """
        if check.scope is not Scope.OWN:
            return False
        subject = check.principal.subject
        request = check.request
        if check.method == "CreateOrder":
            if not request.order.customer_id:
                request.order.customer_id = subject
            return bool(request.order.customer_id == subject)
        if check.method in ("ListOrders", "WatchOrders"):
            if not request.customer_id:
                request.customer_id = subject
            return bool(request.customer_id == subject)
        if check.method == "UpdateOrder" and "customer_id" in request.update_mask.paths:
            # Moving an order to another customer is for callers whose grant covers all
            # orders; with scope own it would hand the order to someone else.
            return False
        order_id = request.order.id if check.method == "UpdateOrder" else request.id
        order = await self._orders.get(order_id) if order_id else None
        return order is not None and order.customer_id == subject

    async def CreateOrder(
        self, request: orders_pb2.CreateOrderRequest, context: Context
    ) -> orders_pb2.Order:
        """Store a new pending order, priced from the price list, with its total and times."""
        validate_create(request)
        order = orders_pb2.Order()
        order.CopyFrom(request.order)
        violations = self._prices.apply(order)
        if violations:
            raise InvalidArgumentError(violations)
        order.id = request.order_id
        order.status = orders_pb2.ORDER_STATUS_PENDING
        order.cancel_reason = ""
        order.total_cents = _total(order)
        now = _now()
        order.create_time.CopyFrom(now)
        order.update_time.CopyFrom(now)
        async with self._storage.transaction() as unit:
            created = await unit.repository(orders_pb2.Order).create(order)
            # Stored with the order in one commit: inventory hears of every order saved.
            await self._publish(events_pb2.OrderCreated(order=created), created.id, unit)
        self._feed.publish(_change(orders_pb2.CHANGE_TYPE_CREATED, created))
        return created

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.Order:
        """The order with ``request.id``."""
        order = await self._orders.get(request.id)
        if order is None:
            raise NotFoundError("order", request.id)
        return order

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: Context
    ) -> orders_pb2.ListOrdersResponse:
        """One page of orders matching the filters."""
        field, descending = validate_list(request)
        page = await self._orders.list(
            filter=_filter(request.customer_id, request.status),
            order_by=f"{field} desc" if descending else field,
            page_size=request.page_size or DEFAULT_PAGE_SIZE,
            page_token=request.page_token,
        )
        return orders_pb2.ListOrdersResponse(
            orders=page.items, next_page_token=page.next_page_token
        )

    async def UpdateOrder(
        self, request: orders_pb2.UpdateOrderRequest, context: Context
    ) -> orders_pb2.Order:
        """Change the fields named by the update mask of an open order (not its items)."""
        paths = validate_update(request)
        async with self._storage.transaction() as unit:
            orders = unit.repository(orders_pb2.Order)
            order = await _open_order(orders, request.order.id, "updated")
            frozen = [path for path in FROZEN_FIELDS if path in paths]
            if frozen:
                # OrderCreated went out with the order, so inventory is reserving (or has
                # reserved) exactly its items; changing them, even while it is pending,
                # would confirm an order for units never reserved.
                raise StatusError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the {' and '.join(frozen)} of order {quote(order.id)} are fixed once it is "
                    "placed; cancel it and create a new order",
                    reason="ORDER_ITEMS_FROZEN",
                    metadata={"fields": ",".join(frozen)},
                )
            for path in UPDATABLE_FIELDS:
                if path in paths:
                    setattr(order, path, getattr(request.order, path))
            order.update_time.CopyFrom(_now())
            updated = await orders.update(order)
        self._feed.publish(_change(orders_pb2.CHANGE_TYPE_UPDATED, updated))
        return updated

    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: Context
    ) -> orders_pb2.Order:
        """Cancel an open order, recording why."""
        async with self._storage.transaction() as unit:
            orders = unit.repository(orders_pb2.Order)
            order = await _open_order(orders, request.id, "cancelled")
            order.status = orders_pb2.ORDER_STATUS_CANCELLED
            order.cancel_reason = request.reason
            order.update_time.CopyFrom(_now())
            cancelled = await orders.update(order)
            await self._publish(events_pb2.OrderCancelled(order=cancelled), cancelled.id, unit)
        self._feed.publish(_change(orders_pb2.CHANGE_TYPE_CANCELLED, cancelled))
        return cancelled

    @subscribe(inventory_pb2.StockReserved)
    async def on_stock_reserved(
        self, event: inventory_pb2.StockReserved, delivery: Delivery
    ) -> None:
        """A pending order is confirmed when the stock reserved is exactly its items;
        otherwise it is rejected and the reservation given back."""
        await self._settle(
            event.order_id, orders_pb2.ORDER_STATUS_CONFIRMED, "", reserved=event.lines
        )

    @subscribe(inventory_pb2.StockShortage)
    async def on_stock_shortage(
        self, event: inventory_pb2.StockShortage, delivery: Delivery
    ) -> None:
        """A pending order that could not be reserved is rejected, saying what was short."""
        reason = f"out of stock: {', '.join(event.short_skus)}"
        await self._settle(event.order_id, orders_pb2.ORDER_STATUS_REJECTED, reason)

    async def _settle(
        self,
        order_id: str,
        status: int,
        reason: str,
        *,
        reserved: Sequence[inventory_pb2.ReservationLine] | None = None,
    ) -> None:
        async with self._storage.transaction() as unit:
            orders = unit.repository(orders_pb2.Order)
            order = await orders.get(order_id, for_update=True)
            # Only a pending order moves: a redelivered event, or one for an order
            # cancelled meanwhile, changes nothing.
            if order is None or order.status != orders_pb2.ORDER_STATUS_PENDING:
                return
            mismatch = reserved is not None and _units(order.items) != _units(reserved)
            if mismatch:
                # A confirmed order must be what was reserved. Items cannot change after
                # OrderCreated, but a reservation made for this id by other means (a
                # direct Reserve call, an event of an older release) can differ.
                status = orders_pb2.ORDER_STATUS_REJECTED
                reason = "the stock reserved does not match the order's items"
            order.status = status  # type: ignore[assignment]
            order.cancel_reason = reason
            order.update_time.CopyFrom(_now())
            settled = await orders.update(order)
            if mismatch:
                # Committed with the rejection: inventory releases what it holds.
                await self._publish(events_pb2.OrderRejected(order=settled), settled.id, unit)
        self._feed.publish(_change(orders_pb2.CHANGE_TYPE_UPDATED, settled))

    async def _publish(self, event: Any, subject: str, unit: UnitOfWork) -> None:
        if self._events is not None:
            await self._events.publish(event, subject=subject, transaction=unit)

    async def WatchOrders(
        self, request: orders_pb2.WatchOrdersRequest, context: Context
    ) -> AsyncIterator[orders_pb2.WatchOrdersResponse]:
        """Stream changes (after the current orders, when asked) until the client leaves."""
        # Subscribe before reading the snapshot so no change falls between the two; an
        # order changed meanwhile may then be seen twice, never missed.
        # request.customer_id is what the caller may see: the ownership check set it to
        # the caller for grants of scope own, and only grants of scope all leave it empty.
        async with self._feed.subscribe(request.customer_id) as changes:
            if request.include_existing:
                token = ""
                while True:
                    page = await self._orders.list(
                        filter=_filter(request.customer_id, 0),
                        order_by="create_time",
                        page_size=200,
                        page_token=token,
                    )
                    for order in page.items:
                        yield _change(orders_pb2.CHANGE_TYPE_EXISTING, order)
                    token = page.next_page_token
                    if not token:
                        break
            try:
                async for change in changes:
                    yield change
            except WatcherTooSlowError:
                raise StatusError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the watcher fell too far behind and missed changes; watch again",
                    reason="WATCHER_TOO_SLOW",
                ) from None


def _filter(customer_id: str, status: int) -> dict[str, object]:
    found: dict[str, object] = {}
    if customer_id:
        found["customer_id"] = customer_id
    if status:
        found["status"] = status
    return found


async def _open_order(
    orders: Repository[orders_pb2.Order], order_id: str, verb: str
) -> orders_pb2.Order:
    """The order, locked for this transaction; NOT_FOUND or FAILED_PRECONDITION otherwise."""
    order = await orders.get(order_id, for_update=True)
    if order is None:
        raise NotFoundError("order", order_id)
    if order.status in _FINAL_STATES:
        state = orders_pb2.OrderStatus.Name(order.status)
        raise StatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"order {quote(order.id)} is {state} and cannot be {verb}",
            reason="ORDER_CLOSED",
            metadata={"status": state},
        )
    return order


def _units(lines: Iterable[orders_pb2.LineItem | inventory_pb2.ReservationLine]) -> dict[str, int]:
    """Units per SKU (an order may name a SKU on several lines)."""
    units: dict[str, int] = {}
    for line in lines:
        units[line.sku] = units.get(line.sku, 0) + line.quantity
    return units


def _total(order: orders_pb2.Order) -> int:
    return sum(item.quantity * item.unit_price_cents for item in order.items)


def _now() -> timestamp_pb2.Timestamp:
    # From nanoseconds: GetCurrentTime goes through a datetime, ~5x the cost.
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _change(kind: int, order: orders_pb2.Order) -> orders_pb2.WatchOrdersResponse:
    return orders_pb2.WatchOrdersResponse(change_type=kind, order=order)  # type: ignore[arg-type]
