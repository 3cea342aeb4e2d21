"""The multiprocess files of /metrics: what two workers' numbers add up to."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families

from nexus_grpc.supervisor.metrics import (
    SharedMetrics,
    create_directory,
    forget_worker,
    remove_directory,
    sweep,
)


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


class _Some:
    """A worker whose series come and go: one gauge per name in ``groups``."""

    def __init__(self, groups: list[str]) -> None:
        self.groups = groups

    def collect(self):  # type: ignore[no-untyped-def]
        pending = GaugeMetricFamily("nexus_events_pending", "Pending.", labels=("group",))
        for group in self.groups:
            pending.add_metric((group,), 4)
        yield pending


def test_a_series_the_worker_no_longer_has_leaves_the_scrape(tmp_path: Path) -> None:
    shared = SharedMetrics(tmp_path, pid=606)
    registry = CollectorRegistry()
    numbers = _Some(["orders", "mail"])
    registry.register(numbers)  # type: ignore[arg-type]
    merged = _samples(shared.exposition(registry))
    assert merged[("nexus_events_pending", (("group", "mail"),))] == 4
    numbers.groups = ["orders"]
    merged = _samples(shared.exposition(registry))
    assert ("nexus_events_pending", (("group", "mail"),)) not in merged
    assert merged[("nexus_events_pending", (("group", "orders"),))] == 4
    numbers.groups = []
    merged = _samples(shared.exposition(registry))
    assert not [key for key in merged if key[0] == "nexus_events_pending"]
    # A kind of file the worker no longer writes at all is removed.
    shared.write(_registry(_Numbers(1, 1, 1, [1, 1, 1])).collect())
    assert not list(tmp_path.glob("gauge_livemax_606.db"))


def test_dead_workers_fold_into_one_archive(tmp_path: Path) -> None:
    for pid in range(700, 710):
        dead = SharedMetrics(tmp_path, pid=pid)
        dead.write(_registry(_Numbers(2, 1, 1, [1, 2, 3])).collect())
        forget_worker(tmp_path, pid)
    # Ten workers exited: their counts live on in one file per kind, theirs are gone.
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]
    alive = SharedMetrics(tmp_path, pid=800)
    merged = _samples(alive.exposition(_registry(_Numbers(1, 1, 1, [1, 1, 1]))))
    get = (("method", "Get"),)
    assert merged[("calls_total", get)] == 21
    assert merged[("latency_seconds_count", get)] == 31
    assert merged[("latency_seconds_bucket", (("le", "0.1"), *get))] == 11
    assert merged[("latency_seconds_sum", get)] == 10 * 1.5 + 0.5
    assert merged[("nexus_server_in_flight_calls", ())] == 1


def test_a_killed_supervisors_directory_is_swept(tmp_path: Path) -> None:
    import subprocess
    import sys

    # A pid that surely ran and is gone: a child we waited for.
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = tmp_path / f"nexus-metrics-{int(child.stdout)}"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    other = tmp_path / "nexus-metrics-notapid"
    other.mkdir()
    ours = create_directory(tmp_path)
    try:
        assert not stale.exists() and other.exists()
        assert ours.name == f"nexus-metrics-{os.getpid()}"
        assert ours.stat().st_mode & 0o777 == 0o700
        # A running supervisor's directory (ours) is kept by the next sweep.
        assert sweep(tmp_path) == []
    finally:
        remove_directory(ours)
