"""A consumer whose storage is down waits for it: no attempt counted, no dead letter.

The storage really fails (a SQLite database on a tmpfs that the test fills up); the
handler is a plugin's usual one (inbox + write in one transaction).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import api_pb2
from google.protobuf.message import Message

from nexus_grpc.events import Delivery, MemoryBus
from nexus_grpc.events.bus import UNAVAILABLE
from nexus_grpc.events.envelope import Envelope
from nexus_grpc.events.outbox import OUTBOX_COLLECTION, Inbox, Outbox
from nexus_grpc.events.redis_bus import RedisBus
from nexus_grpc.storage import Storage
from tests.events.test_redis_bus import EVENT, event, eventually, groups_ready
from tests.fixtures.disk import SmallDisk
from tests.storage import connected

MAX_ATTEMPTS = 3
#: Unique per run: the Redis server is shared by the session's tests.
GROUP = f"consumer-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[MemoryBus | RedisBus]:
    """Each bus backend, with short backoffs and few attempts."""
    if request.param == "memory":
        found: MemoryBus | RedisBus = MemoryBus(
            max_attempts=MAX_ATTEMPTS, backoff=0.01, max_backoff=0.05
        )
    else:
        redis_url: str = request.getfixturevalue("redis_url")
        found = RedisBus(
            redis_url,
            max_attempts=MAX_ATTEMPTS,
            backoff=0.01,
            max_backoff=0.05,
            claim_idle=5.0,
            block=0.05,
        )
    yield found
    await found.stop(grace=0)


async def test_a_storage_outage_never_dead_letters_and_the_event_is_handled_after_it(
    bus: MemoryBus | RedisBus, small_disk: SmallDisk
) -> None:
    async with connected(f"sqlite:///{small_disk.path}/nexus.db") as storage:
        namespace = storage.namespace("tests/consumer")
        inbox = Inbox(namespace, retention=3600)
        handled: list[int] = []

        async def handle(message: Message, delivery: Delivery) -> None:
            order_id: Any = getattr(message, "order_id")  # noqa: B009
            async with namespace.transaction() as unit:
                if not await inbox.first_time(unit, delivery):
                    return
                reservations = unit.repository(api_pb2.Api, id_field="name")
                await reservations.create(api_pb2.Api(name=order_id, version="x" * 4000))
            handled.append(delivery.attempt)

        bus.subscribe(GROUP, EVENT, handle)
        await bus.start()
        if isinstance(bus, RedisBus):
            await groups_ready(bus, GROUP)

        def outages() -> int:
            return bus.counters.handled.get((GROUP, EVENT, UNAVAILABLE), 0)

        small_disk.fill()
        try:
            await bus.publish(event("order-1"))
            # Far more failed runs than attempts allowed: none of them counted.
            await eventually(lambda: outages() > 3 * MAX_ATTEMPTS, seconds=20)
            assert handled == []
            assert bus.dead_letters() == []
        finally:
            small_disk.free()
        await eventually(lambda: handled == [1], seconds=20)  # still its first attempt
        assert bus.dead_letters() == []
        assert await bus.list_dead_letters() == []
        stored = namespace.repository(api_pb2.Api, id_field="name")
        assert (await stored.get("order-1")) is not None


async def test_the_outbox_relay_keeps_its_rows_through_a_storage_outage(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus(max_attempts=MAX_ATTEMPTS, backoff=0.01, max_backoff=0.05)
    received: list[str] = []

    async def handle(message: Message, delivery: Delivery) -> None:
        received.append(delivery.envelope.id)

    bus.subscribe(GROUP, EVENT, handle)
    await bus.start()
    try:
        async with connected(f"sqlite:///{small_disk.path}/nexus.db") as storage:
            namespace = storage.namespace("tests/publisher")
            outbox = Outbox(bus, relay_after=0)
            outbox.register("publisher", namespace, frozenset({EVENT}))
            kept = event("order-2")
            kept.source = "publisher"
            await outbox.keep("publisher", kept)  # as when the bus refused it
            rows = namespace.repository(Envelope, collection=OUTBOX_COLLECTION)

            small_disk.fill()
            try:
                with caplog.at_level(logging.WARNING, logger="nexus.events"):
                    for _ in range(3):
                        assert await outbox.sweep() == 0
                # Published maybe (at least once), but its row could not be deleted: kept.
                assert (await rows.get(kept.id)) is not None
                assert "outbox relay of publisher waits: UNAVAILABLE" in caplog.text
                assert "Traceback" not in caplog.text
            finally:
                small_disk.free()
            assert await outbox.sweep() == 1
            assert (await rows.get(kept.id)) is None
            await eventually(lambda: kept.id in received)
    finally:
        await bus.stop(grace=0)


async def test_a_database_busy_past_its_timeout_never_dead_letters(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock (a backup, a VACUUM, a CLI command)
    longer than the busy timeout is waited out like an outage, not dead-lettered."""
    bus = MemoryBus(max_attempts=MAX_ATTEMPTS, backoff=0.01, max_backoff=0.05)
    path = tmp_path / "nexus.db"
    storage = await Storage.connect(f"sqlite:///{path}", sqlite_busy_timeout=0.05)
    try:
        namespace = storage.namespace("tests/consumer")
        await namespace.repository(api_pb2.Api, id_field="name").create(api_pb2.Api(name="seed"))
        handled: list[int] = []

        async def handle(message: Message, delivery: Delivery) -> None:
            order_id: Any = getattr(message, "order_id")  # noqa: B009
            async with namespace.transaction() as unit:
                await unit.repository(api_pb2.Api, id_field="name").create(
                    api_pb2.Api(name=order_id)
                )
            handled.append(delivery.attempt)

        bus.subscribe(GROUP, EVENT, handle)
        await bus.start()
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # the other process's write lock
            await bus.publish(event("order-1"))
            busy = (GROUP, EVENT, UNAVAILABLE)
            await eventually(lambda: bus.counters.handled.get(busy, 0) > 3 * MAX_ATTEMPTS)
            assert handled == []
            assert bus.dead_letters() == []
        finally:
            other.rollback()
            other.close()
        await eventually(lambda: handled == [1], seconds=20)  # still its first attempt
        assert bus.dead_letters() == []
    finally:
        await bus.stop(grace=0)
        await storage.close()
