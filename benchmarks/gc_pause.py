"""What one full garbage collection stalls a started host for, with and without the
freeze ``nexus serve`` takes of its imports (``nexus_grpc/heap.py``).

Each side runs in a fresh interpreter: the imports ``nexus serve`` makes, then (on the
frozen side) ``freeze_imported()`` as ``nexus serve`` calls it, then a production host
with the orders plugin started in-process (``benchmarks.profile_rest.nexus_app``: SQLite,
the bench's auth and limits) serving 200 REST creates, then ``gc.collect()`` timed
``--collections`` times. A full collection runs on the event loop's thread: every call
in flight waits for it.

    .venv/bin/python -m benchmarks.gc_pause
    .venv/bin/python -m benchmarks.gc_pause --collections 9
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REQUESTS = 200


def _measure(freeze: bool, collections: int) -> dict[str, float]:
    """In this interpreter: the objects a full collection walks and its durations (ms)."""
    # What nexus serve imports before the freeze.
    for module in ("nexus_grpc.host", "nexus_grpc.supervisor.worker"):
        importlib.import_module(module)

    frozen = 0
    if freeze:
        from nexus_grpc.heap import freeze_imported

        frozen = freeze_imported()

    from benchmarks.profile_rest import AUTHORIZATION, BODY, asgi_call, nexus_app
    from benchmarks.run import make_credentials

    with tempfile.TemporaryDirectory(prefix="nexus-bench-gc-") as name:
        work = Path(name)
        os.chmod(work, 0o700)
        credentials = make_credentials(work)
        AUTHORIZATION.append(credentials.authorization.encode())

        async def run() -> dict[str, float]:
            async with nexus_app(work / "data", credentials.secret_file) as app:
                for _ in range(_REQUESTS):
                    status, body = await asgi_call(app, "POST", "/v1/orders", BODY)
                    if status != 200:
                        raise RuntimeError(f"create answered {status}: {body[:200]!r}")
                times = []
                for _ in range(collections):
                    began = time.perf_counter()
                    gc.collect()
                    times.append((time.perf_counter() - began) * 1000)
                return {
                    "tracked": float(len(gc.get_objects())),
                    "frozen": float(frozen),
                    "best_ms": min(times),
                    "median_ms": statistics.median(times),
                }

        return asyncio.run(run())


def main(collections: int) -> dict[str, dict[str, float]]:
    """Both sides, each in its own interpreter; prints the table and returns it."""
    results: dict[str, dict[str, float]] = {}
    for side in ("as imported", "frozen"):
        flag = ["--frozen"] if side == "frozen" else []
        argv = [sys.executable, "-m", "benchmarks.gc_pause", "--side", *flag]
        argv += ["--collections", str(collections)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"gc_pause: the {side!r} side failed ({done.returncode})")
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    print("A started host (orders plugin, 200 creates served): one full gc.collect()")
    print(f"{'heap':>12} {'tracked':>9} {'frozen':>8} {'best ms':>8} {'median ms':>10}")
    for side, row in results.items():
        print(
            f"{side:>12} {row['tracked']:>9.0f} {row['frozen']:>8.0f} "
            f"{row['best_ms']:>8.2f} {row['median_ms']:>10.2f}"
        )
    ratio = results["as imported"]["median_ms"] / max(results["frozen"]["median_ms"], 1e-6)
    print(f"frozen: a full collection stalls the loop {ratio:.0f}x less")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", type=int, default=5, help="full collections timed")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frozen", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.side:
        print(json.dumps(_measure(arguments.frozen, arguments.collections)))
    else:
        main(arguments.collections)
