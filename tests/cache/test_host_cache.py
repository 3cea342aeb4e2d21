"""The cache as plugins get it from the host: ``ctx.cache``, shared and invalidated
across two hosts on one Redis, and its metrics at ``/metrics``."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from pathlib import Path

import httpx
import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.cache import Cache
from nexus_grpc.config import (
    CacheConfig,
    Config,
    HttpConfig,
    PluginsConfig,
    ServerConfig,
    StorageConfig,
)
from nexus_grpc.host import Host
from nexus_grpc.storage.opening import StorageStartError
from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[2]


def cache_of(running: RunningHost, plugin: str) -> Cache:
    record = running.host.plugins.record(plugin)
    assert record is not None and record.context is not None
    cache = record.context.cache
    assert cache is not None
    return cache


async def test_plugins_get_their_own_cache_namespace_on_the_embedded_default(
    tmp_path: Path,
) -> None:
    async with running_host(
        plugins=["orders", "inventory"], plugin_dirs=[REPO / "plugins"], data_dir=tmp_path
    ) as shop:
        orders, inventory = cache_of(shop, "orders"), cache_of(shop, "inventory")
        assert orders.namespace == "plugins/business/orders"
        await orders.set_message("o1", orders_pb2.Order(id="o1", customer_id="c1"), ttl=60)
        cached = await orders.get_message("o1", orders_pb2.Order)
        assert cached is not None and cached.customer_id == "c1"
        assert await inventory.get("o1") is None  # another plugin, another namespace


async def test_a_write_on_one_host_invalidates_the_other_hosts_copy(
    tmp_path: Path, redis_url: str
) -> None:
    config = CacheConfig(backend="redis", redis_url=redis_url, l1_ttl=60.0)
    async with (
        running_host(
            plugins=["orders"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path / "a",
            cache=config,
            http=True,
        ) as first,
        running_host(
            plugins=["orders"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path / "b",
            cache=config,
        ) as second,
    ):
        writer, reader = cache_of(first, "orders"), cache_of(second, "orders")
        await writer.set("price", b"100", ttl=60)
        assert await reader.get("price") == b"100"  # from Redis, now also in its L1
        hits = second.host.cache.stats().l1_hits
        assert await reader.get("price") == b"100"
        assert second.host.cache.stats().l1_hits == hits + 1  # from its L1
        await writer.set("price", b"120", ttl=60)
        deadline = asyncio.get_running_loop().time() + 5
        while await reader.get("price") != b"120":  # L1 dropped on the invalidation
            assert asyncio.get_running_loop().time() < deadline, "never invalidated"
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=first.http_url) as client:
            metrics = (await client.get("/metrics")).text
        assert 'nexus_cache_requests_total{layer="l1",result="miss"}' in metrics
        assert "nexus_cache_l1_entries" in metrics


def dead_port() -> int:
    """A loopback port nothing listens on (bound by no one once returned)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{dead_port()}/0"


async def test_a_host_starts_with_the_cache_redis_down_within_the_cache_timeout(
    tmp_path: Path,
) -> None:
    config = CacheConfig(backend="redis", redis_url=dead_redis_url())
    began = time.monotonic()
    async with running_host(
        plugins=["orders"], plugin_dirs=[REPO / "plugins"], data_dir=tmp_path, cache=config
    ) as shop:
        assert time.monotonic() - began < 5  # the cache waits its 1 s timeout, no more
        cache = cache_of(shop, "orders")
        assert await cache.get("k") is None  # a miss, not an error

        async def load() -> bytes:
            return b"from the database"

        assert await cache.get_or_load("k", load) == b"from the database"
        assert not shop.host.cache.stats().l1_active


async def test_a_host_whose_start_fails_before_the_cache_started_closes_it_cleanly(
    tmp_path: Path,
) -> None:
    # Storage is unreachable: start fails after the ports, before cache.start(); the
    # cache is closed unstarted, and nothing is left open (warnings are errors here).
    config = Config(
        data_dir=str(tmp_path),
        # Both ports on 0: Config's defaults (127.0.0.1:50051, HTTP on 127.0.0.1:8080)
        # made this test fail whenever anything else listened there.
        server=ServerConfig(grpc_address="127.0.0.1:0"),
        http=HttpConfig(address="127.0.0.1:0"),
        plugins=PluginsConfig(dirs=(), entry_points=False),
        storage=StorageConfig(url=f"postgresql+asyncpg://u:p@127.0.0.1:{dead_port()}/nexus"),
        cache=CacheConfig(backend="redis", redis_url=dead_redis_url()),
    )
    host = Host(config)
    with pytest.raises(StorageStartError, match=r"storage .* is not reachable: connection refused"):
        await host.start()
    assert host.cache.stats().l1_entries == 0
    gc.collect()
