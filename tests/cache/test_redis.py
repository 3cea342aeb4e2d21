"""L1 in front of a real Redis: hits per layer, lifetimes, namespaces, invalidation
between two managers (two processes), and a lost subscription.

L1 runs on a hand-turned clock, so an L1 entry never expires unless the test says so:
when a manager reads a new value, something invalidated its L1, not time.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from nexus.orders.v1 import orders_pb2

from nexus_grpc.cache import Cache, CacheManager
from tests.cache._support import FakeClock, ManagerFactory, eventually

NS = "plugins/orders"
KEY = f"nexus:cache:{NS}:k"


async def started(manager: CacheManager) -> CacheManager:
    await manager.start()
    assert manager.stats().l1_active
    return manager


async def heard(manager: CacheManager, invalidations: int) -> None:
    """Wait until ``manager`` received ``invalidations`` messages (its own included)."""
    await eventually(
        lambda: manager.stats().invalidations >= invalidations, what="invalidation message"
    )


async def test_repeated_reads_are_answered_by_l1(
    redis_url: str, make_manager: ManagerFactory, clock: FakeClock, raw: aioredis.Redis
) -> None:
    manager = await started(make_manager(redis_url, clock=clock, l1_ttl=5))
    cache = manager.for_namespace(NS)
    await cache.set("k", b"v1")
    await heard(manager, 1)  # its own message: it dropped the key it never held
    assert await cache.get("k") == b"v1"  # from Redis, now in L1
    await raw.set(KEY, b"behind the cache's back")  # no invalidation published
    assert await cache.get("k") == b"v1"
    assert await cache.get("k") == b"v1"
    stats = manager.stats()
    assert (stats.l1_hits, stats.l1_misses, stats.l2_hits) == (2, 1, 1)
    assert stats.l1_entries == 1


async def test_redis_answers_once_the_l1_lifetime_is_over(
    redis_url: str, make_manager: ManagerFactory, clock: FakeClock, raw: aioredis.Redis
) -> None:
    manager = await started(make_manager(redis_url, clock=clock, l1_ttl=5))
    cache = manager.for_namespace(NS)
    await raw.set(KEY, b"v1", px=300_000)
    assert await cache.get("k") == b"v1"
    await raw.set(KEY, b"v2", px=300_000)
    clock.advance(4.9)
    assert await cache.get("k") == b"v1"  # L1, still within l1_ttl
    clock.advance(0.1)
    assert await cache.get("k") == b"v2"  # L1 expired: Redis
    stats = manager.stats()
    assert (stats.l1_hits, stats.l2_hits, stats.l2_misses) == (1, 2, 0)


async def test_entries_expire_in_both_layers(
    redis_url: str, make_manager: ManagerFactory, clock: FakeClock, raw: aioredis.Redis
) -> None:
    manager = await started(make_manager(redis_url, clock=clock, l1_ttl=60))
    cache = manager.for_namespace(NS)
    await cache.set("k", b"short-lived", ttl=0.5)
    await heard(manager, 1)
    assert 0 < await raw.pttl(KEY) <= 500  # SET ... PX
    assert await cache.get("k") == b"short-lived"  # L1 filled, for what Redis has left
    await eventually(lambda: _gone(raw), seconds=3, what="expiry in Redis")
    clock.advance(0.5)  # L1's lifetime was capped by the entry's, not l1_ttl = 60
    before = manager.stats()
    assert await cache.get("k") is None
    after = manager.stats()
    assert after.l1_misses == before.l1_misses + 1
    assert after.l2_misses == before.l2_misses + 1


async def _gone(raw: aioredis.Redis) -> bool:
    return await raw.exists(KEY) == 0


async def test_keys_are_namespaced_in_redis(
    redis_url: str, make_manager: ManagerFactory, raw: aioredis.Redis
) -> None:
    one = await started(make_manager(redis_url))
    other_process = await started(make_manager(redis_url))
    orders = one.for_namespace("plugins/orders")
    inventory = other_process.for_namespace("plugins/inventory")
    await orders.set("item", b"from orders")
    assert await inventory.get("item") is None
    assert await other_process.for_namespace("plugins/orders").get("item") == b"from orders"
    await inventory.set("item", b"from inventory")
    await inventory.delete("item")
    assert await orders.get("item") == b"from orders"
    assert await raw.keys("*") == [b"nexus:cache:plugins/orders:item"]
    other_deployment = await started(make_manager(redis_url, prefix="staging"))
    assert await other_deployment.for_namespace("plugins/orders").get("item") is None


async def test_a_write_in_one_manager_invalidates_the_others_l1(
    redis_url: str, make_manager: ManagerFactory
) -> None:
    # Two managers = two host processes; their L1s would never expire on their own.
    writer = await started(make_manager(redis_url, clock=FakeClock(), l1_ttl=60))
    reader = await started(make_manager(redis_url, clock=FakeClock(), l1_ttl=60))
    writes, reads = writer.for_namespace(NS), reader.for_namespace(NS)
    await writes.set("k", b"v1")
    await heard(reader, 1)
    assert await reads.get("k") == b"v1"
    assert await reads.get("k") == b"v1"
    assert reader.stats().l1_hits == 1  # it is in the reader's L1 now

    await writes.set("k", b"v2")
    await eventually(lambda: _reads(reads, b"v2"), what="reader sees the new value")
    assert reader.stats().invalidations >= 2

    assert await reads.get("k") == b"v2"  # back in L1
    await writes.delete("k")
    await eventually(lambda: _reads(reads, None), what="reader sees the deletion")
    assert await writes.get("k") is None


async def _reads(cache: Cache, expected: bytes | None) -> bool:
    return await cache.get("k") == expected


async def test_a_lost_subscription_clears_l1_and_bypasses_it_until_resubscribed(
    redis_url: str, make_manager: ManagerFactory, clock: FakeClock, raw: aioredis.Redis
) -> None:
    manager = await started(make_manager(redis_url, clock=clock, l1_ttl=60))
    cache = manager.for_namespace(NS)
    await raw.set(KEY, b"v1", px=300_000)
    assert await cache.get("k") == b"v1"
    assert manager.stats().l1_entries == 1
    # Kill the pub/sub connection: whatever was published until it is back is lost.
    listeners = [
        client["id"]
        for client in await raw.client_list(_type="pubsub")
        if client["name"] == "nexus-cache-invalidation"
    ]
    assert len(listeners) == 1
    await raw.client_kill_filter(_id=listeners[0])
    await raw.set(KEY, b"v2", px=300_000)  # a write whose message nobody heard
    await eventually(lambda: manager.stats().subscriptions >= 2, what="resubscription")
    assert await cache.get("k") == b"v2"  # not the old L1 copy
    stats = manager.stats()
    assert stats.l1_active and stats.l1_hits == 0


async def test_get_or_load_shares_one_load_per_process_and_the_value_across_them(
    redis_url: str, make_manager: ManagerFactory
) -> None:
    first = await started(make_manager(redis_url))
    second = await started(make_manager(redis_url))
    calls = 0
    gate = asyncio.Event()

    async def loader() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b"expensive"

    cache = first.for_namespace(NS)
    waiters = [asyncio.create_task(cache.get_or_load("k", loader, ttl=30)) for _ in range(10)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*waiters) == [b"expensive"] * 10
    assert calls == 1 and first.stats().loads == 1
    assert await second.for_namespace(NS).get_or_load("k", loader) == b"expensive"
    assert calls == 1 and second.stats().loads == 0 and second.stats().l2_hits == 1


async def test_messages_written_by_one_manager_are_read_by_another(
    redis_url: str, make_manager: ManagerFactory
) -> None:
    writer = await started(make_manager(redis_url))
    reader = await started(make_manager(redis_url))
    order = orders_pb2.Order(id="order-1", customer_id="alice", currency_code="EUR")
    order.items.add(sku="BOOK-1", quantity=2, unit_price_cents=1250)
    await writer.for_namespace(NS).set_message("order-1", order, ttl=60)
    assert await reader.for_namespace(NS).get_message("order-1", orders_pb2.Order) == order
    assert await reader.for_namespace(NS).get_message("order-2", orders_pb2.Order) is None


async def test_stats_are_a_plain_mapping_for_metrics(
    redis_url: str, make_manager: ManagerFactory
) -> None:
    manager = await started(make_manager(redis_url))
    await manager.for_namespace(NS).get("nothing")
    stats = manager.stats().as_dict()
    assert stats["l1_misses"] == 1 and stats["l2_misses"] == 1 and stats["l2_errors"] == 0
    assert stats["subscriptions"] == 1 and stats["l1_active"] is True
    assert set(stats) == {
        "l1_hits", "l1_misses", "l2_hits", "l2_misses", "l2_errors", "loads",
        "invalidations", "subscriptions", "l1_entries", "l1_active",
    }  # fmt: skip


async def test_a_read_racing_a_write_cannot_leave_the_old_value_in_l1(
    redis_url: str, make_manager: ManagerFactory, clock: FakeClock, raw: aioredis.Redis
) -> None:
    manager = await started(make_manager(redis_url, clock=clock, l1_ttl=60))
    cache = manager.for_namespace(NS)
    await raw.set(KEY, b"v0", px=300_000)
    # Writes wait in Redis, reads do not: the read below starts after the write
    # (and after its first L1 drop) but Redis answers it with the old value.
    await raw.client_pause(500, all=False)
    try:
        write = asyncio.create_task(cache.set("k", b"v1"))
        await asyncio.sleep(0.05)
        assert await cache.get("k") == b"v0"
        assert not write.done()
    finally:
        await raw.client_unpause()
    await write
    assert await cache.get("k") == b"v1"  # at once: not waiting for the own message


async def test_anyone_may_invalidate_a_key_and_garbage_on_the_channel_is_harmless(
    redis_url: str, make_manager: ManagerFactory, clock: FakeClock, raw: aioredis.Redis
) -> None:
    manager = await started(make_manager(redis_url, clock=clock, l1_ttl=60))
    cache = manager.for_namespace(NS)
    await raw.set(KEY, b"v1", px=300_000)
    assert await cache.get("k") == b"v1"
    await raw.set(KEY, b"v2", px=300_000)
    await raw.publish("nexus:cache:invalidate", b"\xff\xfe not utf-8")
    await raw.publish("nexus:cache:invalidate", KEY)  # e.g. an operator with redis-cli
    await eventually(lambda: _reads(cache, b"v2"), what="invalidation by hand")
    assert manager.stats().subscriptions == 1  # the listener survived the garbage
