"""Orders and inventory talking through events: reserve, confirm, reject, release."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import events_pb2 as order_events
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import EventsConfig
from nexus_grpc.errors import AlreadyExistsError, ConflictError, StatusError
from nexus_grpc.events import Delivery, Envelope, MemoryBus, Publisher, seal
from nexus_grpc.events.outbox import INBOX_COLLECTION, Outbox
from nexus_grpc.storage import Storage
from nexus_grpc.testing import RunningHost, running_host
from tests.fixtures.redis import RedisServer
from tests.storage import connected

REPO = Path(__file__).resolve().parents[2]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


#: The orders plugin's price list in these tests: every SKU they order.
PRICES = {"prices": {**{f"SKU-{i}": 100 for i in range(1, 10)}, "RACE": 100}}


@pytest.fixture(params=["memory", "redis"])
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> RunningHost:
    """The orders ↔ inventory flow on each event bus backend."""
    events = EventsConfig()
    if request.param == "redis":
        events = EventsConfig(
            backend="redis", redis_url=request.getfixturevalue("redis_url"), claim_idle=5.0
        )
    async with running_host(
        plugins=["orders", "inventory"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        events=events,
        plugin_config={"orders": PRICES},
    ) as host:
        yield host  # type: ignore[misc]


def clients(shop: RunningHost) -> tuple[Any, Any]:
    """Orders and inventory stubs calling ``shop`` as its admin."""
    channel = shop.channel(shop.token())
    return (
        orders_pb2_grpc.OrdersServiceStub(channel),
        inventory_pb2_grpc.InventoryServiceStub(channel),
    )


def order(sku: str, quantity: int, order_id: str = "") -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id="c1",
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku=sku, quantity=quantity)],
        ),
        order_id=order_id,
    )


async def test_order_is_confirmed_when_stock_is_reserved_and_released_on_cancel(
    shop: RunningHost,
) -> None:
    orders, inventory = clients(shop)
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-1", available=5))

    created = await orders.CreateOrder(order("SKU-1", 2))
    assert created.status == orders_pb2.ORDER_STATUS_PENDING

    async def confirmed() -> bool:
        current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
        return current.status == orders_pb2.ORDER_STATUS_CONFIRMED

    await eventually(confirmed)
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-1"))
    assert (stock.available, stock.reserved) == (3, 2)

    await orders.CancelOrder(orders_pb2.CancelOrderRequest(id=created.id))

    async def released() -> bool:
        stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-1"))
        return (stock.available, stock.reserved) == (5, 0)

    await eventually(released)


async def test_order_is_rejected_when_stock_is_short(shop: RunningHost) -> None:
    orders, inventory = clients(shop)
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-2", available=1))
    created = await orders.CreateOrder(order("SKU-2", 3))

    async def rejected() -> bool:
        current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
        return current.status == orders_pb2.ORDER_STATUS_REJECTED

    await eventually(rejected)
    current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
    assert current.cancel_reason == "out of stock: SKU-2"
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-2"))
    assert (stock.available, stock.reserved) == (1, 0)  # nothing reserved: all or none


async def test_reserving_twice_for_one_order_changes_nothing(shop: RunningHost) -> None:
    inventory = inventory_pb2_grpc.InventoryServiceStub(shop.channel(shop.token()))
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-3", available=10))
    request = inventory_pb2.ReserveRequest(
        order_id="o-1", lines=[inventory_pb2.ReservationLine(sku="SKU-3", quantity=4)]
    )
    assert (await inventory.Reserve(request)).reserved
    assert (await inventory.Reserve(request)).reserved
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-3"))
    assert (stock.available, stock.reserved) == (6, 4)
    assert (await inventory.Release(inventory_pb2.ReleaseRequest(order_id="o-1"))).released == 4
    assert (await inventory.Release(inventory_pb2.ReleaseRequest(order_id="o-1"))).released == 0


async def test_health_reports_the_event_bus(shop: RunningHost) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = await health_pb2_grpc.HealthStub(shop.channel()).Check(
        health_pb2.HealthCheckRequest(service="nexus.events")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_inventory_methods_follow_their_policies(shop: RunningHost) -> None:
    customer = inventory_pb2_grpc.InventoryServiceStub(
        shop.channel(shop.token("alice", grants=("orders.read:own",)))
    )
    assert (await customer.GetStock(inventory_pb2.GetStockRequest(sku="X"))).sku == "X"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await customer.SetStock(inventory_pb2.SetStockRequest(sku="X", available=1))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def drained(shop: RunningHost, group: str) -> None:
    """Wait until ``group`` has handled everything published to it so far."""

    async def done() -> bool:
        stats = {entry.group: entry for entry in await shop.host.bus.stats()}  # type: ignore[attr-defined]
        return stats[group].pending == 0 and stats[group].lag == 0

    await eventually(done)


def envelope_of(event: Any, *, event_id: str = "") -> Envelope:
    """``event`` as the orders plugin publishes it (with ``event_id`` to redeliver one)."""
    envelope = seal(event, source="orders")
    if event_id:
        envelope.id = event_id
    return envelope


async def settled_as(orders: Any, order_id: str, status: int) -> None:
    """Wait until the order reaches ``status`` (its stock event was handled)."""

    async def reached() -> bool:
        current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=order_id))
        return bool(current.status == status)

    await eventually(reached)


@contextlib.asynccontextmanager
async def inventory_inbox(shop: RunningHost) -> AsyncIterator[Any]:
    """The inventory plugin's inbox, read straight from the host's database."""
    storage = await Storage.connect(shop.host.config.storage_url())
    try:
        namespace = storage.namespace("plugins/business/inventory")
        yield namespace.repository(Envelope, collection=INBOX_COLLECTION)
    finally:
        await storage.close()


async def test_an_order_created_heard_after_its_cancellation_reserves_nothing(
    shop: RunningHost,
) -> None:
    # One stream per event type (and an OrderCreated held in an outbox, or read by a
    # slower process) means a cancellation can be handled before the creation.
    inventory = inventory_pb2_grpc.InventoryServiceStub(shop.channel(shop.token()))
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-4", available=5))
    ghost = orders_pb2.Order(
        id="late-1", customer_id="c1", items=[orders_pb2.LineItem(sku="SKU-4", quantity=2)]
    )
    await shop.host.bus.publish(envelope_of(order_events.OrderCancelled(order=ghost)))
    await drained(shop, "inventory")
    await shop.host.bus.publish(envelope_of(order_events.OrderCreated(order=ghost)))
    await drained(shop, "inventory")
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-4"))
    assert (stock.available, stock.reserved) == (5, 0)


async def test_an_order_created_heard_again_after_its_cancellation_reserves_nothing(
    shop: RunningHost,
) -> None:
    orders, inventory = clients(shop)
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-5", available=5))
    created = await orders.CreateOrder(order("SKU-5", 2))
    await settled_as(orders, created.id, orders_pb2.ORDER_STATUS_CONFIRMED)
    await orders.CancelOrder(orders_pb2.CancelOrderRequest(id=created.id))
    await drained(shop, "inventory")

    async def stock() -> tuple[int, int]:
        found = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-5"))
        return found.available, found.reserved

    assert await stock() == (5, 0)
    async with inventory_inbox(shop) as inbox:
        created_type = order_events.OrderCreated.DESCRIPTOR.full_name
        heard = [e for e in (await inbox.list()).items if e.type == created_type]
        assert len(heard) == 1
        # Redelivered (a consumer that died before acknowledging): the inbox has it.
        again = envelope_of(order_events.OrderCreated(order=created), event_id=heard[0].id)
        await shop.host.bus.publish(again)
        await drained(shop, "inventory")
        assert await stock() == (5, 0)
        # Replayed once the inbox forgot it (events.inbox_retention): still nothing.
        await inbox.delete(heard[0].id)
        await shop.host.bus.publish(again)
        await drained(shop, "inventory")
        assert await stock() == (5, 0)


async def test_an_order_created_replayed_after_its_rejection_reserves_nothing(
    shop: RunningHost,
) -> None:
    orders, inventory = clients(shop)
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-6", available=1))
    created = await orders.CreateOrder(order("SKU-6", 3))
    await settled_as(orders, created.id, orders_pb2.ORDER_STATUS_REJECTED)
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-6", available=10))
    async with inventory_inbox(shop) as inbox:
        (heard,) = (await inbox.list()).items
        # An operator replays OrderCreated after events.inbox_retention.
        await inbox.delete(heard.id)
        again = envelope_of(order_events.OrderCreated(order=created), event_id=heard.id)
        await shop.host.bus.publish(again)
        await drained(shop, "inventory")
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-6"))
    assert (stock.available, stock.reserved) == (10, 0)
    assert (await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))).status == (
        orders_pb2.ORDER_STATUS_REJECTED
    )


@pytest.mark.parametrize("backend", ["postgresql", "mongodb"])
async def test_a_creation_and_a_cancellation_handled_at_once_leave_nothing_reserved(
    request: pytest.FixtureRequest, backend: str
) -> None:
    # Two processes, one handling an order's OrderCreated while the other handles its
    # OrderCancelled: whichever commits second fails, and its retry sees the first.
    from types import SimpleNamespace

    from plugins.inventory.service import InventoryService

    url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mongo_url")
    declared = frozenset(
        t.DESCRIPTOR.full_name for t in (inventory_pb2.StockReserved, inventory_pb2.StockShortage)
    )

    async def delivered(handler: Any, event: Any) -> None:
        envelope = seal(event, source="orders")
        for attempt in range(1, 100):  # what the bus does: retry until it goes through
            try:
                await handler(event, Delivery(envelope, "inventory", attempt))
                return
            except (AlreadyExistsError, ConflictError):
                await asyncio.sleep(0.01)
        raise AssertionError("never went through")

    async with connected(url) as first, connected(url) as second:
        services = []
        for storage in (first, second):
            namespace = storage.namespace("plugins/business/inventory")
            outbox = Outbox(MemoryBus())
            outbox.register("inventory", namespace, declared)
            events = Publisher(
                MemoryBus(), "inventory", declared, outbox=outbox, inbox=outbox.inbox(namespace, 60)
            )
            context = SimpleNamespace(storage=namespace, events=events)
            services.append(InventoryService(context))  # type: ignore[arg-type]
        stock = first.namespace("plugins/business/inventory").repository(
            inventory_pb2.Stock, id_field="sku"
        )
        await stock.create(inventory_pb2.Stock(sku="S", available=100))

        async def both(i: int) -> None:
            placed = orders_pb2.Order(id=f"o{i}", items=[orders_pb2.LineItem(sku="S", quantity=1)])
            await asyncio.gather(
                delivered(services[0].on_order_created, order_events.OrderCreated(order=placed)),
                delivered(
                    services[1].on_order_cancelled, order_events.OrderCancelled(order=placed)
                ),
            )

        await asyncio.gather(*(both(i) for i in range(30)))
        row = await stock.get("S")
        assert row is not None
        assert (row.available, row.reserved) == (100, 0)


@pytest.mark.parametrize("backend", ["postgresql", "mongodb"])
async def test_concurrent_reserve_and_release_calls_on_one_order_never_fail(
    request: pytest.FixtureRequest, backend: str
) -> None:
    # Two processes serving Reserve and Release for the same orders at once: the calls
    # meet on the order's reservation record, and the second to commit runs again.
    from types import SimpleNamespace

    from plugins.inventory.service import InventoryService

    url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mongo_url")
    async with connected(url) as first, connected(url) as second:
        services = [
            InventoryService(
                SimpleNamespace(storage=s.namespace("plugins/business/inventory"), events=None)  # type: ignore[arg-type]
            )
            for s in (first, second)
        ]
        await services[0].SetStock(inventory_pb2.SetStockRequest(sku="S", available=1000), None)
        lines = [inventory_pb2.ReservationLine(sku="S", quantity=1)]
        outcomes: list[str] = []

        async def call(coroutine: Awaitable[Any]) -> None:
            try:
                await coroutine
                outcomes.append("ok")
            except StatusError as error:
                outcomes.append(error.code.name)

        for i in range(20):
            order_id = f"o{i}"
            await asyncio.gather(
                call(
                    services[0].Reserve(
                        inventory_pb2.ReserveRequest(order_id=order_id, lines=lines), None
                    )
                ),
                call(services[1].Release(inventory_pb2.ReleaseRequest(order_id=order_id), None)),
                call(services[1].Release(inventory_pb2.ReleaseRequest(order_id=order_id), None)),
            )
        # A Reserve that came after a Release is refused for good; nothing else fails.
        assert set(outcomes) <= {"ok", "FAILED_PRECONDITION"}
        assert outcomes.count("ok") >= 40  # every Release
        stock = await services[0].GetStock(inventory_pb2.GetStockRequest(sku="S"), None)
        assert (stock.available, stock.reserved) == (1000, 0)  # every order released


async def test_reserving_a_released_order_is_a_failed_precondition(shop: RunningHost) -> None:
    inventory = inventory_pb2_grpc.InventoryServiceStub(shop.channel(shop.token()))
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-7", available=5))
    await inventory.Release(inventory_pb2.ReleaseRequest(order_id="early"))
    lines = [inventory_pb2.ReservationLine(sku="SKU-7", quantity=1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inventory.Reserve(inventory_pb2.ReserveRequest(order_id="early", lines=lines))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        "order 'early' was released or rejected; it cannot be reserved again"
    )
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-7"))
    assert (stock.available, stock.reserved) == (5, 0)


async def test_items_cannot_change_while_their_reservation_is_in_flight(
    shop: RunningHost,
) -> None:
    # Issue 9: UpdateOrder replaced the items of a pending order after OrderCreated went
    # out; inventory reserved the old ones and the order was confirmed for 9999 units
    # with 10 in stock. Now the items are fixed, and a confirmed order is what was held.
    orders, inventory = clients(shop)
    tries = 15
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="RACE", available=10 * tries))
    greedy = [orders_pb2.LineItem(sku="RACE", quantity=9999)]
    placed = []
    for _ in range(tries):
        created = await orders.CreateOrder(order("RACE", 10))
        placed.append(created)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orders.UpdateOrder(  # at once: the reservation is still in flight
                orders_pb2.UpdateOrderRequest(
                    order=orders_pb2.Order(id=created.id, items=greedy),
                    update_mask=field_mask_pb2.FieldMask(paths=["items"]),
                )
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    confirmed = 0
    for created in placed:
        await settled_as(orders, created.id, orders_pb2.ORDER_STATUS_CONFIRMED)
        current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
        assert [(i.sku, i.quantity) for i in current.items] == [("RACE", 10)]
        confirmed += sum(i.quantity for i in current.items)
    stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="RACE"))
    assert (stock.available, stock.reserved) == (0, confirmed)
    assert confirmed == 10 * tries


async def test_an_order_whose_reservation_does_not_match_it_is_rejected_and_released(
    shop: RunningHost,
) -> None:
    # A reservation held under the order's id that is not its items (here made by a
    # direct Reserve call before the order existed) must not confirm it.
    orders, inventory = clients(shop)
    await inventory.SetStock(inventory_pb2.SetStockRequest(sku="SKU-9", available=10))
    lines = [inventory_pb2.ReservationLine(sku="SKU-9", quantity=5)]
    await inventory.Reserve(inventory_pb2.ReserveRequest(order_id="preset", lines=lines))
    created = await orders.CreateOrder(order("SKU-9", 1, order_id="preset"))
    await settled_as(orders, created.id, orders_pb2.ORDER_STATUS_REJECTED)
    current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=created.id))
    assert current.cancel_reason == "the stock reserved does not match the order's items"

    async def released() -> bool:
        stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-9"))
        return (stock.available, stock.reserved) == (10, 0)

    await eventually(released)


async def test_the_harness_captures_published_events(tmp_path: Path) -> None:
    # RunningHost.events: what a consumer group of the test's own receives.
    async with running_host(
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        plugin_config={"orders": PRICES},
    ) as host:
        created = await host.events(order_events.OrderCreated)
        again = host.events(order_events.OrderCreated)  # captures are independent
        orders, _ = clients(host)
        made = await orders.CreateOrder(order("SKU-1", 2))
        event = await created.next(within=10)
        assert isinstance(event, order_events.OrderCreated)
        assert event.order == made
        assert (await again.next(within=10)) == event
        assert created.received == [event]
        with pytest.raises(TimeoutError):
            await created.next(within=0.2)


async def test_the_harness_captures_on_redis_with_groups_of_its_own_removed_at_stop(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    # On a shared Redis a capture's group must exist before the call that publishes
    # (awaiting it creates it), must be new (no earlier run's group, which would hold
    # that run's events), and must not outlive the host.
    stream = f"nexus:events:{order_events.OrderCreated.DESCRIPTOR.full_name}"
    events = EventsConfig(backend="redis", redis_url=redis_url, claim_idle=5.0)
    seen: list[str] = []
    for run in range(2):
        async with running_host(
            plugins=["orders"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path / f"run{run}",
            events=events,
            plugin_config={"orders": PRICES},
        ) as host:
            created = await host.events(order_events.OrderCreated)
            groups = redis_server.command("XINFO", "GROUPS", stream).decode()
            assert groups.count("nexus-testing-") == 1, groups
            unawaited = host.events(order_events.OrderCreated)
            with pytest.raises(RuntimeError, match="was never awaited"):
                await unawaited.next(within=0.1)
            orders, _ = clients(host)
            made = await orders.CreateOrder(order("SKU-1", 1))  # at once: nothing missed
            event = await created.next(within=10)
            assert event.order == made and created.received == [event]
            seen.append(made.id)
            with pytest.raises(TimeoutError):
                await created.next(within=0.3)
        groups = redis_server.command("XINFO", "GROUPS", stream).decode()
        assert "nexus-testing-" not in groups, groups
        assert redis_server.command("KEYS", "*nexus-testing-*") == b"*0\r\n"
    assert len(set(seen)) == 2
