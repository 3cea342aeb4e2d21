"""What a hot swap costs and what it leaves behind.

Starts a host in this process serving the ``swapper`` test plugin (written to a
temporary plugin folder, as ``tests/hotswap`` does), then:

- **swap time**: reloads it ``--reloads`` times with a code change each time, timing
  each ReloadPlugin-equivalent swap (import, construct, start, health, routing swap),
  p50 / p99;
- **latency under swaps**: ``--callers`` concurrent gRPC callers run for ``--seconds``
  without swaps, then as long again while the plugin is reloaded continuously; p50 /
  p99 of each phase, side by side, and their ratio;
- **leaks**: RSS, asyncio tasks, threads, open file descriptors, ``sys.modules`` and
  the generations of the plugin's module still alive, after 1 reload and after all of
  them.

    .venv/bin/python -m benchmarks.hot_swap
    .venv/bin/python -m benchmarks.hot_swap --reloads 100 --seconds 3 --callers 8

Writes ``benchmarks/results/hot_swap.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import grpc

from nexus_grpc.codegen import generate
from nexus_grpc.config import HotSwapConfig, LimitsConfig
from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "hot_swap.json"

__all__ = ["main"]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _snapshot() -> dict[str, float]:
    """What the process holds now."""
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    alive = sum(
        1
        for o in gc.get_objects()
        if isinstance(o, types.ModuleType) and o.__name__ == "nexus_plugins.swapper"
    )
    return {
        "rss_mib": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "sys_modules": len(sys.modules),
        "plugin_generations_alive": alive,
    }


async def _callers(stub: Any, request: Any, count: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    failures: list[str] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await stub.Hello(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                failures.append(error.code().name)
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(count)))
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed during the run: {failures[:3]}")
    return latencies


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from swap.v1 import swap_pb2, swap_pb2_grpc

    from tests.hotswap.plugin_source import write_plugin

    with tempfile.TemporaryDirectory(prefix="nexus-bench-swap-") as temp:
        root = Path(temp)
        write_plugin(root / "plugins", "0")
        limits = LimitsConfig(
            rate_classes={"default": {"rate": 1e9, "burst": 1e9}, "login": {"rate": 1, "burst": 1}}
        )
        async with running_host(
            plugin_dirs=[root / "plugins"],
            data_dir=root / "data",
            limits=limits,
            hot_swap=HotSwapConfig(enabled=True, drain_timeout=5.0),
        ) as host:
            stub = swap_pb2_grpc.SwapServiceStub(host.channel())
            request = swap_pb2.HelloRequest(name="bench")
            swaps = await _swaps(host, root, args.reloads)
            quiet = await _callers(stub, request, args.callers, args.seconds)
            busy_swaps: list[float] = []
            stop = asyncio.Event()

            async def keep_swapping() -> None:
                number = 0
                while not stop.is_set():
                    number += 1
                    write_plugin(root / "plugins", f"busy-{number}")
                    started = time.perf_counter()
                    await host.host.plugins.reload("swapper")
                    busy_swaps.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)

            swapper = asyncio.ensure_future(keep_swapping())
            busy = await _callers(stub, request, args.callers, args.seconds)
            stop.set()
            await swapper
    return {
        "reloads": args.reloads,
        "swap_ms": {
            "p50": round(_percentile(swaps["times"], 0.5) * 1000, 2),
            "p99": round(_percentile(swaps["times"], 0.99) * 1000, 2),
            "mean": round(statistics.fmean(swaps["times"]) * 1000, 2),
        },
        "calls": {
            "callers": args.callers,
            "seconds_each": args.seconds,
            "without_swaps": _latency(quiet, args.seconds),
            "during_swaps": _latency(busy, args.seconds) | {"swaps": len(busy_swaps)},
        },
        "after_1_reload": swaps["first"],
        f"after_{args.reloads}_reloads": swaps["last"],
    }


def _latency(values: list[float], seconds: float) -> dict[str, float]:
    return {
        "calls_per_s": round(len(values) / seconds, 1),
        "p50_ms": round(_percentile(values, 0.5) * 1000, 3),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 3),
    }


async def _swaps(host: RunningHost, root: Path, count: int) -> dict[str, Any]:
    from tests.hotswap.plugin_source import write_plugin

    times: list[float] = []
    first: dict[str, float] = {}
    for number in range(1, count + 1):
        write_plugin(root / "plugins", str(number))
        started = time.perf_counter()
        await host.host.plugins.reload("swapper")
        times.append(time.perf_counter() - started)
        if number == 1:
            first = _snapshot()
    return {"times": times, "first": first, "last": _snapshot()}


def _print(result: dict[str, Any], reloads: int) -> None:
    swap = result["swap_ms"]
    print(f"swap time over {reloads} reloads: p50 {swap['p50']} ms, p99 {swap['p99']} ms")
    calls = result["calls"]
    quiet, busy = calls["without_swaps"], calls["during_swaps"]
    print(
        f"\n{calls['callers']} callers, {calls['seconds_each']} s each    no swaps  swapping  ratio"
    )
    for key in ("calls_per_s", "p50_ms", "p99_ms"):
        ratio = busy[key] / quiet[key] if quiet[key] else float("nan")
        print(f"  {key:<28}{quiet[key]:>9}{busy[key]:>10}{ratio:>7.2f}")
    print(f"  (reloads during the busy phase: {busy['swaps']})")
    first, last = result["after_1_reload"], result[f"after_{reloads}_reloads"]
    print(f"\nheld by the process       after 1  after {reloads}")
    for key in first:
        print(f"  {key:<24}{first[key]:>7}{last[key]:>10}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args(argv)
    stubs = Path(tempfile.mkdtemp(prefix="nexus-swap-stubs-"))
    generate(REPO / "tests" / "hotswap" / "proto", stubs)
    sys.path.insert(0, str(stubs))
    result = asyncio.run(_run(args))
    _print(result, args.reloads)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
