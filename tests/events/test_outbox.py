"""The transactional outbox and the inbox, on real databases and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from nexus.inventory.v1 import inventory_pb2

from nexus_grpc.events import Delivery, EventBus, MemoryBus, Publisher, seal
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


async def listening(bus: EventBus, event_type: str = EVENT) -> Handled:
    """Start ``bus`` with a group "shop" recording the order ids of ``event_type``."""
    handled: Handled = []
    bus.subscribe("shop", event_type, recorder(handled))
    await bus.start()
    return handled


async def outbox_rows(namespace: Namespace) -> list[str]:
    from nexus_grpc.events import Envelope

    page = await namespace.repository(Envelope, collection=OUTBOX_COLLECTION).list(page_size=1000)
    return [envelope.id for envelope in page.items]


async def test_an_event_published_in_a_rolled_back_transaction_is_never_published(
    storage: Storage,
) -> None:
    bus = MemoryBus()
    handled = await listening(bus)
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
    handled = await listening(bus)
    outbox = Outbox(bus, relay_after=30, poll_interval=0.05)
    outbox.register("inventory", namespace, DECLARED)
    await outbox.start()
    try:
        await eventually(lambda: sorted(handled) == ["o0", "o1", "o2"])
        # A handler can see an event before the relay deletes its row: the relay's next
        # sweeps do (every 0.05 s); the fresh row stays, its publisher may still send it.
        for _ in range(100):
            if await outbox_rows(namespace) == [fresh.id]:
                break
            await asyncio.sleep(0.05)
        assert await outbox_rows(namespace) == [fresh.id]
    finally:
        await outbox.stop()
        await bus.stop(grace=1)


@pytest.mark.parametrize("backend", ["postgresql", "mongodb"])
async def test_two_relays_sharing_a_database_publish_each_row_once(
    request: pytest.FixtureRequest, backend: str
) -> None:
    # PostgreSQL: the second relay waits on the row lock, then finds the row gone.
    # MongoDB: its locking write conflicts, is retried, then finds the row gone.
    from nexus_grpc.events import Envelope

    url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mongo_url")
    storages = [await Storage.connect(url) for _ in range(2)]
    namespaces = [s.namespace("plugins/business/inventory") for s in storages]
    for i in range(40):
        envelope = seal(inventory_pb2.StockReserved(order_id=f"o{i}"), source="inventory")
        envelope.time.FromSeconds(envelope.time.seconds - 60)
        await namespaces[0].repository(Envelope, collection=OUTBOX_COLLECTION).create(envelope)

    bus = MemoryBus()
    handled = await listening(bus)
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
    handled = await listening(bus)
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
    try:
        await eventually(lambda: sorted(handled) == ["before", "in-tx", "no-tx"])
        await eventually(lambda: bus.healthy())
        # A handler can see an event before the relay that sent it has marked its row
        # published: the next sweeps delete it.
        for _ in range(100):
            if not await outbox_rows(namespace):
                break
            await outbox.sweep()
            await asyncio.sleep(0.05)
        assert await outbox_rows(namespace) == []
    finally:
        await outbox.stop()
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


# -- regressions -----------------------------------------------------------------------

SHORTAGE = inventory_pb2.StockShortage.DESCRIPTOR.full_name


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[Storage]:
    """One SQLite storage, for behaviour of the relay that no backend changes."""
    async with connected(f"sqlite+aiosqlite:///{tmp_path}/nexus.db") as opened:
        yield opened


async def left_behind(namespace: Namespace, message: Any, *, source: str, age: float = 60):
    """A row as a process that died after its commit leaves it, ``age`` seconds old."""
    from nexus_grpc.events import Envelope

    envelope = seal(message, source=source)
    envelope.time.FromSeconds(envelope.time.seconds - int(age))
    await namespace.repository(Envelope, collection=OUTBOX_COLLECTION).create(envelope)
    return envelope


class RefusingBus(MemoryBus):
    """A memory bus that refuses the types in ``refused``, as Redis refuses a stream key
    an ACL denies or that holds another kind of value."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__()
        self.refused = refused

    async def publish(self, envelope: Any) -> None:
        if envelope.type in self.refused:
            raise BusUnavailableError()
        await super().publish(envelope)


async def test_a_row_of_a_type_this_version_does_not_declare_is_left_to_one_that_does(
    storage: Storage,
) -> None:
    # During a rolling upgrade, the new version of a plugin publishes a type the old one
    # does not list; the old version's relay must not throw the event away.
    namespace = storage.namespace("plugins/business/inventory")
    newer = await left_behind(
        namespace, inventory_pb2.StockShortage(order_id="o1"), source="inventory"
    )
    bus = MemoryBus()
    handled = await listening(bus, SHORTAGE)
    old = Outbox(bus, relay_after=1)
    old.register("inventory", namespace, DECLARED)
    assert await old.sweep() == 0
    assert await outbox_rows(namespace) == [newer.id]

    new = Outbox(bus, relay_after=1)
    new.register("inventory", namespace, DECLARED | {SHORTAGE})
    assert await new.sweep() == 1
    await eventually(lambda: handled == ["o1"])
    assert await outbox_rows(namespace) == []
    await bus.stop(grace=1)


async def test_a_row_claiming_another_plugin_as_its_source_is_never_relayed(
    sqlite: Storage,
) -> None:
    # A plugin owns its namespace and can write into its outbox collection directly:
    # the relay must not publish what it wrote as coming from another plugin.
    namespace = sqlite.namespace("plugins/business/inventory")
    forged = await left_behind(
        namespace, inventory_pb2.StockReserved(order_id="forged"), source="orders"
    )
    bus = MemoryBus()
    handled = await listening(bus)
    outbox = Outbox(bus, relay_after=1)
    outbox.register("inventory", namespace, DECLARED)
    assert await outbox.sweep() == 0
    await bus.stop(grace=1)
    assert handled == []
    assert await outbox_rows(namespace) == [forged.id]


async def test_a_type_the_bus_refuses_does_not_hold_back_other_types_or_plugins(
    sqlite: Storage,
) -> None:
    inventory = sqlite.namespace("plugins/business/inventory")
    orders = sqlite.namespace("plugins/business/orders")
    refused = await left_behind(
        inventory, inventory_pb2.StockShortage(order_id="refused"), source="inventory", age=90
    )
    await left_behind(inventory, inventory_pb2.StockReserved(order_id="i1"), source="inventory")
    await left_behind(orders, inventory_pb2.StockReserved(order_id="o1"), source="orders")
    bus = RefusingBus({SHORTAGE})
    handled = await listening(bus)
    outbox = Outbox(bus, relay_after=1)
    outbox.register("inventory", inventory, DECLARED | {SHORTAGE})
    outbox.register("orders", orders, DECLARED)
    assert await outbox.sweep() == 2
    await eventually(lambda: sorted(handled) == ["i1", "o1"])
    assert await outbox_rows(inventory) == [refused.id]  # kept until the bus takes it

    bus.refused.clear()
    assert await outbox.sweep() == 1
    assert await outbox_rows(inventory) == []
    await bus.stop(grace=1)


async def test_a_backlog_of_a_refused_type_does_not_hide_the_other_types(
    sqlite: Storage,
) -> None:
    # More rows of the refused type than a page holds, all older than the other row.
    inventory = sqlite.namespace("plugins/business/inventory")
    for i in range(150):
        await left_behind(
            inventory, inventory_pb2.StockShortage(order_id=f"r{i}"), source="inventory", age=90
        )
    await left_behind(inventory, inventory_pb2.StockReserved(order_id="ok"), source="inventory")
    bus = RefusingBus({SHORTAGE})
    handled = await listening(bus)
    outbox = Outbox(bus, relay_after=1)
    outbox.register("inventory", inventory, DECLARED | {SHORTAGE})
    assert await outbox.sweep() == 1
    await eventually(lambda: handled == ["ok"])
    assert len(await outbox_rows(inventory)) == 150  # kept until the bus takes them
    await bus.stop(grace=1)


async def test_a_row_locked_elsewhere_stays_this_process_to_relay_at_once(
    tmp_path: Path,
) -> None:
    # A row this process failed to publish is relayed at the next sweep, not after
    # relay_after; a lock it could not get in time must not change that.
    url = f"sqlite+aiosqlite:///{tmp_path}/nexus.db"
    async with connected(url) as other:
        storage = await Storage.connect(url, sqlite_busy_timeout=0.1)
        try:
            namespace = storage.namespace("plugins/business/inventory")
            bus = RefusingBus({EVENT})
            outbox = Outbox(bus, relay_after=3600)
            outbox.register("inventory", namespace, DECLARED)
            publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
            async with namespace.transaction() as unit:
                event = inventory_pb2.StockReserved(order_id="held")
                await publisher.publish(event, transaction=unit)
            bus.refused.clear()

            # Another process writes for longer than this one's busy timeout.
            async with other.namespace("plugins/business/orders").transaction() as unit:
                await unit.repository(inventory_pb2.StockReserved, id_field="order_id").create(
                    inventory_pb2.StockReserved(order_id="elsewhere")
                )
                assert await outbox.sweep() == 0
            assert await outbox.sweep() == 1
            assert await outbox_rows(namespace) == []
        finally:
            await storage.close()


async def test_a_row_that_cannot_be_read_does_not_hold_back_other_plugins(
    tmp_path: Path,
) -> None:
    import sqlite3

    url = f"sqlite+aiosqlite:///{tmp_path}/nexus.db"
    async with connected(url) as storage:
        damaged = storage.namespace("plugins/business/inventory")
        orders = storage.namespace("plugins/business/orders")
        row = await left_behind(
            damaged, inventory_pb2.StockReserved(order_id="x"), source="inventory"
        )
        await left_behind(orders, inventory_pb2.StockReserved(order_id="o1"), source="orders")
        with sqlite3.connect(tmp_path / "nexus.db") as raw:  # storage rot, a bad restore
            raw.execute(
                "UPDATE nexus_records SET payload = ? WHERE id = ?", (b"\x0a\x02\xff\xfe", row.id)
            )
        bus = MemoryBus()
        handled = await listening(bus)
        outbox = Outbox(bus, relay_after=1)
        outbox.register("inventory", damaged, DECLARED)  # registered first: swept first
        outbox.register("orders", orders, DECLARED)
        assert await outbox.sweep() == 1
        await eventually(lambda: handled == ["o1"])
        await bus.stop(grace=1)


async def test_deleting_what_was_published_ends_while_publishing_goes_on(
    sqlite: Storage,
) -> None:
    # Every transaction of the relay lets more after-commit publishes in: deleting what
    # was published must end at what was there when it began, and relaying follow.
    namespace = sqlite.namespace("plugins/business/inventory")
    stranded = await left_behind(
        namespace, inventory_pb2.StockReserved(order_id="s"), source="inventory"
    )
    outbox = Outbox(MemoryBus(), relay_after=1)

    class Busy:
        """The namespace, with 100 publishes landing during each of its transactions."""

        name = namespace.name

        def repository(self, *args: Any, **kwargs: Any) -> Any:
            return namespace.repository(*args, **kwargs)

        def transaction(self) -> Any:
            published = outbox._sources["inventory"].published
            published.update(seal(inventory_pb2.StockReserved(), source="x").id for _ in range(100))
            return namespace.transaction()

    outbox.register("inventory", Busy(), DECLARED)  # type: ignore[arg-type]
    outbox._sources["inventory"].published.add("first")
    assert await asyncio.wait_for(outbox.sweep(), 10) == 1
    assert await outbox_rows(namespace) == []
    assert stranded.id not in await outbox_rows(namespace)


async def test_held_ids_relayed_by_another_process_are_forgotten(sqlite: Storage) -> None:
    namespace = sqlite.namespace("plugins/business/inventory")
    bus = RefusingBus({EVENT})
    mine = Outbox(bus, relay_after=30)
    mine.register("inventory", namespace, DECLARED)
    publisher = Publisher(bus, "inventory", DECLARED, outbox=mine)
    for i in range(5):  # the bus is down: held by this process
        async with namespace.transaction() as unit:
            await publisher.publish(inventory_pb2.StockReserved(order_id=str(i)), transaction=unit)
    held = mine._sources["inventory"].held
    assert len(held) == 5
    # Another process (its clock ahead, or 30 s later) relays them all first.
    bus.refused.clear()
    other = Outbox(bus, relay_after=0)
    other.register("inventory", namespace, DECLARED)
    assert await other.sweep() == 5
    assert await mine.sweep() == 0
    assert held == set()  # not kept for rows that are gone


async def test_after_commit_callbacks_run_in_order_once_committed_and_failures_are_logged(
    sqlite: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = sqlite.namespace("plugins/business/orders")
    ran: list[str] = []

    def callback(name: str, *, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            ran.append(name)
            if fail:
                raise RuntimeError(f"{name} failed")

        return run

    async def roll_back() -> None:
        async with namespace.transaction() as unit:
            unit.after_commit(callback("never"))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await roll_back()
    async with namespace.transaction() as unit:
        unit.after_commit(callback("first", fail=True))
        unit.after_commit(callback("second"))
        assert ran == []  # not before the commit
    assert ran == ["first", "second"]
    assert "after-commit callback of plugins/business/orders failed" in caplog.text
    with pytest.raises(RuntimeError, match="has ended"):
        unit.after_commit(callback("late"))


async def test_an_after_commit_callback_runs_outside_the_transaction(sqlite: Storage) -> None:
    # SQLite has one writer: a callback run while its transaction still held the write
    # lock would wait for itself (the busy timeout, then "database is locked").
    namespace = sqlite.namespace("plugins/business/orders")
    effects = namespace.repository(inventory_pb2.StockReserved, id_field="order_id")

    async def write_again() -> None:
        async with namespace.transaction() as again:
            await again.repository(inventory_pb2.StockReserved, id_field="order_id").create(
                inventory_pb2.StockReserved(order_id="after")
            )

    async with asyncio.timeout(2):  # well within the 5 s busy timeout
        async with namespace.transaction() as unit:
            await unit.repository(inventory_pb2.StockReserved, id_field="order_id").create(
                inventory_pb2.StockReserved(order_id="during")
            )
            unit.after_commit(write_again)
            # Only the transaction runs its callbacks: run early, they would act on
            # uncommitted data.
            assert not hasattr(unit, "run_after_commit")
    assert await effects.get("after") is not None


async def test_a_caller_cancelled_after_its_commit_leaves_the_event_to_the_relay(
    sqlite: Storage,
) -> None:
    namespace = sqlite.namespace("plugins/business/inventory")
    publishing = asyncio.Event()

    class StuckBus(MemoryBus):
        async def publish(self, envelope: Any) -> None:
            publishing.set()
            await asyncio.Event().wait()  # the caller is cancelled while in here

    stuck = StuckBus()
    outbox = Outbox(stuck, relay_after=30)
    outbox.register("inventory", namespace, DECLARED)
    publisher = Publisher(stuck, "inventory", DECLARED, outbox=outbox)

    async def call() -> None:
        async with namespace.transaction() as unit:
            await publisher.publish(inventory_pb2.StockReserved(order_id="c"), transaction=unit)

    task = asyncio.create_task(call())
    await publishing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(await outbox_rows(namespace)) == 1  # committed, and kept
    assert await outbox.sweep() == 0  # its publisher's for relay_after seconds

    bus = MemoryBus()
    handled = await listening(bus)
    relay = Outbox(bus, relay_after=0)
    relay.register("inventory", namespace, DECLARED)
    assert await relay.sweep() == 1
    await eventually(lambda: handled == ["c"])
    await bus.stop(grace=1)


@pytest.mark.parametrize("backend", ["postgresql", "mongodb"])
async def test_two_concurrent_deliveries_of_one_event_take_effect_once(
    request: pytest.FixtureRequest, backend: str
) -> None:
    url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mongo_url")
    storages = [await Storage.connect(url) for _ in range(2)]
    try:
        namespaces = [s.namespace("plugins/business/orders") for s in storages]
        inboxes = [Outbox(MemoryBus()).inbox(n, retention=60) for n in namespaces]
        envelope = seal(inventory_pb2.StockReserved(order_id="o1"), source="inventory")
        first_recorded = asyncio.Event()
        answers: list[bool] = []

        async def handle(index: int) -> None:
            async with namespaces[index].transaction() as unit:
                if index == 1:
                    await first_recorded.wait()
                new = await inboxes[index].first_time(unit, Delivery(envelope, "orders", 1))
                answers.append(new)
                if index == 0:
                    first_recorded.set()
                    await asyncio.sleep(0.3)  # the other records meanwhile, and must wait
                if new:
                    effects = unit.repository(inventory_pb2.StockReserved, id_field="order_id")
                    await effects.create(inventory_pb2.StockReserved(order_id=f"effect-{index}"))

        await asyncio.gather(handle(0), handle(1))
        assert answers == [True, False]
        effects = namespaces[0].repository(inventory_pb2.StockReserved, id_field="order_id")
        assert [e.order_id for e in (await effects.list()).items] == ["effect-0"]
    finally:
        for opened in storages:
            await opened.close()


async def test_batches_of_published_events_are_deleted_at_once_and_relayed_at_the_poll_pace(
    sqlite: Storage,
) -> None:
    # Under load every 100 publishes wake the relay loop to delete their rows; listing
    # the outbox for rows due for a relay waits for the poll interval, and still comes.
    namespace = sqlite.namespace("plugins/business/inventory")
    bus = MemoryBus()
    handled = await listening(bus)

    class Counted(Outbox):
        relay_passes = 0
        relay_passes_over = 0

        async def _relay_source(self, entry: Any, refused: set[str]) -> int:
            Counted.relay_passes += 1
            try:
                return await super()._relay_source(entry, refused)
            finally:
                Counted.relay_passes_over += 1

    poll = 2.0
    outbox = Counted(bus, relay_after=0.5, poll_interval=poll)
    outbox.register("inventory", namespace, DECLARED)
    publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
    await outbox.start()
    try:
        # The first sweep, at start, is over: its list of the outbox cannot see the row
        # left next (begun, it could, and relay it in the same pass).
        await eventually(lambda: Counted.relay_passes_over == 1)
        started = asyncio.get_running_loop().time()
        stranded = await left_behind(
            namespace, inventory_pb2.StockReserved(order_id="stranded"), source="inventory"
        )
        for i in range(350):
            async with namespace.transaction() as unit:
                await publisher.publish(
                    inventory_pb2.StockReserved(order_id=f"o{i}"), transaction=unit
                )
        # The batches of 100 were deleted without waiting for the poll interval.
        published = outbox._sources["inventory"].published
        await eventually(lambda: len(published) < 100, poll / 2)
        # Every row but the stranded one's is published and still to delete, at most.
        assert set(await outbox_rows(namespace)) - {stranded.id} <= published
        elapsed = asyncio.get_running_loop().time() - started
        assert Counted.relay_passes <= 1 + int(elapsed / poll) + 1
        if Counted.relay_passes == 1:  # no relay pass since the row was left
            assert "stranded" not in handled
        # The relay pass comes at the poll pace and publishes the stranded row.
        await eventually(lambda: "stranded" in handled, 2 * poll + 5)
    finally:
        await outbox.stop()
        await bus.stop(grace=1)


async def test_a_failing_relay_is_logged_once_while_deletes_go_on(
    sqlite: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    # Deletes that succeed between two relay passes say nothing about the relay: a relay
    # that keeps failing must not be logged as working again (and failing anew) each pass.
    namespace = sqlite.namespace("plugins/business/inventory")
    bus = MemoryBus()
    await listening(bus)

    class Unreadable(Outbox):
        async def _relay_source(self, entry: Any, refused: set[str]) -> int:
            raise RuntimeError("a row no longer decodes")

    outbox = Unreadable(bus, relay_after=0.5, poll_interval=0.1)
    outbox.register("inventory", namespace, DECLARED)
    publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
    caplog.set_level(logging.INFO, logger="nexus.events")
    await outbox.start()
    try:
        started = asyncio.get_running_loop().time()
        published = 0
        while asyncio.get_running_loop().time() - started < 0.6 or published < 300:
            async with namespace.transaction() as unit:
                await publisher.publish(
                    inventory_pb2.StockReserved(order_id=str(published)), transaction=unit
                )
            published += 1
        await eventually(lambda: len(outbox._sources["inventory"].published) < 100)
    finally:
        await outbox.stop()
        await bus.stop(grace=1)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("outbox relay of inventory failed" in m for m in messages) == 1
    assert not any("works again" in m for m in messages)


async def test_stop_ends_the_relay_loop_even_when_its_cancellation_is_lost(
    sqlite: Storage,
) -> None:
    # Python 3.11's asyncio.wait_for, and any awaited code like it, can drop a
    # cancellation that races with a result: stopping must not wait for ever.
    sweeping = asyncio.Event()

    class LosingCancellations(Outbox):
        async def sweep(self, *, relay: bool = True) -> int:
            sweeping.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.5)
            return 0

    outbox = LosingCancellations(MemoryBus(), poll_interval=0.05)
    outbox.register("inventory", sqlite.namespace("plugins/business/inventory"), DECLARED)
    await outbox.start()
    await sweeping.wait()  # stopped in the middle of a sweep, which drops the cancellation
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopping = asyncio.ensure_future(outbox.stop())
    # Not wait_for: it would drop its own cancellation into stop()'s suppression.
    done, _ = await asyncio.wait([stopping], timeout=5)
    assert done, "stop() still waits for the relay loop after 5 s"
    assert loop.time() - began < 2
