"""The two layers together, on full keys: read through L1, write around it.

Reads look in L1 (while it is trusted), then in Redis, and fill L1 from what Redis
said, for at most ``l1_ttl`` and never past the entry's own expiry. Writes go to
Redis only and *drop* the key from L1 — before the write and again after it, so a
fill that read the old value while the write was on its way cannot survive it. L1 is
thus only ever filled from a Redis read: it never holds a value Redis did not hold.

Without Redis (memory-only mode) L1 is the cache: writes store into it for their full
lifetime, and it is always trusted.
"""

from __future__ import annotations

import math

from nexus_grpc.cache._local import LocalCache
from nexus_grpc.cache._remote import RemoteCache
from nexus_grpc.cache._repairs import Repairs
from nexus_grpc.cache._stats import Counters

__all__ = ["TieredStore"]


class TieredStore:
    """L1 in front of an optional Redis layer; what every namespace's Cache uses."""

    def __init__(
        self,
        *,
        local: LocalCache,
        remote: RemoteCache | None,
        repairs: Repairs | None,
        counters: Counters,
        l1_ttl: float,
        default_ttl: float,
    ) -> None:
        self.local = local
        self.counters = counters
        self._remote = remote
        self._repairs = repairs
        self._l1_ttl = l1_ttl
        self._default_ttl = default_ttl
        # With Redis, L1 is trusted only while invalidations reach us (see resume()).
        self.l1_active = remote is None

    def lifetime(self, ttl: float | None) -> float:
        """``ttl`` checked, or the default one."""
        if ttl is None:
            return self._default_ttl
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        return float(ttl)

    async def get(self, key: str) -> bytes | None:
        """The value of ``key`` from L1 or Redis, or None (missing or unreachable)."""
        if self.l1_active:
            value = self.local.get(key)
            if value is not None:
                self.counters.l1_hits += 1
                return value
            self.counters.l1_misses += 1
        if self._remote is None:
            return None
        if not self.l1_active or self._l1_ttl <= 0:
            found = await self._remote.get(key)
            return None if found is None else found.value
        ticket = self.local.begin_fill(key)
        try:
            found = await self._remote.get(key)
        except BaseException:
            self.local.end_fill(ticket, None, 0.0)
            raise
        if found is None:
            self.local.end_fill(ticket, None, 0.0)
            return None
        ttl = self._l1_ttl if found.ttl is None else min(self._l1_ttl, found.ttl)
        self.local.end_fill(ticket, found.value, ttl)
        return found.value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (already checked); never raises."""
        if self._remote is None:
            self.local.put(key, value, ttl)
            return
        await self._write(key, value, ttl)

    async def delete(self, key: str) -> None:
        """Remove ``key`` from both layers; never raises."""
        if self._remote is None:
            self.local.drop(key)
            return
        await self._write(key, None, 0.0)

    async def _write(self, key: str, value: bytes | None, ttl: float) -> None:
        assert self._remote is not None and self._repairs is not None
        reached = False
        self.local.drop(key)
        try:
            if value is None:
                reached = await self._remote.remove(key)
            else:
                reached = await self._remote.store(key, value, ttl)
        finally:
            self.local.drop(key)
            # Not reached (or cancelled, so unknown): Redis may still hold the old
            # value, and other processes' L1 too, as nobody heard of this write.
            if reached:
                self._repairs.discard(key)
            else:
                self._repairs.add(key)

    # -- what the invalidation listener reports ---------------------------------------

    def invalidate(self, key: str) -> None:
        """Some process wrote or deleted ``key``."""
        self.counters.invalidations += 1
        self.local.drop(key)

    def suspend(self) -> None:
        """Invalidations may be lost from now on: stop trusting (and forget) L1."""
        self.l1_active = False
        self.local.clear()

    def resume(self) -> None:
        """Invalidations reach us again: L1 starts afresh.

        What L1 held was cleared on suspend() and nothing was filled since, but
        clearing again costs nothing and voids fills that straddled the change.
        """
        self.local.clear()
        self.counters.subscriptions += 1
        self.l1_active = True

    async def repair(self) -> None:
        """Delete and announce the keys whose writes did not reach Redis."""
        if self._repairs is not None and len(self._repairs):
            await self._repairs.flush()
