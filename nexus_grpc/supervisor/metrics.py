"""One ``/metrics`` for all workers: prometheus_client's multiprocess files.

Each worker writes its whole registry (the call metrics, the storage, cache, events,
TLS and process collectors) into memory-mapped files of prometheus_client's
multiprocess format, in a private directory (0700) the supervisor creates at start and
removes at stop: at every scrape it answers (so its own numbers are exact) and every
:data:`FLUSH_INTERVAL` seconds (so the others' are at most that old). A scrape on any
worker reads every file through ``MultiProcessCollector``; the series names and
labels are those of one process, go-grpc-prometheus's unchanged.

How each kind of series adds up over workers:

- counters and histograms (``grpc_server_*``, ``nexus_*_total``, ``process_cpu_seconds``,
  ``python_gc_*``): the sum over every worker that ever ran, dead ones included, so a
  restarted worker never makes a counter go backwards;
- gauges, over the live workers only (a dead worker's files are dropped, as
  ``mark_process_dead`` does): see :data:`GAUGE_MODES`. A gauge this module does not
  list gets a ``pid`` label per worker ("liveall") rather than a made-up sum.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, mmap_dict, multiprocess
from prometheus_client.metrics_core import Metric

__all__ = [
    "FLUSH_INTERVAL",
    "GAUGE_MODES",
    "SharedMetrics",
    "create_directory",
    "forget_worker",
    "remove_directory",
]

#: Seconds between two writes of a worker's numbers (besides one per scrape it answers).
FLUSH_INTERVAL = 1.0

#: How a gauge combines over live workers: "livesum" for what each worker holds (calls
#: in flight, its L1 entries, its memory and descriptors: the host's total), "livemax"
#: for a shared value each worker reads alike (the Redis event backlog: a sum would
#: count it N times), "livemin" for the worst view (storage healthy = 0 when any worker
#: finds it down; the certificate closest to expiry; the oldest start time).
GAUGE_MODES: dict[str, str] = {
    "nexus_server_in_flight_calls": "livesum",
    "nexus_workers": "livesum",
    "nexus_cache_l1_entries": "livesum",
    "nexus_events_pending": "livemax",
    "nexus_events_lag": "livemax",
    "nexus_events_dead_letters": "livemax",
    "nexus_storage_healthy": "livemin",
    "nexus_tls_certificate_expiry_seconds": "livemin",
    "process_resident_memory_bytes": "livesum",
    "process_virtual_memory_bytes": "livesum",
    "process_open_fds": "livesum",
    "process_max_fds": "livemin",
    "process_start_time_seconds": "livemin",
    "python_info": "livemax",
}


# prometheus_client leaves these two untyped.
_MmapedDict: Any = mmap_dict.MmapedDict
_MultiProcessCollector: Any = multiprocess.MultiProcessCollector


def create_directory() -> Path:
    """A new private (0700) directory for the workers' files."""
    return Path(tempfile.mkdtemp(prefix="nexus-metrics-"))


def remove_directory(path: Path) -> None:
    """Remove the directory and every worker's files."""
    shutil.rmtree(path, ignore_errors=True)


def forget_worker(path: Path, pid: int) -> None:
    """Drop a dead worker's live gauges; its counters and histograms stay in the sums."""
    for name in glob.glob(os.path.join(path, f"gauge_live*_{pid}.db")):
        os.remove(name)


class SharedMetrics:
    """A worker's end: writes its registry into its files, merges everyone's."""

    def __init__(self, path: Path, pid: int | None = None) -> None:
        self.path = path
        self._pid = os.getpid() if pid is None else pid
        self._files: dict[str, Any] = {}

    def exposition(self, registry: CollectorRegistry) -> bytes:
        """This worker's numbers written now, then every worker's merged, as text."""
        self.write(registry.collect())
        merged = CollectorRegistry()
        _MultiProcessCollector(merged, path=str(self.path))
        return generate_latest(merged)

    def write(self, families: Iterable[Metric]) -> None:
        """Store ``families`` (one collection of the worker's registry) in its files."""
        for family in families:
            if family.type == "counter":
                self._counter(family)
            elif family.type == "histogram":
                self._histogram(family)
            else:
                mode = GAUGE_MODES.get(family.name, "liveall")
                self._store(f"gauge_{mode}", family, (s for s in family.samples))

    def close(self) -> None:
        """Close the files (they stay for the others to read)."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def _counter(self, family: Metric) -> None:
        # The _created samples are timestamps: a sum of them means nothing.
        samples = (s for s in family.samples if not s.name.endswith("_created"))
        self._store("counter", family, samples)

    def _histogram(self, family: Metric) -> None:
        # The files hold each bucket's own count (not cumulative) and the sum; the
        # collector accumulates the buckets again and derives _count from them.
        buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, str, float]]] = defaultdict(
            list
        )
        rest = []
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                le = sample.labels["le"]
                buckets[key].append((float(le), le, sample.value))
            elif sample.name.endswith("_sum"):
                rest.append(sample)
        handle = self._file("histogram")
        for labels, bounds in buckets.items():
            previous = 0.0
            for _, le, cumulative in sorted(bounds):
                bucket = _key(family, family.name + "_bucket", {**dict(labels), "le": le})
                handle.write_value(bucket, cumulative - previous, 0.0)
                previous = cumulative
        for sample in rest:
            handle.write_value(_key(family, sample.name, sample.labels), sample.value, 0.0)

    def _store(self, kind: str, family: Metric, samples: Iterable[object]) -> None:
        handle = self._file(kind)
        for sample in samples:
            name, labels, value = sample.name, sample.labels, sample.value  # type: ignore[attr-defined]
            handle.write_value(_key(family, name, labels), float(value), 0.0)

    def _file(self, kind: str) -> Any:
        handle = self._files.get(kind)
        if handle is None:
            handle = _MmapedDict(os.path.join(self.path, f"{kind}_{self._pid}.db"))
            self._files[kind] = handle
        return handle


def _key(family: Metric, name: str, labels: dict[str, str]) -> str:
    # The key format of prometheus_client.mmap_dict.mmap_key.
    return json.dumps([family.name, name, dict(labels), family.documentation], sort_keys=True)
