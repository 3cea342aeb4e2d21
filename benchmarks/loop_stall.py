"""How long one large REST body stalls the event loop, with and without thread decoding.

Starts a host (the gateway tests' ``transcode`` plugin, whose ``Echo`` is public) in this
process, sends large JSON bodies to ``POST /v1/echo/{id}`` from a client thread with its
own loop, and records the longest gap between wake-ups of a ticker task on the host's
loop (what every other client's call waits for). Run once with
``http.thread_parse_bytes = 0`` (decode on the loop) and once with the default.

The echoed response is as large as the request and is encoded on the loop either way,
so the stall left with thread decoding is the response's.

    .venv/bin/python -m benchmarks.loop_stall
    .venv/bin/python -m benchmarks.loop_stall --megabytes 3.5 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from nexus_grpc.codegen import generate
from nexus_grpc.config import HttpConfig
from nexus_grpc.testing import running_host

REPO = Path(__file__).resolve().parents[1]
TRANSCODE = REPO / "tests" / "gateway" / "plugins"

__all__ = ["main"]


def _body(megabytes: float) -> bytes:
    tag = "abcdefghijklmnop"
    count = int(megabytes * 1024 * 1024 / (len(tag) + 3))
    return orjson.dumps({"small": 1, "tags": [tag] * count})


async def _tick(stop: asyncio.Event, worst: list[float]) -> None:
    """Wake every millisecond; keep the longest gap between two wake-ups."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last)
        last = now


def _send(url: str, body: bytes) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post(
            "/v1/echo/big", content=body, headers={"content-type": "application/json"}
        )
        response.raise_for_status()


async def _stall(thread_parse_bytes: int, body: bytes, repeat: int) -> list[float]:
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as stubs:
        # The plugin's contract compiled as its author's build would (tests/fixtures).
        generate(REPO / "tests" / "gateway" / "proto", Path(stubs))
        sys.path.insert(0, stubs)
        async with running_host(
            plugins=["transcode"],
            plugin_dirs=[TRANSCODE],
            data_dir=data_dir,
            http=HttpConfig(thread_parse_bytes=thread_parse_bytes),
        ) as host:
            stalls = []
            for _ in range(repeat):
                worst = [0.0]
                stop = asyncio.Event()
                ticker = asyncio.ensure_future(_tick(stop, worst))
                # The client has its own thread (and loop): only the host's work counts.
                await asyncio.to_thread(_send, host.http_url, body)
                stop.set()
                await ticker
                stalls.append(worst[0] * 1000)
            return stalls


def main(argv: list[str] | None = None) -> None:
    """Print the worst loop stall per request, decoding on the loop and in a thread."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--megabytes", type=float, default=3.5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    body = _body(args.megabytes)
    print(f"body: {len(body) / 1024 / 1024:.2f} MiB JSON, {args.repeat} requests each")
    for label, threshold in (("decode on the loop", 0), ("decode in a thread (64 KiB+)", 65536)):
        stalls = asyncio.run(_stall(threshold, body, args.repeat))
        ordered = sorted(stalls)
        print(
            f"  {label}: worst loop stall per request, ms: median {ordered[len(ordered) // 2]:.1f}"
            f", min {ordered[0]:.1f}, max {ordered[-1]:.1f}"
        )


if __name__ == "__main__":
    main()
