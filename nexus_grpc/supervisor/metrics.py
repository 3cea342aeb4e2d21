"""One ``/metrics`` for all workers: prometheus_client's multiprocess files.

Each worker writes its whole registry (the call metrics, the storage, cache, events,
TLS and process collectors) into files of prometheus_client's multiprocess format, in
a private directory (0700) the supervisor creates at start (under the data directory,
named after its pid, so that one left by a killed supervisor is swept at the next
start) and removes at stop: at every scrape it answers (so its own numbers are exact)
and every :data:`FLUSH_INTERVAL` seconds (so the others' are at most that old; the
worker refreshes its scrape-time collectors, the event backlog, before each). Each
write replaces the worker's files whole (a new file renamed over the old), so a series
the worker no longer has leaves the merged scrape. A scrape on any worker reads every
file through ``MultiProcessCollector``; the series names and labels are those of one
process, go-grpc-prometheus's unchanged.

How each kind of series adds up over workers:

- counters and histograms (``grpc_server_*``, ``nexus_*_total``, ``process_cpu_seconds``,
  ``python_gc_*``): the sum over every worker that ever ran, dead ones included, so a
  restarted worker never makes a counter go backwards. When a worker exits the
  supervisor folds its counters and histograms into one archive file and deletes its
  files, so rolling restarts do not pile files up for every scrape to read (the fold
  holds the directory's lock, which a scrape takes too: it never sees the numbers
  twice or not at all);
- gauges, over the live workers only (a dead worker's files are dropped, as
  ``mark_process_dead`` does): see :data:`GAUGE_MODES`. A gauge this module does not
  list gets a ``pid`` label per worker ("liveall") rather than a made-up sum.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
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


#: The directories' names: this prefix and the supervisor's pid.
_PREFIX = "nexus-metrics-"

#: Taken shared by a scrape reading the files, exclusive by a fold changing them.
_LOCK = ".lock"

#: The archive's pid field: what workers that exited added up to.
_ARCHIVE = "archive"


def create_directory(parent: Path | None = None) -> Path:
    """A new private (0700) directory for the workers' files, ``nexus-metrics-<pid>``
    in ``parent`` (the system's temporary directory when None or not writable), after
    removing those there whose supervisor is gone."""
    for candidate in (parent, Path(tempfile.gettempdir())):
        if candidate is None:
            continue
        try:
            candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
            sweep(candidate)
            path = candidate / f"{_PREFIX}{os.getpid()}"
            shutil.rmtree(path, ignore_errors=True)  # a dead supervisor's, same pid
            path.mkdir(mode=0o700)
        except OSError:
            continue
        return path
    raise OSError(f"cannot create a directory for the workers' metrics in {parent}")


def sweep(parent: Path) -> list[Path]:
    """Remove the metrics directories in ``parent`` of supervisors no longer running
    (one killed leaves its own); the directories removed."""
    removed = []
    for path in parent.glob(f"{_PREFIX}*"):
        pid_text = path.name.removeprefix(_PREFIX)
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _running(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    return True


def remove_directory(path: Path) -> None:
    """Remove the directory and every worker's files."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path, kind: int) -> Iterator[None]:
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)  # releases the lock


def forget_worker(path: Path, pid: int) -> None:
    """A worker exited: fold its counters and histograms into the archive (they stay in
    the sums), drop its gauges (live workers only), and delete its files."""
    with _locked(path, fcntl.LOCK_EX):
        for kind in ("counter", "histogram"):
            mine = path / f"{kind}_{pid}.db"
            if not mine.exists():
                continue
            archive = path / f"{kind}_{_ARCHIVE}.db"
            totals: dict[str, float] = defaultdict(float)
            for source in (archive, mine):
                if source.exists():
                    for key, value, _, _ in _MmapedDict.read_all_values_from_file(str(source)):
                        totals[key] += value
            _replace(archive, totals.items())
        for name in glob.glob(os.path.join(path, f"*_{pid}.db*")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def _replace(target: Path, values: Iterable[tuple[str, float]]) -> None:
    """Write ``values`` into a new file and rename it over ``target`` (readers see the
    old file or the new one, whole). The temporary name does not end in .db, so no
    reader globs it."""
    temporary = target.with_name(target.name + ".new")
    handle = _MmapedDict(str(temporary))
    try:
        for key, value in values:
            handle.write_value(key, value, 0.0)
    finally:
        handle.close()
    os.replace(temporary, target)


class SharedMetrics:
    """A worker's end: writes its registry into its files, merges everyone's."""

    def __init__(self, path: Path, pid: int | None = None) -> None:
        self.path = path
        self._pid = os.getpid() if pid is None else pid

    def exposition(self, registry: CollectorRegistry) -> bytes:
        """This worker's numbers written now, then every worker's merged, as text."""
        self.write(registry.collect())
        merged = CollectorRegistry()
        _MultiProcessCollector(merged, path=str(self.path))
        with _locked(self.path, fcntl.LOCK_SH):
            return generate_latest(merged)

    def write(self, families: Iterable[Metric]) -> None:
        """Store ``families`` (one collection of the worker's registry) in its files,
        replacing what they held."""
        files: dict[str, dict[str, float]] = defaultdict(dict)
        for family in families:
            if family.type == "counter":
                self._counter(files["counter"], family)
            elif family.type == "histogram":
                self._histogram(files["histogram"], family)
            else:
                mode = GAUGE_MODES.get(family.name, "liveall")
                _store(files[f"gauge_{mode}"], family, family.samples)
        for kind, values in files.items():
            _replace(self.path / f"{kind}_{self._pid}.db", values.items())
        # A kind of series the worker no longer has at all (under the lock: a scrape
        # must not find a file gone between listing and reading it).
        stale = [
            name
            for name in glob.glob(os.path.join(self.path, f"*_{self._pid}.db"))
            if os.path.basename(name).rsplit("_", 1)[0] not in files
        ]
        if stale:
            with _locked(self.path, fcntl.LOCK_EX):
                for name in stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(name)

    def close(self) -> None:
        """Nothing to close: every write closes its files (they stay for the others)."""

    @staticmethod
    def _counter(values: dict[str, float], family: Metric) -> None:
        # The _created samples are timestamps: a sum of them means nothing.
        _store(values, family, (s for s in family.samples if not s.name.endswith("_created")))

    @staticmethod
    def _histogram(values: dict[str, float], family: Metric) -> None:
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
        for labels, bounds in buckets.items():
            previous = 0.0
            for _, le, cumulative in sorted(bounds):
                bucket = _key(family, family.name + "_bucket", {**dict(labels), "le": le})
                values[bucket] = cumulative - previous
                previous = cumulative
        _store(values, family, rest)


def _store(values: dict[str, float], family: Metric, samples: Iterable[Any]) -> None:
    for sample in samples:
        values[_key(family, sample.name, sample.labels)] = float(sample.value)


def _key(family: Metric, name: str, labels: dict[str, str]) -> str:
    # The key format of prometheus_client.mmap_dict.mmap_key.
    return json.dumps([family.name, name, dict(labels), family.documentation], sort_keys=True)
