"""The transactional outbox and the inbox, on real databases and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from nexus.inventory.v1 import inventory_pb2

from nexus_grpc.events import Delivery, MemoryBus, Publisher, seal
from nexus_grpc.events.outbox import INBOX_COLLECTION, OUTBOX_COLLECTION, Outbox
from nexus_grpc.events.redis_bus import BusUnavailableError, RedisBus
from nexus_grpc.storage import Namespace, Storage
from tests.fixtures.redis import OwnRedis
from tests.storage import BACKENDS, backend_url, connected

EVENT = inventory_pb2.StockReserved.DESCRIPTOR.full_name
DECLARED = frozenset({EVENT})
Handled = list[str]


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def recorder(into: Handled) -> Callable[[Any, Delivery], Awaitable[None]]:
    async def handle(message: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        into.append(message.order_id)

    return handle


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """The outbox and inbox on each storage backend (SQLite, PostgreSQL, MongoDB)."""
    async with connected(backend_url(request, tmp_path)) as opened:
        yield opened


async def outbox_rows(namespace: Namespace) -> list[str]:
    from nexus_grpc.events import Envelope

    page = await namespace.repository(Envelope, collection=OUTBOX_COLLECTION).list()
    return [envelope.id for envelope in page.items]


async def test_an_event_published_in_a_rolled_back_transaction_is_never_published(
    storage: Storage,
) -> None:
    bus = MemoryBus()
    handled: Handled = []
    bus.subscribe("shop", EVENT, recorder(handled))
    await bus.start()
    outbox = Outbox(bus, relay_after=0)
    namespace = storage.namespace("plugins/business/inventory")
    outbox.register("inventory", namespace, DECLARED)
    publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)

    async def publish_then_fail() -> None:
        async with namespace.transaction() as unit:
            await publisher.publish(
                inventory_pb2.StockReserved(order_id="rolled-back"), transaction=unit
            )
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await publish_then_fail()
    async with namespace.transaction() as unit:
        await publisher.publish(inventory_pb2.StockReserved(order_id="kept"), transaction=unit)
        # Not before the commit: a consumer must never see an event whose data is not there.
        await asyncio.sleep(0.05)
        assert handled == []

    await eventually(lambda: handled == ["kept"])
    assert await outbox.sweep() == 0  # nothing left to relay: the rolled back one is gone
    assert await outbox_rows(namespace) == []
    await bus.stop(grace=1)


async def test_publishing_in_another_namespaces_transaction_is_refused(storage: Storage) -> None:
    bus = MemoryBus()
    outbox = Outbox(bus)
    outbox.register("inventory", storage.namespace("plugins/business/inventory"), DECLARED)
    publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
    async with storage.namespace("plugins/business/orders").transaction() as unit:
        with pytest.raises(ValueError, match="only its own"):
            await publisher.publish(inventory_pb2.StockReserved(order_id="x"), transaction=unit)


async def test_rows_left_by_a_crashed_process_are_relayed_by_the_next_one(
    storage: Storage,
) -> None:
    namespace = storage.namespace("plugins/business/inventory")
    from nexus_grpc.events import Envelope

    # What a process that died right after its commit leaves behind: rows only.
    left = [
        seal(inventory_pb2.StockReserved(order_id=f"o{i}"), source="inventory") for i in range(3)
    ]
    for envelope in left:
        envelope.time.FromSeconds(envelope.time.seconds - 60)
        await namespace.repository(Envelope, collection=OUTBOX_COLLECTION).create(envelope)
    # And a fresh row: its publisher may still be about to hand it over.
    fresh = seal(inventory_pb2.StockReserved(order_id="fresh"), source="inventory")
    await namespace.repository(Envelope, collection=OUTBOX_COLLECTION).create(fresh)

    bus = MemoryBus()
    handled: Handled = []
    bus.subscribe("shop", EVENT, recorder(handled))
    await bus.start()
    outbox = Outbox(bus, relay_after=30, poll_interval=0.05)
    outbox.register("inventory", namespace, DECLARED)
    await outbox.start()
    await eventually(lambda: sorted(handled) == ["o0", "o1", "o2"])
    assert await outbox_rows(namespace) == [fresh.id]
    await outbox.stop()
    await bus.stop(grace=1)


async def test_two_relays_sharing_a_database_publish_each_row_once(postgres_url: str) -> None:
    from nexus_grpc.events import Envelope

    storages = [await Storage.connect(postgres_url) for _ in range(2)]
    namespaces = [s.namespace("plugins/business/inventory") for s in storages]
    for i in range(40):
        envelope = seal(inventory_pb2.StockReserved(order_id=f"o{i}"), source="inventory")
        envelope.time.FromSeconds(envelope.time.seconds - 60)
        await namespaces[0].repository(Envelope, collection=OUTBOX_COLLECTION).create(envelope)

    bus = MemoryBus()
    handled: Handled = []
    bus.subscribe("shop", EVENT, recorder(handled))
    await bus.start()
    relays = [Outbox(bus, relay_after=1) for _ in range(2)]
    for relay, namespace in zip(relays, namespaces, strict=True):
        relay.register("inventory", namespace, DECLARED)
    counts = await asyncio.gather(*(relay.sweep() for relay in relays))
    assert sum(counts) == 40
    await eventually(lambda: len(handled) == 40)
    assert sorted(handled) == sorted(f"o{i}" for i in range(40))
    assert await outbox_rows(namespaces[0]) == []
    await bus.stop(grace=1)
    for storage in storages:
        await storage.close()


async def test_events_committed_while_redis_is_down_are_relayed_when_it_is_back(
    storage: Storage, own_redis: OwnRedis
) -> None:
    bus = RedisBus(own_redis.url, claim_idle=2.0, block=0.2, timeout=0.5, backoff=0.05)
    handled: Handled = []
    bus.subscribe("shop", EVENT, recorder(handled))
    await bus.start()
    namespace = storage.namespace("plugins/business/inventory")
    outbox = Outbox(bus, relay_after=30, poll_interval=0.1)
    outbox.register("inventory", namespace, DECLARED)
    publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
    await outbox.start()
    async with namespace.transaction() as unit:
        await publisher.publish(inventory_pb2.StockReserved(order_id="before"), transaction=unit)
    await eventually(lambda: handled == ["before"])

    own_redis.stop()
    async with namespace.transaction() as unit:  # the commit does not need the broker
        await publisher.publish(inventory_pb2.StockReserved(order_id="in-tx"), transaction=unit)
    # Outside a transaction the outbox takes what the bus refuses.
    await publisher.publish(inventory_pb2.StockReserved(order_id="no-tx"))
    assert await outbox.sweep() == 0  # deletes the row of "before"; the bus takes nothing
    assert len(await outbox_rows(namespace)) == 2
    assert not bus.healthy()

    own_redis.start()
    await eventually(lambda: sorted(handled) == ["before", "in-tx", "no-tx"])
    await eventually(lambda: bus.healthy())
    await outbox.stop()
    assert await outbox_rows(namespace) == []
    await bus.stop(grace=1)


async def test_without_an_outbox_a_refused_publish_raises(own_redis: OwnRedis) -> None:
    bus = RedisBus(own_redis.url, timeout=0.5)
    await bus.start()
    own_redis.stop()
    publisher = Publisher(bus, "inventory", DECLARED)
    with pytest.raises(BusUnavailableError):
        await publisher.publish(inventory_pb2.StockReserved(order_id="x"))
    await bus.stop(grace=0)


async def test_the_inbox_lets_an_event_take_effect_once(storage: Storage) -> None:
    from nexus_grpc.events import Envelope

    bus = MemoryBus()
    namespace = storage.namespace("plugins/business/orders")
    outbox = Outbox(bus)
    publisher = Publisher(
        bus, "orders", frozenset(), outbox=outbox, inbox=outbox.inbox(namespace, retention=60)
    )
    delivery = Delivery(seal(inventory_pb2.StockReserved(order_id="o1"), source="x"), "orders", 1)
    effects = namespace.repository(inventory_pb2.StockReserved, id_field="order_id")

    async def fail_half_way() -> None:
        async with namespace.transaction() as unit:
            assert await publisher.first_time(unit, delivery)
            await unit.repository(inventory_pb2.StockReserved, id_field="order_id").create(
                inventory_pb2.StockReserved(order_id="o1")
            )
            raise RuntimeError("handler failed half-way")

    # A handler that fails after recording: the record rolls back with its effects.
    with pytest.raises(RuntimeError, match="half-way"):
        await fail_half_way()
    assert await effects.get("o1") is None

    for attempt in (2, 3):  # the retry runs in full; the one after does nothing
        again = Delivery(delivery.envelope, "orders", attempt)
        async with namespace.transaction() as unit:
            if await publisher.first_time(unit, again):
                await unit.repository(inventory_pb2.StockReserved, id_field="order_id").create(
                    inventory_pb2.StockReserved(order_id="o1")
                )
    assert await effects.get("o1") is not None

    inbox = namespace.repository(Envelope, collection=INBOX_COLLECTION)
    assert [record.id for record in (await inbox.list()).items] == [delivery.envelope.id]
    pruned = await outbox.inbox(namespace, retention=60).prune(
        delivery.envelope.time.seconds + 61.0
    )
    assert pruned == 1
    assert (await inbox.list()).items == []


async def test_an_old_event_is_pruned_only_after_retention(storage: Storage) -> None:
    namespace = storage.namespace("plugins/business/orders")
    inbox = Outbox(MemoryBus()).inbox(namespace, retention=3600)
    envelopes = [seal(inventory_pb2.StockReserved(order_id=str(i)), source="x") for i in range(3)]
    envelopes[0].time.CopyFrom(timestamp_pb2.Timestamp(seconds=1000))
    async with namespace.transaction() as unit:
        for envelope in envelopes:
            assert await inbox.first_time(unit, Delivery(envelope, "orders", 1))
    assert await inbox.prune(now=1000 + 3601) == 1
    async with namespace.transaction() as unit:
        assert not await inbox.first_time(unit, Delivery(envelopes[1], "orders", 1))
        assert await inbox.first_time(unit, Delivery(envelopes[0], "orders", 1))
