"""Hit and miss counters of a cache manager, and the snapshot handed out to metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["CacheStats", "Counters"]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one :class:`~nexus_grpc.cache.CacheManager`'s counters.

    Counters are cumulative since the manager was created (export them as Prometheus
    counters); ``l1_entries`` and ``l1_active`` are current values (gauges).
    """

    #: Reads answered from the in-process layer.
    l1_hits: int = 0
    #: Reads that looked in the in-process layer and did not find a live entry.
    l1_misses: int = 0
    #: Reads answered by Redis.
    l2_hits: int = 0
    #: Reads Redis answered with "no such key".
    l2_misses: int = 0
    #: Redis commands that failed or were skipped because Redis was unreachable.
    l2_errors: int = 0
    #: Calls of a ``get_or_load`` loader (single-flight: one per key and process).
    loads: int = 0
    #: Invalidation messages received from the pub/sub channel (own ones included).
    invalidations: int = 0
    #: Times the invalidation channel was (re)subscribed.
    subscriptions: int = 0
    #: Entries in the in-process layer now (expired ones not yet evicted included).
    l1_entries: int = 0
    #: Whether reads may be answered from the in-process layer now.
    l1_active: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        """The snapshot as a plain dict (field name to value)."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Counters:
    """The mutable counters behind :class:`CacheStats` (one per manager)."""

    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    l2_errors: int = 0
    loads: int = 0
    invalidations: int = 0
    subscriptions: int = 0

    def snapshot(self, *, l1_entries: int, l1_active: bool) -> CacheStats:
        """A frozen copy, with the current gauges."""
        return CacheStats(**dataclasses.asdict(self), l1_entries=l1_entries, l1_active=l1_active)
