"""Prometheus metrics of the plugin cache, read from :meth:`CacheManager.stats` at scrape."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_grpc.cache.manager import CacheManager

__all__ = ["CacheMetrics"]


class CacheMetrics(Collector):
    """``nexus_cache_requests_total{layer,result}``, loads, errors, invalidations, size."""

    def __init__(self, manager: CacheManager) -> None:
        self._manager = manager

    def collect(self) -> Iterable[Metric]:
        """Every family with the manager's current numbers."""
        stats = self._manager.stats()
        requests = CounterMetricFamily(
            "nexus_cache_requests",
            "Cache reads by layer (l1 in process, l2 Redis) and result.",
            labels=("layer", "result"),
        )
        requests.add_metric(("l1", "hit"), stats.l1_hits)
        requests.add_metric(("l1", "miss"), stats.l1_misses)
        requests.add_metric(("l2", "hit"), stats.l2_hits)
        requests.add_metric(("l2", "miss"), stats.l2_misses)
        yield requests
        yield CounterMetricFamily(
            "nexus_cache_loads",
            "Loader calls of get_or_load (misses of both layers).",
            value=stats.loads,
        )
        yield CounterMetricFamily(
            "nexus_cache_redis_errors",
            "Redis commands that failed or were skipped while Redis was unreachable.",
            value=stats.l2_errors,
        )
        yield CounterMetricFamily(
            "nexus_cache_invalidations",
            "Invalidation messages received from other instances (and this one).",
            value=stats.invalidations,
        )
        yield GaugeMetricFamily(
            "nexus_cache_l1_entries", "Entries in this process's L1.", value=stats.l1_entries
        )
