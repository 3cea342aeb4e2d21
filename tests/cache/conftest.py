"""Fixtures of the cache tests: managers closed after each test, raw Redis access."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from nexus_grpc.cache import CacheManager
from tests.cache._support import FakeClock, ManagerFactory


@pytest.fixture
def clock() -> FakeClock:
    """L1's clock, moved by hand."""
    return FakeClock()


@pytest.fixture
async def make_manager() -> AsyncIterator[ManagerFactory]:
    """CacheManagers (not started), all closed at the end of the test."""
    managers: list[CacheManager] = []

    def make(url: str | None, **options: Any) -> CacheManager:
        manager = CacheManager(url, **options)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared test server, to look behind the cache's back."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
