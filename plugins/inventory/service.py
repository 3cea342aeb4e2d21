"""nexus.inventory.v1.InventoryService, and the reactions to order events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from nexus.inventory.v1 import inventory_pb2 as pb
from nexus.inventory.v1 import inventory_pb2_grpc
from nexus.orders.v1 import events_pb2 as order_events

from nexus_grpc import PluginContext, StatusError, quote
from nexus_grpc.errors import AlreadyExistsError, ConflictError
from nexus_grpc.events import Delivery, subscribe
from nexus_grpc.storage import Namespace, UnitOfWork

Context = Any
T = TypeVar("T")

#: Runs of a transaction that met a concurrent one on the same records (see _in_turn).
_ATTEMPTS = 5


class InventoryService(inventory_pb2_grpc.InventoryServiceServicer):
    """Stock and reservations in the plugin's namespace."""

    def __init__(self, ctx: PluginContext) -> None:
        self._storage = ctx.storage
        self._stock = ctx.storage.repository(pb.Stock, id_field="sku")
        self._events = ctx.events

    async def GetStock(self, request: pb.GetStockRequest, context: Context) -> pb.Stock:
        """The stock of a SKU; zero for a SKU never stocked."""
        return await self._stock.get(request.sku) or pb.Stock(sku=request.sku)

    async def SetStock(self, request: pb.SetStockRequest, context: Context) -> pb.Stock:
        """Set the units available (reservations are kept)."""

        async def set_stock(unit: UnitOfWork) -> pb.Stock:
            stock = unit.repository(pb.Stock, id_field="sku")
            current = await stock.get(request.sku, for_update=True)
            if current is None:
                return await stock.create(pb.Stock(sku=request.sku, available=request.available))
            current.available = request.available
            return await stock.update(current)

        return await _in_turn(self._storage, set_stock)

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.ReserveResponse:
        """Reserve every line for the order, or nothing when one is short;
        FAILED_PRECONDITION when the order was released or rejected before (an order is
        reserved at most once)."""

        async def reserve(unit: UnitOfWork) -> pb.ReserveResponse | None:
            result = await _reserve(unit, request.order_id, list(request.lines))
            return None if result is None else result[0]

        result = await _in_turn(self._storage, reserve)
        if result is None:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"order {quote(request.order_id)} was released or rejected; "
                "it cannot be reserved again",
                reason="ORDER_SETTLED",
            )
        return result

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        """Return an order's reserved units to stock (none the second time)."""

        async def release(unit: UnitOfWork) -> pb.ReleaseResponse:
            return pb.ReleaseResponse(released=await _release(unit, request.order_id))

        return await _in_turn(self._storage, release)

    @subscribe(order_events.OrderCreated)
    async def on_order_created(self, event: order_events.OrderCreated, delivery: Delivery) -> None:
        """Reserve the order's items and say whether that worked, once per event."""
        events = self._events
        assert events is not None
        order_id = event.order.id
        lines = [pb.ReservationLine(sku=i.sku, quantity=i.quantity) for i in event.order.items]

        async def handle(unit: UnitOfWork) -> None:
            assert events is not None
            if not await events.first_time(unit, delivery):
                return  # handled before: its reservation and answer are committed
            result = await _reserve(unit, order_id, lines)
            if result is None:
                # Its cancellation was handled first (another stream, another process,
                # an OrderCreated held in an outbox), or this is a replay: no answer.
                return
            outcome, held = result
            # Say what is actually held: orders confirms only when it matches the order.
            answer: Any = pb.StockReserved(order_id=order_id, lines=held)
            if not outcome.reserved:
                answer = pb.StockShortage(order_id=order_id, short_skus=outcome.short_skus)
                # The order is rejected for good: a replay must not reserve it once the
                # stock is there.
                await unit.repository(pb.Reservation).create(pb.Reservation(id=order_id))
            # The answer commits with the reservation: both happen, or neither.
            await events.publish(answer, subject=order_id, transaction=unit)

        await _in_turn(self._storage, handle)

    @subscribe(order_events.OrderCancelled)
    async def on_order_cancelled(
        self, event: order_events.OrderCancelled, delivery: Delivery
    ) -> None:
        """Give a cancelled order's units back, and keep it from being reserved later."""

        async def handle(unit: UnitOfWork) -> None:
            await _release(unit, event.order.id)

        await _in_turn(self._storage, handle)

    @subscribe(order_events.OrderRejected)
    async def on_order_rejected(
        self, event: order_events.OrderRejected, delivery: Delivery
    ) -> None:
        """Give back the units of an order rejected because its reservation did not match
        it, and keep it from being reserved later."""

        async def handle(unit: UnitOfWork) -> None:
            await _release(unit, event.order.id)

        await _in_turn(self._storage, handle)


# An order's reservation is one record, its id the order's: with its lines while the
# units are reserved, without once they were released (or, for an OrderCreated, when
# stock was short: the order is rejected for good). The record without lines stays, so
# that an OrderCreated handled after its OrderCancelled (they travel on different
# streams) or replayed after the inbox forgot it reserves nothing. Reserving and
# releasing one order concurrently meet on that record's key: the second to commit
# fails (AlreadyExistsError, ConflictError) and _in_turn runs it again, now seeing
# what the first did.


async def _in_turn(storage: Namespace, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    """``work`` in a transaction, run again when it collided with a concurrent one;
    ABORTED (retry later) if it keeps colliding."""
    attempt = 1
    while True:
        try:
            async with storage.transaction() as unit:
                return await work(unit)
        except (AlreadyExistsError, ConflictError) as collision:
            if attempt < _ATTEMPTS:
                attempt += 1
                continue
            if isinstance(collision, AlreadyExistsError):
                # Not the caller's duplicate: a concurrent call created the record first.
                raise ConflictError(
                    "the operation collided with a concurrent change; retry it"
                ) from None
            raise


async def _reserve(
    unit: UnitOfWork, order_id: str, lines: list[pb.ReservationLine]
) -> tuple[pb.ReserveResponse, list[pb.ReservationLine]] | None:
    """Reserve ``lines`` for ``order_id``, all or none, with the lines now held for it
    (none when short); None when it was settled without units before (released, or
    rejected for shortage)."""
    reservations = unit.repository(pb.Reservation)
    existing = await reservations.get(order_id, for_update=True)
    if existing is not None:
        # Reserving twice (a retried call, a second event) changes nothing; an order
        # settled without units is not reserved again. What is held may differ from
        # ``lines`` (a Reserve call made for the id first): the caller gets what is held.
        if not existing.lines:
            return None
        return pb.ReserveResponse(reserved=True), list(existing.lines)
    stock = unit.repository(pb.Stock, id_field="sku")
    wanted: dict[str, int] = {}
    for line in lines:
        wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
    rows = {sku: await stock.get(sku, for_update=True) for sku in sorted(wanted)}
    short = [sku for sku, qty in wanted.items() if (rows[sku] or pb.Stock()).available < qty]
    if short:
        return pb.ReserveResponse(reserved=False, short_skus=sorted(short)), []
    for sku, quantity in wanted.items():
        row = rows[sku]
        assert row is not None
        row.available -= quantity
        row.reserved += quantity
        await stock.update(row)
    await reservations.create(pb.Reservation(id=order_id, lines=lines))
    return pb.ReserveResponse(reserved=True), lines


async def _release(unit: UnitOfWork, order_id: str) -> int:
    reservations = unit.repository(pb.Reservation)
    reservation = await reservations.get(order_id, for_update=True)
    if reservation is None:
        # Released before it was reserved: remember it, so it never is.
        await reservations.create(pb.Reservation(id=order_id))
        return 0
    if not reservation.lines:
        return 0  # released already: nothing to do
    stock = unit.repository(pb.Stock, id_field="sku")
    released = 0
    for line in reservation.lines:
        row = await stock.get(line.sku, for_update=True)
        if row is not None:
            row.available += line.quantity
            row.reserved -= line.quantity
            await stock.update(row)
            released += line.quantity
    del reservation.lines[:]
    await reservations.update(reservation)
    return released
