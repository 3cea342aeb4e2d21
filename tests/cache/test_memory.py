"""Memory-only mode (no Redis), and what every mode shares: namespaces, arguments,
single-flight loads and the protobuf helpers."""

from __future__ import annotations

import asyncio

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.cache import Cache
from tests.cache._support import FakeClock, ManagerFactory


@pytest.fixture
async def cache(make_manager: ManagerFactory, clock: FakeClock) -> Cache:
    manager = make_manager(None, clock=clock, l1_ttl=5.0, default_ttl=300.0)
    await manager.start()
    return manager.for_namespace("plugins/orders")


async def test_memory_only_mode_sets_gets_and_deletes(
    make_manager: ManagerFactory, cache: Cache
) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"value")
    assert await cache.get("k") == b"value"
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.delete("never-set")  # no error


async def test_memory_only_entries_live_their_full_ttl_not_l1_ttl(
    make_manager: ManagerFactory, clock: FakeClock
) -> None:
    # l1_ttl bounds staleness between processes; with one process there is none.
    manager = make_manager(None, clock=clock, l1_ttl=5.0, default_ttl=30.0)
    await manager.start()
    cache = manager.for_namespace("plugins/orders")
    await cache.set("short", b"s", ttl=10)
    await cache.set("default", b"d")
    clock.advance(9.9)
    assert (await cache.get("short"), await cache.get("default")) == (b"s", b"d")
    clock.advance(0.1)
    assert await cache.get("short") is None
    clock.advance(20)
    assert await cache.get("default") is None
    stats = manager.stats()
    assert stats.l1_active and stats.l1_hits == 2 and stats.l1_misses == 2
    assert stats.l2_hits == stats.l2_misses == stats.l2_errors == 0


async def test_l1_holds_at_most_max_entries_least_recently_used_first_out(
    make_manager: ManagerFactory, clock: FakeClock
) -> None:
    manager = make_manager(None, clock=clock, max_entries=3)
    cache = manager.for_namespace("plugins/orders")
    for key in "abc":
        await cache.set(key, key.encode())
    assert await cache.get("a") == b"a"  # "b" is now the least recently used
    await cache.set("d", b"d")
    assert [await cache.get(key) for key in "abcd"] == [b"a", None, b"c", b"d"]
    assert manager.stats().l1_entries == 3


async def test_namespaces_do_not_see_each_others_keys(make_manager: ManagerFactory) -> None:
    manager = make_manager(None)
    orders = manager.for_namespace("plugins/orders")
    inventory = manager.for_namespace("plugins/inventory")
    assert manager.for_namespace("plugins/orders") is orders
    await orders.set("item", b"from orders")
    assert await inventory.get("item") is None
    await inventory.set("item", b"from inventory")
    await inventory.delete("item")
    assert await orders.get("item") == b"from orders"


@pytest.mark.parametrize("name", ["", "plugins:orders", "Plugins/Orders", "a//b", "a b"])
def test_namespaces_that_could_collide_are_refused(make_manager: ManagerFactory, name: str) -> None:
    manager = make_manager(None)
    with pytest.raises(ValueError, match="namespace"):
        manager.for_namespace(name)


async def test_misuse_raises_at_once(make_manager: ManagerFactory, cache: Cache) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", b"v", ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", b"v", ttl=float("inf"))
    with pytest.raises(TypeError, match="bytes"):
        await cache.set("k", "text")  # type: ignore[arg-type]

    async def wrong() -> bytes:
        return "text"  # type: ignore[return-value]

    with pytest.raises(TypeError, match="bytes"):
        await cache.get_or_load("k", wrong)
    assert await cache.get("k") is None
    with pytest.raises(ValueError, match="l1_ttl"):
        make_manager(None, l1_ttl=-1)


async def test_get_or_load_calls_the_loader_once_for_concurrent_misses(
    make_manager: ManagerFactory, cache: Cache
) -> None:
    calls = 0
    gate = asyncio.Event()

    async def loader() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b"loaded"

    waiters = [asyncio.create_task(cache.get_or_load("k", loader)) for _ in range(20)]
    await asyncio.sleep(0.01)  # let every caller reach the shared load
    gate.set()
    assert await asyncio.gather(*waiters) == [b"loaded"] * 20
    assert calls == 1
    assert await cache.get_or_load("k", loader) == b"loaded"  # cached now
    assert calls == 1


async def test_a_loader_error_reaches_every_waiter_and_is_not_cached(cache: Cache) -> None:
    calls = 0
    gate = asyncio.Event()

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("database down")

    waiters = [asyncio.create_task(cache.get_or_load("k", failing)) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "database down" for r in results)

    async def working() -> bytes:
        return b"fine"

    assert await cache.get_or_load("k", working) == b"fine"


async def test_a_cancelled_caller_does_not_cancel_the_shared_load(cache: Cache) -> None:
    gate = asyncio.Event()

    async def loader() -> bytes:
        await gate.wait()
        return b"loaded"

    impatient = asyncio.create_task(cache.get_or_load("k", loader))
    patient = asyncio.create_task(cache.get_or_load("k", loader))
    await asyncio.sleep(0.01)
    impatient.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await patient == b"loaded"
    assert impatient.cancelled()
    assert await cache.get("k") == b"loaded"


async def test_messages_round_trip_and_garbage_reads_as_a_miss(cache: Cache) -> None:
    order = orders_pb2.Order(id="order-1", customer_id="alice", currency_code="EUR")
    order.items.add(sku="BOOK-1", quantity=2, unit_price_cents=1250)
    await cache.set_message("order-1", order, ttl=60)
    read = await cache.get_message("order-1", orders_pb2.Order)
    assert isinstance(read, orders_pb2.Order) and read == order
    assert read is not order
    assert await cache.get_message("missing", orders_pb2.Order) is None
    await cache.set("broken", b"\xff\xff\xff")
    assert await cache.get_message("broken", orders_pb2.Order) is None
