"""A reload keeps the plugin's consumer group: no event lost or handled twice across
it, on the memory bus and on Redis Streams."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from nexus.admin.v1 import admin_pb2
from nexus.orders.v1 import events_pb2

from nexus_grpc.config import EventsConfig
from nexus_grpc.events import seal
from tests.hotswap.helpers import SwapHost, swap_host
from tests.hotswap.plugin_source import write_plugin

pytestmark = pytest.mark.asyncio

EVENTS = 60
RELOADS = 3


async def _publish_across_reloads(host: SwapHost, seen: list[tuple[str, str]]) -> set[str]:
    published: set[str] = set()
    for round_ in range(RELOADS + 1):
        for _ in range(EVENTS // (RELOADS + 1)):
            envelope = seal(events_pb2.OrderCreated(), source="test")
            published.add(envelope.id)
            await host.running.host.bus.publish(envelope)
        if round_ < RELOADS:
            write_plugin(host.plugins, str(round_ + 2), consumes=True)
            await host.admin.ReloadPlugin(admin_pb2.ReloadPluginRequest(name="swapper"), timeout=20)
    for _ in range(400):  # 20 s at most
        if len(seen) >= len(published):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    return published


async def _check(tmp_path: Path, **options: Any) -> None:
    seen: list[tuple[str, str]] = []
    (tmp_path / "plugins").mkdir()
    write_plugin(tmp_path / "plugins", "1", consumes=True)
    async with swap_host(
        tmp_path, write=False, plugin_config={"swapper": {"seen": seen}}, **options
    ) as host:
        if options.get("events") is not None:
            await _wait_for_group(options["events"].redis_url)
        published = await _publish_across_reloads(host, seen)
    ids = [event_id for event_id, _ in seen]
    assert sorted(ids) == sorted(published), "every event handled exactly once"
    versions = {version for _, version in seen}
    assert len(versions) > 1, f"handled by one version only: {versions}"


async def _wait_for_group(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    stream = "nexus:events:nexus.orders.v1.OrderCreated"
    try:
        for _ in range(200):
            try:
                groups = await client.xinfo_groups(stream)
            except aioredis.ResponseError:
                groups = []
            if any(info["name"] == b"swapper" for info in groups):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the swapper consumer group never appeared")
    finally:
        await client.aclose()


async def test_the_memory_bus_group_survives_reloads(tmp_path: Path) -> None:
    await _check(tmp_path)


async def test_the_redis_group_survives_reloads(tmp_path: Path, redis_url: str) -> None:
    await _check(
        tmp_path, events=EventsConfig(backend="redis", redis_url=redis_url, claim_idle=5.0)
    )
