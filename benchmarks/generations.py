"""What a contract generation costs: time to import one, memory kept, the upgrade check.

    .venv/bin/python -m benchmarks.generations [--count 100]

Compiles the generation tests' contracts (``tests/hotswap/contracts``) into a temporary
folder, then in one process:

- loads version two of the contract as a generation ``--count`` times (its ``_pb2`` and
  ``_pb2_grpc`` modules into a new pool) and enters its binding (the plugin's import
  window, with the copies of ``Timestamp``), reporting p50/p99 of each;
- compares the resident memory growth of ``--count`` generations dropped (released,
  nothing refers to them) with ``--count`` generations kept alive, as a ratio: close to
  0 means a dropped generation is freed;
- times the breaking-change check of v1 → v2 with buf and with the built-in rules.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

from nexus_grpc import codegen
from nexus_grpc.plugins.generations import Generation, load_generation
from nexus_grpc.plugins.upgrade import run_upgrade_check

CONTRACTS = Path(__file__).resolve().parents[1] / "tests" / "hotswap" / "contracts"
MODULE = "genswap.items.v1.items_pb2"


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[round(fraction * (len(ordered) - 1))] * 1000


def _one(root: Path, number: int) -> tuple[Generation, float, float]:
    started = time.perf_counter()
    generation = load_generation([MODULE], label=f"swap@{number}", search=[root])
    loaded = time.perf_counter()
    with generation.binding():
        pass
    bound = time.perf_counter()
    generation.release()
    return generation, loaded - started, bound - loaded


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory(prefix="nexus-bench-generations-") as tmp:
        roots = {}
        for version in ("v1", "v2"):
            roots[version] = Path(tmp, version)
            codegen.generate(CONTRACTS / version, roots[version])
        for number in range(20):  # warm-up: imports, allocator pools
            _one(roots["v2"], number)
        gc.collect()
        start = _rss_mib()
        loads, bindings = [], []
        for number in range(count):
            _, load, binding = _one(roots["v2"], number)
            loads.append(load)
            bindings.append(binding)
        gc.collect()
        dropped = _rss_mib() - start
        kept = [_one(roots["v2"], number)[0] for number in range(count)]
        gc.collect()
        alive = _rss_mib() - start - dropped
        print(f"generations of a one-file contract, {count} each")
        for name, samples in (("load", loads), ("binding", bindings)):
            p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
            print(f"  {name:9s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
        print(f"  memory    {count} dropped {dropped:+.1f} MiB, {count} kept {alive:+.1f} MiB")
        print(f"            dropped/kept = {dropped / alive if alive > 0 else float('nan'):.2f}")
        del kept
        old = load_generation([MODULE], label="v1", search=[roots["v1"]])
        new = load_generation([MODULE], label="v2", search=[roots["v2"]])
        for use_buf in (True, False):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                run_upgrade_check(old.files(), new.files(), use_buf=use_buf)
                times.append(time.perf_counter() - started)
            name = "buf" if use_buf else "built-in"
            print(
                f"  check v1 → v2 with {name:8s} median {statistics.median(times) * 1000:7.1f} ms"
            )


if __name__ == "__main__":
    main()
