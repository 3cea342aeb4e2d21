"""Redis going away and coming back: nothing raises, nothing stale is served, writes
that missed Redis are repaired. Each test has a redis-server of its own to stop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.cache import Cache, CacheManager
from tests.cache._support import FakeClock, ManagerFactory, eventually
from tests.fixtures.redis import OwnRedis

NS = "plugins/orders"
KEY = f"nexus:cache:{NS}:k"


def outage_manager(make_manager: ManagerFactory, redis: OwnRedis, clock: FakeClock) -> CacheManager:
    # A long l1_ttl on a clock that does not move: an L1 entry could only disappear
    # because the manager dropped it.
    return make_manager(redis.url, clock=clock, l1_ttl=60, timeout=0.5, retry_after=0.05)


async def has(cache: Cache, key: str, expected: bytes | None) -> bool:
    return await cache.get(key) == expected


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "nexus.cache" and r.levelno >= logging.WARNING
    ]


async def test_redis_down_then_back_never_raises_nor_serves_stale_l1(
    own_redis: OwnRedis,
    make_manager: ManagerFactory,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.cache")
    manager = outage_manager(make_manager, own_redis, clock)
    await manager.start()
    cache = manager.for_namespace(NS)
    await cache.set("k", b"v1")
    await eventually(lambda: manager.stats().invalidations >= 1)
    assert await cache.get("k") == b"v1"
    assert manager.stats().l1_entries == 1

    own_redis.stop()
    await eventually(lambda: not manager.stats().l1_active, what="L1 bypassed")
    assert manager.stats().l1_entries == 0  # cleared, not merely bypassed
    assert await cache.get("k") is None  # a miss, not the L1 copy
    for _ in range(20):
        assert await cache.get("other") is None

    calls = 0

    async def loader() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return b"from the database"

    assert await cache.get_or_load("loaded", loader) == b"from the database"
    assert calls == 1
    # Concurrent misses still share one load per process.
    loads = [cache.get_or_load("z", loader) for _ in range(5)]
    assert await asyncio.gather(*loads) == [b"from the database"] * 5
    assert calls == 2
    # Writes to other keys: "k" must stay untouched, for the check after the outage
    # (these keys are deleted again once Redis is back, see the repairs test).
    await cache.set("w", b"during the outage")
    await cache.delete("w")
    await cache.set_message("m", orders_pb2.Order(id="order-1"), ttl=5)
    assert await cache.get("w") is None
    stats = manager.stats()
    assert stats.l2_errors >= 25 and stats.l2_hits == 1 and stats.loads == 2
    # One warning per layer for the whole outage, not one per call.
    assert len(warnings_of(caplog)) == 2, warnings_of(caplog)
    assert any("Redis unreachable" in m for m in warnings_of(caplog))
    assert any("invalidation channel" in m for m in warnings_of(caplog))

    own_redis.start()
    # Another process writes while this one has not resubscribed yet: no message
    # reaches us for it, so only a cleared L1 keeps us from serving v1.
    own_redis.server.command("SET", KEY, "v3")
    await eventually(lambda: manager.stats().l1_active, what="resubscribed")
    await eventually(lambda: has(cache, "k", b"v3"), what="reads from Redis again")
    assert manager.stats().subscriptions == 2
    await cache.set("k", b"v4")
    assert await cache.get("k") == b"v4"
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert len(warnings_of(caplog)) == 2


async def test_starting_with_redis_down_does_not_fail(
    own_redis: OwnRedis, make_manager: ManagerFactory, clock: FakeClock
) -> None:
    own_redis.stop()
    manager = make_manager(own_redis.url, clock=clock, timeout=0.2, retry_after=0.05)
    began = time.monotonic()
    await manager.start()  # waits for the subscription at most `timeout`
    assert time.monotonic() - began < 2
    assert not manager.stats().l1_active
    cache = manager.for_namespace(NS)

    async def loader() -> bytes:
        return b"loaded"

    assert await cache.get_or_load("k", loader) == b"loaded"
    own_redis.start()
    await eventually(lambda: manager.stats().l1_active, what="subscribed")
    await eventually(lambda: has(cache, "j", None))  # Redis reachable again
    await cache.set("j", b"cached")
    assert await cache.get("j") == b"cached"
    assert manager.stats().l2_hits >= 1


async def test_writes_that_missed_redis_are_repaired_once_it_is_back(
    own_redis: OwnRedis, make_manager: ManagerFactory, clock: FakeClock
) -> None:
    writer = outage_manager(make_manager, own_redis, clock)
    other = outage_manager(make_manager, own_redis, FakeClock())
    await writer.start()
    await other.start()
    cache = writer.for_namespace(NS)
    own_redis.stop()
    await eventually(lambda: not writer.stats().l1_active, what="outage noticed")
    await cache.delete("k")
    await cache.set("j", b"new")  # did not reach Redis either: the old value would stay
    # Redis comes back with the old values (as from a replica or a snapshot). Set
    # synchronously, before the event loop lets the writer do anything.
    own_redis.start()
    own_redis.server.command("SET", KEY, "old")
    own_redis.server.command("SET", f"nexus:cache:{NS}:j", "old")
    heard = other.stats().invalidations

    def gone() -> bool:
        return own_redis.server.command("EXISTS", KEY, f"nexus:cache:{NS}:j") == b":0\r\n"

    await eventually(gone, what="repair of both keys")
    assert await cache.get("k") is None and await cache.get("j") is None
    # The repairs were announced: other processes dropped their L1 copies too.
    await eventually(lambda: other.stats().invalidations >= heard + 2, what="announcements")


async def test_a_hanging_redis_costs_one_timeout_not_one_per_call(
    own_redis: OwnRedis, make_manager: ManagerFactory
) -> None:
    manager = make_manager(own_redis.url, timeout=0.2, retry_after=5)
    await manager.start()
    cache = manager.for_namespace(NS)
    await cache.set("k", b"v")
    # Redis accepts connections and commands but answers nothing for a second (the
    # pause ends by itself: an UNPAUSE would wait for it like any other command).
    own_redis.server.command("CLIENT", "PAUSE", "1000", "ALL")
    began = time.monotonic()
    assert await cache.get("k") is None  # times out after 0.2 s
    first = time.monotonic() - began
    began = time.monotonic()
    for _ in range(50):
        assert await cache.get("k") is None
    rest = time.monotonic() - began
    assert 0.15 < first < 1.5
    assert rest < 0.1  # not even tried while Redis was just found unreachable
    assert manager.stats().l2_errors == 51
