"""Two `nexus serve` processes sharing one PostgreSQL and one Redis.

The orders → reservation → confirmation flow across both, each event taking effect
once; a consumer killed between its commit and its acknowledgement; Redis stopped and
started again in the middle of the flow.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.events import Envelope
from nexus_grpc.events.outbox import INBOX_COLLECTION
from nexus_grpc.storage import Storage
from nexus_grpc.storage.repository import M
from tests.e2e.conftest import REPO, ServeProcess, start_serve
from tests.fixtures.redis import OwnRedis

PENDING = orders_pb2.ORDER_STATUS_PENDING
CONFIRMED = orders_pb2.ORDER_STATUS_CONFIRMED
REJECTED = orders_pb2.ORDER_STATUS_REJECTED
TEST_PLUGINS = REPO / "tests" / "e2e" / "plugins"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


class Shop:
    """gRPC clients of one host process."""

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self._channel = grpc.insecure_channel(serve.address)
        token = serve.token()
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.orders = orders_pb2_grpc.OrdersServiceStub(self._channel)
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(self._channel)
        self.health = health_pb2_grpc.HealthStub(self._channel)

    def create_order(self, sku: str, quantity: int = 1) -> str:
        request = orders_pb2.CreateOrderRequest(
            order=orders_pb2.Order(
                customer_id="c1",
                currency_code="EUR",
                items=[orders_pb2.LineItem(sku=sku, quantity=quantity, unit_price_cents=100)],
            )
        )
        return str(self.orders.CreateOrder(request, metadata=self.metadata, timeout=10).id)

    def status(self, order_id: str) -> int:
        request = orders_pb2.GetOrderRequest(id=order_id)
        return int(self.orders.GetOrder(request, metadata=self.metadata, timeout=10).status)

    def set_stock(self, sku: str, available: int) -> None:
        request = inventory_pb2.SetStockRequest(sku=sku, available=available)
        self.inventory.SetStock(request, metadata=self.metadata, timeout=10)

    def stock(self, sku: str) -> inventory_pb2.Stock:
        request = inventory_pb2.GetStockRequest(sku=sku)
        return self.inventory.GetStock(request, metadata=self.metadata, timeout=10)

    def events_health(self) -> int:
        request = health_pb2.HealthCheckRequest(service="nexus.events")
        return int(self.health.Check(request, timeout=5).status)

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def cluster(
    tmp_path: Path, probe_stubs: Path, postgres_url: str, own_redis: OwnRedis
) -> Iterator[Callable[..., Shop]]:
    """Starts host processes sharing one database, one Redis and one signing secret."""
    started: list[Shop] = []

    def start(**env: str) -> Shop:
        serve = start_serve(
            tmp_path,  # one data dir: every process signs and verifies with one secret
            probe_stubs,
            [REPO / "plugins", TEST_PLUGINS],
            NEXUS_STORAGE__URL=postgres_url,
            NEXUS_EVENTS__BACKEND="redis",
            NEXUS_EVENTS__REDIS_URL=own_redis.url,
            NEXUS_EVENTS__CLAIM_IDLE="1.5",
            NEXUS_EVENTS__RETRY_BACKOFF="0.05",
            NEXUS_EVENTS__OUTBOX_RELAY_AFTER="1.0",
            NEXUS_EVENTS__OUTBOX_POLL_INTERVAL="0.2",
            NEXUS_LOG__ACCESS="false",
            # The orders plugin's price list (keys from the environment are lower case).
            NEXUS_PLUGIN__ORDERS__PRICES__WIDGET="100",
            NEXUS_PLUGIN__ORDERS__PRICES__GADGET="100",
            NEXUS_PLUGIN__ORDERS__PRICES__BOLT="100",
            NEXUS_PLUGIN__ORDERS__PRICES__SPROCKET="100",
            **env,
        )
        shop = Shop(serve)
        started.append(shop)
        return shop

    try:
        yield start
    finally:
        for shop in started:
            shop.close()
            shop.serve.close()


async def _rows(postgres_url: str, namespace: str, collection: str, kind: type[M]) -> list[M]:
    storage = await Storage.connect(postgres_url)
    try:
        repository = storage.namespace(namespace).repository(kind, collection=collection)
        found: list[M] = []
        token = ""
        while True:
            page = await repository.list(page_size=500, page_token=token)
            found.extend(page.items)
            if not page.next_page_token:
                return found
            token = page.next_page_token
    finally:
        await storage.close()


def ids(postgres_url: str, namespace: str, collection: str) -> list[str]:
    """Ids of a collection's rows, read straight from the shared database."""
    rows = asyncio.run(_rows(postgres_url, namespace, collection, Envelope))
    return [row.id for row in rows]


def count(postgres_url: str, namespace: str, collection: str) -> int:
    """Rows of a collection, read straight from the shared database."""
    return len(ids(postgres_url, namespace, collection))


def ledger(postgres_url: str) -> list[str]:
    """The order of each line of the order ledger: an order twice is an effect twice."""
    lines = asyncio.run(
        _rows(postgres_url, "plugins/integration/order_ledger", "ledger", orders_pb2.Order)
    )
    return sorted(line.note for line in lines)


def settled_ledger(postgres_url: str, redis_url: str) -> list[str]:
    """The ledger once nothing more can reach it: every outbox row of the orders plugin
    relayed (a late relay would be one more delivery), and the ledger's group has read
    and acknowledged every OrderCreated."""
    from nexus_grpc.events.outbox import OUTBOX_COLLECTION

    client = redis.Redis.from_url(redis_url)
    try:

        def drained() -> bool:
            if count(postgres_url, "plugins/business/orders", OUTBOX_COLLECTION):
                return False
            groups: Any = client.xinfo_groups("nexus:events:nexus.orders.v1.OrderCreated")
            (group,) = [g for g in groups if g["name"] == b"order_ledger"]
            return int(group["pending"]) == 0 and int(group["lag"] or 0) == 0

        wait_until(drained)
    finally:
        client.close()
    return ledger(postgres_url)


def handlers(postgres_url: str) -> set[str]:
    """Process ids of the order ledger's deliveries (recorded as "pid-event-attempt")."""
    deliveries = ids(postgres_url, "plugins/integration/order_ledger", "deliveries")
    return {delivery.split("-")[0] for delivery in deliveries}


def test_two_hosts_share_the_flow_and_each_event_takes_effect_once(
    cluster: Callable[..., Shop], postgres_url: str, own_redis: OwnRedis
) -> None:
    first, second = cluster(), cluster()
    first.set_stock("widget", 30)
    shops = [first, second]
    ids = [shops[i % 2].create_order("widget") for i in range(40)]

    def settled() -> bool:
        return all(first.status(order_id) != PENDING for order_id in ids)

    wait_until(settled)
    statuses = [second.status(order_id) for order_id in ids]
    assert statuses.count(CONFIRMED) == 30
    assert statuses.count(REJECTED) == 10
    stock = first.stock("widget")
    assert (stock.available, stock.reserved) == (0, 30)
    # Inventory recorded each OrderCreated once, whichever process handled it.
    assert count(postgres_url, "plugins/business/inventory", INBOX_COLLECTION) == 40
    # The ledger is a consumer group of its own: it may still be going.
    assert settled_ledger(postgres_url, own_redis.url) == sorted(ids)  # every order, once
    # Both processes took part: one consumer group, its work shared.
    assert handlers(postgres_url) == {str(first.serve.process.pid), str(second.serve.process.pid)}


def test_items_changed_on_the_other_host_during_the_reservation_are_refused(
    cluster: Callable[..., Shop],
) -> None:
    # Issue 9: an order placed on one host, its items replaced through the other while
    # inventory reserved them, was confirmed for 9999 units with 10 in stock.
    first, second = cluster(), cluster()
    first.set_stock("sprocket", 10)
    ids = []
    for _ in range(10):
        order_id = first.create_order("sprocket")
        ids.append(order_id)
        change = orders_pb2.UpdateOrderRequest(
            order=orders_pb2.Order(
                id=order_id, items=[orders_pb2.LineItem(sku="sprocket", quantity=9999)]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["items"]),
        )
        with pytest.raises(grpc.RpcError) as caught:
            second.orders.UpdateOrder(change, metadata=second.metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]

    wait_until(lambda: all(first.status(order_id) == CONFIRMED for order_id in ids))
    confirmed = [
        second.orders.GetOrder(orders_pb2.GetOrderRequest(id=i), metadata=second.metadata)
        for i in ids
    ]
    assert sum(item.quantity for o in confirmed for item in o.items) == 10
    stock = second.stock("sprocket")
    assert (stock.available, stock.reserved) == (0, 10)


def test_a_consumer_killed_before_acknowledging_is_redelivered_and_takes_effect_once(
    cluster: Callable[..., Shop], postgres_url: str, own_redis: OwnRedis
) -> None:
    victim = cluster(NEXUS_PLUGIN__ORDER_LEDGER__HANG_AFTER_COMMIT="true")
    order_id = victim.create_order("gadget")
    wait_until(lambda: ledger(postgres_url) == [order_id])
    victim.serve.stop(signal.SIGKILL)  # committed, never acknowledged

    survivor = cluster()
    # The survivor takes the unacknowledged entry over and gets it again.
    wait_until(lambda: str(survivor.serve.process.pid) in handlers(postgres_url))
    assert str(victim.serve.process.pid) in handlers(postgres_url)
    client = redis.Redis.from_url(own_redis.url)
    try:

        def acknowledged() -> bool:
            stream = "nexus:events:nexus.orders.v1.OrderCreated"
            pending: Any = client.xpending(stream, "order_ledger")
            return int(pending["pending"]) == 0

        wait_until(acknowledged)
    finally:
        client.close()
    # Delivered twice, the second time to the survivor: the inbox kept it to one line.
    assert ledger(postgres_url) == [order_id]
    # The rest of the flow goes on in the survivor (the other groups' entries the victim
    # had not acknowledged are taken over as well): the order is settled.
    wait_until(lambda: survivor.status(order_id) != PENDING)
    assert survivor.status(order_id) == REJECTED  # no stock of "gadget"


def test_redis_stopped_mid_flow_loses_nothing_and_health_follows(
    cluster: Callable[..., Shop], postgres_url: str, own_redis: OwnRedis
) -> None:
    first, second = cluster(), cluster()
    first.set_stock("bolt", 100)
    before = [first.create_order("bolt")]
    wait_until(lambda: first.status(before[0]) == CONFIRMED)

    own_redis.stop()
    for shop in (first, second):
        wait_until(lambda shop=shop: shop.events_health() == NOT_SERVING)  # type: ignore[misc]
    # Orders are still taken: their events wait in the outbox with them.
    during = [(first, second)[i % 2].create_order("bolt") for i in range(10)]
    assert all(first.status(order_id) == PENDING for order_id in during)

    own_redis.start()
    for shop in (first, second):
        wait_until(lambda shop=shop: shop.events_health() == SERVING)  # type: ignore[misc]
    wait_until(lambda: all(second.status(order_id) == CONFIRMED for order_id in during))
    stock = second.stock("bolt")
    assert (stock.available, stock.reserved) == (89, 11)
    assert count(postgres_url, "plugins/business/inventory", INBOX_COLLECTION) == 11
    # The ledger is a consumer group of its own: it may still be going.
    assert settled_ledger(postgres_url, own_redis.url) == sorted(before + during)
