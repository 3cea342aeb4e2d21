"""The multiprocess files of /metrics: what two workers' numbers add up to."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families

from nexus_grpc.supervisor.metrics import SharedMetrics, forget_worker


class _Numbers:
    """A collector with fixed numbers, as one worker's registry would yield."""

    def __init__(self, calls: int, in_flight: int, healthy: int, buckets: list[float]) -> None:
        self.calls, self.in_flight, self.healthy, self.buckets = calls, in_flight, healthy, buckets

    def collect(self):  # type: ignore[no-untyped-def]
        counter = CounterMetricFamily("calls", "Calls.", labels=("method",))
        counter.add_metric(("Get",), self.calls, created=1.0)
        yield counter
        yield GaugeMetricFamily("nexus_server_in_flight_calls", "In flight.", value=self.in_flight)
        yield GaugeMetricFamily("nexus_storage_healthy", "Healthy.", value=self.healthy)
        yield GaugeMetricFamily("something_new", "Not in GAUGE_MODES.", value=7)
        histogram = HistogramMetricFamily("latency_seconds", "Latency.", labels=("method",))
        cumulative = [("0.1", self.buckets[0]), ("1.0", self.buckets[1]), ("+Inf", self.buckets[2])]
        histogram.add_metric(("Get",), cumulative, sum_value=self.buckets[2] * 0.5)
        yield histogram


def _registry(numbers: _Numbers) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(numbers)  # type: ignore[arg-type]
    return registry


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_two_workers_add_up(tmp_path: Path) -> None:
    first = SharedMetrics(tmp_path, pid=101)
    second = SharedMetrics(tmp_path, pid=202)
    second.write(_registry(_Numbers(5, 2, 0, [1, 4, 5])).collect())
    merged = _samples(first.exposition(_registry(_Numbers(3, 1, 1, [2, 2, 3]))))
    get = (("method", "Get"),)
    assert merged[("calls_total", get)] == 8
    assert ("calls_created", get) not in merged
    assert merged[("nexus_server_in_flight_calls", ())] == 3  # livesum
    assert merged[("nexus_storage_healthy", ())] == 0  # livemin: one worker finds it down
    # Unknown gauges: one series per worker rather than a made-up sum.
    assert merged[("something_new", (("pid", "101"),))] == 7
    assert merged[("something_new", (("pid", "202"),))] == 7
    # Histograms: the buckets stay cumulative, _count and _sum add up.
    assert merged[("latency_seconds_bucket", (("le", "0.1"), *get))] == 3
    assert merged[("latency_seconds_bucket", (("le", "1.0"), *get))] == 6
    assert merged[("latency_seconds_bucket", (("le", "+Inf"), *get))] == 8
    assert merged[("latency_seconds_count", get)] == 8
    assert merged[("latency_seconds_sum", get)] == 4.0
    first.close()
    second.close()


def test_a_dead_worker_keeps_its_counts_but_not_its_gauges(tmp_path: Path) -> None:
    dead = SharedMetrics(tmp_path, pid=303)
    dead.write(_registry(_Numbers(5, 4, 1, [1, 1, 1])).collect())
    dead.close()
    forget_worker(tmp_path, 303)
    alive = SharedMetrics(tmp_path, pid=404)
    merged = _samples(alive.exposition(_registry(_Numbers(1, 1, 1, [1, 1, 1]))))
    assert merged[("calls_total", (("method", "Get"),))] == 6
    assert merged[("nexus_server_in_flight_calls", ())] == 1
    assert ("something_new", (("pid", "303"),)) not in merged
    alive.close()


def test_a_later_write_replaces_the_earlier_one(tmp_path: Path) -> None:
    shared = SharedMetrics(tmp_path, pid=505)
    shared.write(_registry(_Numbers(1, 1, 1, [1, 1, 1])).collect())
    merged = _samples(shared.exposition(_registry(_Numbers(9, 0, 1, [1, 1, 9]))))
    assert merged[("calls_total", (("method", "Get"),))] == 9
    assert merged[("latency_seconds_count", (("method", "Get"),))] == 9
    shared.close()
