"""Stopping the invalidation listener always ends it, even when a cancellation is lost.

A cancellation that lands as one of redis-py's read timeouts expires can be absorbed
into the timeout; the listener then ran on, ``stop()`` waited for ever (a test's
teardown hung until pytest-timeout) and its connection stayed open. Here the
housekeeping callback swallows the cancellation, which is the same situation, made
deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from nexus_grpc.cache._invalidation import InvalidationListener


async def test_stop_ends_a_listener_whose_cancellation_was_swallowed(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    entered = asyncio.Event()

    async def swallowing_idle() -> None:
        entered.set()
        # Lost, as redis-py's timeouts can lose it.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    listener = InvalidationListener(
        client,
        "nexus:test:invalidate",
        on_key=lambda key: None,
        on_up=lambda: None,
        on_down=lambda: None,
        on_idle=swallowing_idle,
        ping_interval=0.05,
    )
    try:
        listener.start()
        await asyncio.wait_for(listener.wait_subscribed(), 10)
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.wait_for(listener.stop(), 10)
        assert not listener.subscribed
    finally:
        await client.aclose()
