"""The memory bus: consumer groups, order, retries, dead letters; manifest checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nexus.inventory.v1 import inventory_pb2

from nexus_grpc.events import Delivery, MemoryBus, Publisher, seal
from nexus_grpc.testing import running_host


async def test_every_group_gets_each_event_once_in_order() -> None:
    bus = MemoryBus()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(group: str):  # type: ignore[no-untyped-def]
        async def handle(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
            seen[group].append(event.order_id)

        return handle

    bus.subscribe("a", "nexus.inventory.v1.StockReserved", recorder("a"))
    bus.subscribe("b", "nexus.inventory.v1.StockReserved", recorder("b"))
    await bus.start()
    for index in range(20):
        await bus.publish(seal(inventory_pb2.StockReserved(order_id=str(index)), source="t"))
    await bus.stop(grace=5)
    assert seen["a"] == seen["b"] == [str(i) for i in range(20)]


async def test_a_poison_event_is_dead_lettered_and_the_rest_flow_on() -> None:
    bus = MemoryBus(max_attempts=3, backoff=0.001)
    handled: list[str] = []
    attempts: list[int] = []

    async def handle(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        if event.order_id == "poison":
            attempts.append(delivery.attempt)
            raise RuntimeError("cannot handle this one")
        handled.append(event.order_id)

    bus.subscribe("orders", "nexus.inventory.v1.StockReserved", handle)
    await bus.start()
    for order_id in ("1", "poison", "2"):
        await bus.publish(
            seal(inventory_pb2.StockReserved(order_id=order_id), source="t", correlation_id="r-1")
        )
    await bus.stop(grace=5)
    assert handled == ["1", "2"]
    assert attempts == [1, 2, 3]
    [dead] = bus.dead_letters()
    assert (dead.group, dead.attempts) == ("orders", 3)
    assert dead.error == "RuntimeError: cannot handle this one"
    assert dead.envelope.correlation_id == "r-1"


async def test_a_transient_failure_is_retried_until_it_succeeds() -> None:
    bus = MemoryBus(max_attempts=5, backoff=0.001)
    attempts: list[int] = []

    async def flaky(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise ConnectionError("database briefly away")

    bus.subscribe("g", "nexus.inventory.v1.StockReserved", flaky)
    await bus.start()
    await bus.publish(seal(inventory_pb2.StockReserved(order_id="x"), source="t"))
    await bus.stop(grace=5)
    assert attempts == [1, 2, 3]
    assert bus.dead_letters() == []


async def test_publishing_an_undeclared_type_is_refused() -> None:
    publisher = Publisher(MemoryBus(), "orders", frozenset({"nexus.orders.v1.OrderCreated"}))
    with pytest.raises(ValueError, match="add it to `publishes`"):
        await publisher.publish(inventory_pb2.StockReserved(order_id="x"))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('consumes = ["nexus.inventory.v1.StockReserved"]', "but no servicer method handles it"),
        ('consumes = ["acme.v1.Nothing"]', "which is no known message type"),
        ('publishes = ["acme.v1.Nothing"]', "which is no known message type"),
    ],
    ids=["consumed-not-handled", "unknown-consumed-type", "unknown-published-type"],
)
async def test_manifest_event_declarations_are_checked(
    tmp_path: Path, manifest: str, message: str
) -> None:
    folder = tmp_path / "plugins" / "evented"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        f'name = "evented"\nversion = "1"\ncategory = "business"\ndescription = "x"\n{manifest}\n'
    )
    (folder / "__init__.py").write_text("from nexus_grpc import Plugin\nplugin = Plugin()\n")
    async with running_host(plugin_dirs=[tmp_path / "plugins"], data_dir=tmp_path / "d") as host:
        record = host.host.plugins.record("evented")
        assert record is not None
        assert record.state == "FAILED"
        assert message in record.error


async def test_bus_stop_waits_for_queued_events() -> None:
    bus = MemoryBus()
    done: list[str] = []

    async def slow(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        await asyncio.sleep(0.05)
        done.append(event.order_id)

    bus.subscribe("g", "nexus.inventory.v1.StockReserved", slow)
    await bus.start()
    for index in range(3):
        await bus.publish(seal(inventory_pb2.StockReserved(order_id=str(index)), source="t"))
    await bus.stop(grace=5)
    assert done == ["0", "1", "2"]
