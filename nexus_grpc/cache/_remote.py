"""The Redis layer (L2): reads, writes and their announcements, never raising.

Every command reports failure as a value (a miss, or False) rather than an exception:
a cache must never fail the request that uses it. Failures are logged once per streak
of failures (a warning on the first, a note when Redis answers again), not per call.

After a failure to *reach* Redis, commands are not even tried for ``retry_after``
seconds (then one is tried again, and so on): with Redis unreachable each call would
otherwise wait up to its timeout, and a cache that makes every request slow is as bad
as one that makes it fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nexus_grpc import tracing
from nexus_grpc.cache._stats import Counters
from nexus_grpc.storage.spans import client_span, server_of_redis

__all__ = ["Found", "RemoteCache"]

_log = logging.getLogger("nexus.cache")


@dataclass(frozen=True, slots=True)
class Found:
    """A value read from Redis and how long Redis keeps it (None: no expiry set)."""

    value: bytes
    ttl: float | None


class RemoteCache:
    """Values in Redis under full keys, with writes announced on ``channel``."""

    def __init__(
        self, client: aioredis.Redis, *, channel: str, counters: Counters, retry_after: float
    ) -> None:
        self._client = client
        self._server = server_of_redis(client)  # for command spans; the client is fixed
        self._channel = channel
        self._counters = counters
        self._retry_after = retry_after
        self._skip_until = 0.0
        self._failing = False

    async def get(self, key: str) -> Found | None:
        """The value of ``key`` and its remaining lifetime; None if missing or unreachable."""

        async def read() -> list[object]:
            # One transaction: the lifetime is that of the value read, not of a value
            # another process wrote in between.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                return await pipe.execute()

        reply = await self._guarded(read, "GET PTTL")
        if reply is None:
            return None
        value, pttl = reply
        if not isinstance(value, bytes):
            self._counters.l2_misses += 1
            return None
        self._counters.l2_hits += 1
        # PTTL is -1 for a key without expiry (written by something else than this
        # cache, which always sets one).
        ttl = pttl / 1000 if isinstance(pttl, int) and pttl > 0 else None
        return Found(value, ttl)

    async def store(self, key: str, value: bytes, ttl: float) -> bool:
        """SET ``key`` for ``ttl`` seconds and announce it; whether both got through."""

        async def write() -> list[object]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(key, value, px=max(1, round(ttl * 1000)))
                pipe.publish(self._channel, key)
                return await pipe.execute()

        return await self._guarded(write, "SET PUBLISH") is not None

    async def remove(self, key: str) -> bool:
        """DEL ``key`` and announce it; whether both got through."""

        async def write() -> list[object]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.delete(key)
                pipe.publish(self._channel, key)
                return await pipe.execute()

        return await self._guarded(write, "DEL PUBLISH") is not None

    async def announce(self, key: str) -> bool:
        """Only PUBLISH ``key`` on the channel (no value); whether it got through."""

        async def write() -> list[object]:
            return [await self._client.publish(self._channel, key)]

        return await self._guarded(write, "PUBLISH") is not None

    async def _guarded(
        self, command: Callable[[], Awaitable[list[object]]], operation: str
    ) -> list[object] | None:
        """The replies of ``command`` (a pipeline of the Redis commands named by
        ``operation``), or None when it failed or was skipped."""
        if self._skip_until and time.monotonic() < self._skip_until:
            self._counters.l2_errors += 1
            return None
        try:
            if tracing.enabled():
                # One span per pipeline, i.e. per cache operation: its commands travel
                # in one round trip. The key is not recorded (it may hold user data).
                with client_span("redis", operation, server=self._server):
                    result = await command()
            else:
                result = await command()
        except (RedisError, OSError) as error:
            self._counters.l2_errors += 1
            unreachable = isinstance(error, RedisConnectionError | RedisTimeoutError | OSError)
            if unreachable:
                self._skip_until = time.monotonic() + self._retry_after
            if not self._failing:
                self._failing = True
                # The class and the commands only: redis-py's message may quote the
                # command with its key and value (user data).
                _log.warning(
                    "cache: Redis %s (%s on %s); reads miss and writes only reach this "
                    "process until it answers again",
                    "unreachable" if unreachable else "command failed",
                    type(error).__name__,
                    operation,
                )
            return None
        self._skip_until = 0.0
        if self._failing:
            self._failing = False
            _log.info("cache: Redis answers again")
        return result
