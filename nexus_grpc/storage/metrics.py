"""Prometheus metrics of the storage's health, read from :class:`StorageHealth` at scrape."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .faults import StorageHealth

__all__ = ["StorageMetrics"]


class StorageMetrics(Collector):
    """``nexus_storage_unavailable_total{cause}`` and ``nexus_storage_healthy``.

    Causes are the fixed phrases of :mod:`.faults` (never error text): a bounded set.
    """

    def __init__(self, health: StorageHealth) -> None:
        self._health = health

    def collect(self) -> Iterable[Metric]:
        """The failure counts by cause and the current health."""
        failures = CounterMetricFamily(
            "nexus_storage_unavailable",
            "Storage operations and probes that failed because the database was "
            "unavailable (disk full, read-only, connection lost, ...), by cause.",
            labels=("cause",),
        )
        for cause, count in sorted(self._health.failures.items()):
            failures.add_metric((cause,), count)
        yield failures
        yield GaugeMetricFamily(
            "nexus_storage_healthy",
            "1 while the storage works; 0 from an infrastructure failure until a probe succeeds.",
            value=int(self._health.healthy),
        )
