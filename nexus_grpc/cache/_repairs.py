"""Keys whose write never reached Redis, deleted and announced once Redis answers.

A ``set`` or ``delete`` that could not reach Redis leaves the *old* value there, where
every process would read it again (and other processes' L1 may still hold it). The
process that wrote remembers such keys and, once Redis answers, deletes them and
announces the deletion: a miss then makes the caller load the current value. Only
``limit`` keys are remembered (the oldest are forgotten first, with a warning) and
only in memory: a process that stops before Redis comes back cannot repair them, and
their old values stay until they expire.
"""

from __future__ import annotations

import logging

from nexus_grpc.cache._remote import RemoteCache

__all__ = ["Repairs"]

_log = logging.getLogger("nexus.cache")


class Repairs:
    """An ordered, bounded set of keys to delete from Redis and announce."""

    def __init__(self, remote: RemoteCache, limit: int) -> None:
        self._remote = remote
        self._limit = limit
        self._keys: dict[str, None] = {}  # insertion-ordered set
        self._overflowed = False

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        """Remember ``key`` (again: it moves to the end)."""
        self._keys.pop(key, None)
        self._keys[key] = None
        if len(self._keys) > self._limit:
            del self._keys[next(iter(self._keys))]
            if not self._overflowed:
                self._overflowed = True
                _log.warning(
                    "cache: more than %d writes did not reach Redis; the oldest are "
                    "forgotten and their old values may be read until they expire",
                    self._limit,
                )

    def discard(self, key: str) -> None:
        """Forget ``key``: a later write of it reached Redis."""
        self._keys.pop(key, None)

    async def flush(self) -> None:
        """Delete and announce the remembered keys, oldest first, until one fails."""
        for key in list(self._keys):
            if key not in self._keys:  # a write got through while we were awaiting
                continue
            if not await self._remote.remove(key):
                return
            self._keys.pop(key, None)
        self._overflowed = False
