"""Orders and inventory talking through events: reserve, confirm, reject, release."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import EventsConfig
from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[2]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


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
    ) as host:
        yield host  # type: ignore[misc]


def order(sku: str, quantity: int) -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id="c1",
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku=sku, quantity=quantity)],
        )
    )


async def test_order_is_confirmed_when_stock_is_reserved_and_released_on_cancel(
    shop: RunningHost,
) -> None:
    channel = shop.channel(shop.token())
    orders = orders_pb2_grpc.OrdersServiceStub(channel)
    inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
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
    channel = shop.channel(shop.token())
    orders = orders_pb2_grpc.OrdersServiceStub(channel)
    inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
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
