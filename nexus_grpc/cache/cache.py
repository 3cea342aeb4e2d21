"""The cache one plugin gets: bytes and protobuf messages under keys of its namespace."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from nexus_grpc.cache._flight import SingleFlight
from nexus_grpc.cache._store import TieredStore

__all__ = ["Cache"]

_log = logging.getLogger("nexus.cache")

M = TypeVar("M", bound=Message)


class Cache:
    """Keys of one namespace; made by :meth:`CacheManager.for_namespace`.

    No method raises because Redis is unreachable (reads miss, writes reach this
    process only); they raise only for misuse (a ttl that is not positive, a value
    that is not bytes). ``ttl`` is in seconds; None means the manager's default.
    """

    def __init__(
        self, store: TieredStore, flights: SingleFlight, *, namespace: str, key_prefix: str
    ) -> None:
        self._store = store
        self._flights = flights
        self._namespace = namespace
        self._key_prefix = key_prefix

    @property
    def namespace(self) -> str:
        """The namespace this cache's keys live in (e.g. ``plugins/orders``)."""
        return self._namespace

    def __repr__(self) -> str:
        return f"Cache(namespace={self._namespace!r})"

    async def get(self, key: str) -> bytes | None:
        """The cached value of ``key``, or None."""
        return await self._store.get(self._key_prefix + key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Cache ``value`` under ``key`` for ``ttl`` seconds."""
        lifetime = self._store.lifetime(ttl)
        await self._store.set(self._key_prefix + key, _checked(value), lifetime)

    async def delete(self, key: str) -> None:
        """Remove ``key`` (from every process's L1 too, as soon as they hear of it)."""
        await self._store.delete(self._key_prefix + key)

    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[bytes]], ttl: float | None = None
    ) -> bytes:
        """The cached value of ``key``; on a miss ``await loader()``'s, cached for ``ttl``.

        Concurrent misses of one key in this process call ``loader`` once and all get
        its result (or its exception, which is not cached). Other processes may load
        the same key at the same time: this is not a distributed lock.
        """
        lifetime = self._store.lifetime(ttl)
        full_key = self._key_prefix + key
        cached = await self._store.get(full_key)
        if cached is not None:
            return cached

        async def load() -> bytes:
            self._store.counters.loads += 1
            value = _checked(await loader())
            await self._store.set(full_key, value, lifetime)
            return value

        return await self._flights.run(full_key, load)

    async def get_message(self, key: str, message_type: type[M]) -> M | None:
        """The cached message of type ``message_type`` under ``key``, or None.

        A value that does not parse as ``message_type`` counts as a miss (it may have
        been written by another version of the plugin): load and set it again.
        """
        data = await self.get(key)
        if data is None:
            return None
        message = message_type()
        try:
            message.ParseFromString(data)
        except DecodeError:
            _log.warning(
                "cache: %s%s does not parse as %s; treated as a miss",
                self._key_prefix,
                key,
                message_type.DESCRIPTOR.full_name,
            )
            return None
        return message

    async def set_message(self, key: str, message: Message, ttl: float | None = None) -> None:
        """Cache ``message`` (serialized) under ``key`` for ``ttl`` seconds."""
        await self.set(key, message.SerializeToString(), ttl)


def _checked(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"cache values are bytes, got {type(value).__name__}")
    return value
