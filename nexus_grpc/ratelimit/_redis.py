"""Token buckets in Redis, shared by every instance of the host."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import grpc
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from nexus_grpc.errors import StatusError
from nexus_grpc.ratelimit._buckets import Decision, RateClass

__all__ = ["RedisBuckets"]

_log = logging.getLogger("nexus.ratelimit")

# Refill and take in one step, so two instances can never both spend the last token.
# The clock is the server's (TIME), so instances with skewed clocks agree. A bucket is
# a hash {tokens, ts (microseconds)} whose TTL is the time it takes to fill up again:
# an idle bucket disappears exactly when it would be full, which is the same thing.
_TAKE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
elseif now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) / 1000000 * rate)
end
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry)}
"""

#: How often, at most, an unreachable Redis is logged (every call fails meanwhile).
_LOG_INTERVAL = 10.0

_TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest()


class RedisBuckets:
    """Token buckets in Redis: one Lua script refills and takes atomically.

    Keys are ``<prefix><class>:<caller>`` hashes with a TTL, so idle buckets disappear
    by themselves. When Redis cannot be reached the limiter fails **closed**: the call
    is refused with UNAVAILABLE "rate limiter unavailable" (rather than served without
    limits, which would switch off login throttling exactly when something is wrong).
    Connections time out quickly and are retried once, so a dead Redis costs a call
    milliseconds, not the client library's default seconds of backoff.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "nexus:ratelimit:") -> None:
        self._client = client
        self._prefix = prefix
        self._logged_at = -_LOG_INTERVAL

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "nexus:ratelimit:",
        timeout: float = 0.5,
        max_connections: int = 64,
    ) -> RedisBuckets:
        """Buckets in the Redis at ``url`` (``redis://host:port/db``).

        ``timeout`` bounds connecting, each command and waiting for one of the
        ``max_connections`` pooled connections.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(aioredis.Redis.from_pool(pool), prefix=prefix)

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the buckets use."""
        return self._client

    def key(self, rate_class: RateClass, key: str) -> str:
        """The Redis key of ``key``'s bucket of ``rate_class``."""
        return f"{self._prefix}{rate_class.name}:{key}"

    async def take(self, rate_class: RateClass, key: str, cost: float = 1.0) -> Decision:
        """Refill ``key``'s bucket of ``rate_class`` and take ``cost`` tokens if it has them.

        Raises StatusError(UNAVAILABLE) when Redis cannot answer (fail closed).
        """
        client = self._client
        args = (self.key(rate_class, key), repr(rate_class.rate), repr(rate_class.burst), cost)
        try:
            # EVALSHA directly: redis-py's Script wrapper costs ~10 µs more per call.
            try:
                reply: Any = await client.evalsha(_TAKE_SHA, 1, *args)
            except NoScriptError:  # a new or flushed server: load it once, go on
                await client.script_load(_TAKE)
                reply = await client.evalsha(_TAKE_SHA, 1, *args)
        except (RedisError, OSError) as error:
            self._log_failure(error)
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "rate limiter unavailable",
                reason="RATE_LIMITER_UNAVAILABLE",
            ) from error
        allowed, remaining, retry = reply
        return Decision(bool(allowed), float(remaining), float(retry))

    async def unreachable(self) -> str | None:
        """Why Redis does not answer a PING now, or None when it does (start-up check)."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as error:
            return str(error) or type(error).__name__
        return None

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self._client.aclose()

    def _log_failure(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _LOG_INTERVAL:
            self._logged_at = now
            _log.warning("rate limiter cannot reach Redis, refusing calls: %s", error)
