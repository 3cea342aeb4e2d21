"""The cache manager: one per host process, handing out one cache per namespace."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from nexus_grpc.cache._flight import SingleFlight
from nexus_grpc.cache._invalidation import InvalidationListener
from nexus_grpc.cache._local import Clock, LocalCache
from nexus_grpc.cache._remote import RemoteCache
from nexus_grpc.cache._repairs import Repairs
from nexus_grpc.cache._stats import CacheStats, Counters
from nexus_grpc.cache._store import TieredStore
from nexus_grpc.cache.cache import Cache
from nexus_grpc.storage.namespace import validate_namespace

__all__ = ["CacheManager"]

_log = logging.getLogger("nexus.cache")


class CacheManager:
    """L1 (in this process) in front of Redis (L2), kept coherent across processes.

    ``url``: Redis URL, or None for memory-only mode (one process, L1 only).
    ``prefix``: start of every Redis key and of the channel (``{prefix}:cache:...``),
    to share one Redis between deployments. ``max_entries``: bound of L1 (LRU).
    ``l1_ttl``: longest time an entry stays in L1 in Redis mode, the bound of
    staleness when invalidations are lost (0: no L1). ``default_ttl``: lifetime of
    entries written without one. ``timeout``: connecting and each Redis command.
    ``retry_after``: seconds Redis commands are skipped after Redis could not be
    reached. ``max_repairs``: writes that did not reach Redis remembered for repair.
    ``max_connections``: Redis connections for commands (the subscription has its own).
    ``clock``: L1's clock (tests); Redis keeps its own time for L2.

    Call :meth:`start` before use (in Redis mode L1 is used only once subscribed to
    invalidations; without it every read goes to Redis) and :meth:`close` at the end.
    """

    def __init__(
        self,
        url: str | None,
        *,
        prefix: str = "nexus",
        max_entries: int = 10_000,
        l1_ttl: float = 5.0,
        default_ttl: float = 300.0,
        timeout: float = 1.0,
        retry_after: float = 1.0,
        max_repairs: int = 10_000,
        max_connections: int = 32,
        clock: Clock = time.monotonic,
    ) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"prefix must be non-empty and without spaces, got {prefix!r}")
        if not (l1_ttl >= 0 and default_ttl > 0 and timeout > 0 and retry_after >= 0):
            raise ValueError(
                "CacheManager needs l1_ttl >= 0, default_ttl > 0, timeout > 0, retry_after >= 0"
            )
        if max_repairs < 1 or max_connections < 1:
            raise ValueError("CacheManager needs max_repairs >= 1 and max_connections >= 1")
        self._prefix = prefix
        self._timeout = timeout
        self._counters = Counters()
        self._flights = SingleFlight()
        self._caches: dict[str, Cache] = {}
        self._started = False
        self._clients: list[aioredis.Redis] = []
        self._listener: InvalidationListener | None = None
        self._remote: RemoteCache | None = None
        #: Others told of every key heard on the channel, and of every possible loss.
        self._watchers: list[tuple[Callable[[str], None], Callable[[], None]]] = []
        local = LocalCache(max_entries, clock)
        if url is None:
            self._store = TieredStore(
                local=local,
                remote=None,
                repairs=None,
                counters=self._counters,
                l1_ttl=l1_ttl,
                default_ttl=default_ttl,
            )
            return
        channel = f"{prefix}:cache:invalidate"
        # One retry: the first command on a pooled connection that died with a Redis
        # restart fails; the retry reconnects. More would only make outages slower.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            client_name="nexus-cache",  # who is who in CLIENT LIST
        )
        client = aioredis.Redis.from_pool(pool)
        # The subscription gets a client of its own without retries: redis-py would
        # otherwise reconnect and resubscribe silently, and the messages lost in
        # between would go unnoticed (see _invalidation).
        listener_client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="nexus-cache-invalidation",
        )
        self._clients = [client, listener_client]
        remote = RemoteCache(
            client, channel=channel, counters=self._counters, retry_after=retry_after
        )
        self._store = TieredStore(
            local=local,
            remote=remote,
            repairs=Repairs(remote, max_repairs),
            counters=self._counters,
            l1_ttl=l1_ttl,
            default_ttl=default_ttl,
        )
        self._remote = remote
        self._listener = InvalidationListener(
            listener_client,
            channel,
            on_key=self._on_key,
            on_up=self._on_up,
            on_down=self._on_down,
            on_idle=self._store.repair,
        )

    def watch(self, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Also tell ``on_key`` every key heard on the invalidation channel, and call
        ``on_reset`` whenever messages may have been lost (subscription down or back).

        For in-process copies of other shared state (the host's session epochs): they
        share the channel, its subscription and its failure detection.
        """
        self._watchers.append((on_key, on_reset))

    async def announce(self, key: str) -> bool:
        """Publish ``key`` on the invalidation channel; whether it got through.

        Memory-only managers have nobody to tell and return True.
        """
        if self._remote is None:
            return True
        return await self._remote.announce(key)

    def _on_key(self, key: str) -> None:
        self._store.invalidate(key)
        for on_key, _ in self._watchers:
            on_key(key)

    def _on_up(self) -> None:
        self._store.resume()
        for _, on_reset in self._watchers:
            on_reset()

    def _on_down(self) -> None:
        self._store.suspend()
        for _, on_reset in self._watchers:
            on_reset()

    @property
    def memory_only(self) -> bool:
        """Whether this manager has no Redis (L1 only, for one process)."""
        return self._listener is None

    def for_namespace(self, name: str) -> Cache:
        """The cache of namespace ``name`` (e.g. ``plugins/orders``), the same each time.

        Namespaces follow the storage rules ("/"-separated segments of a-z, 0-9, "_"
        and "-"), so no key of one namespace can be spelled in another.
        """
        cache = self._caches.get(name)
        if cache is None:
            validate_namespace(name)
            cache = self._caches[name] = Cache(
                self._store,
                self._flights,
                namespace=name,
                key_prefix=f"{self._prefix}:cache:{name}:",
            )
        return cache

    async def start(self) -> None:
        """Subscribe to invalidations; waits up to ``timeout`` for it, never raises.

        With Redis down the host still starts: the cache reads through to Redis (and
        misses) until the subscription is made in the background.
        """
        if self._started:
            return
        self._started = True
        if self._listener is None:
            return
        self._listener.start()
        try:
            async with asyncio.timeout(self._timeout):
                await self._listener.wait_subscribed()
        except TimeoutError:
            _log.warning("cache: not subscribed to invalidations yet; L1 unused until then")

    async def close(self) -> None:
        """Stop listening, cancel loads in progress, close the Redis connections."""
        if self._listener is not None:
            await self._listener.stop()
        await self._flights.cancel_all()
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()
        if self.memory_only:
            self._store.local.clear()
        else:
            self._store.suspend()

    def stats(self) -> CacheStats:
        """A snapshot of the hit/miss counters per layer (see :class:`CacheStats`)."""
        return self._counters.snapshot(
            l1_entries=len(self._store.local), l1_active=self._store.l1_active
        )
