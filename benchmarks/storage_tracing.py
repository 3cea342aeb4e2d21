"""What tracing adds to storage operations: SQLite, in-process, tracing off and on.

Times ``Repository.create`` (BEGIN IMMEDIATE + INSERT on a driver thread, commit) and
``Repository.get`` (one SELECT) on a fresh SQLite file, each inside a span as a
handler's statements run inside its call's span, in three settings:

* ``off``: tracing off (the default): no listener on the engine, no context carried
  into the driver's threads; the "call" span is the API's no-op one;
* ``on``: tracing on at 100% sampling (``ALWAYS_ON``) through a ``BatchSpanProcessor``
  into an exporter that drops the spans, as the host sets one up: each statement is a
  CLIENT span (started and ended on the driver's thread, attributes set, queued);
* ``on, no parent``: tracing on but outside any span, as the outbox relay's sweeps
  run: no statement span is made.

Settings alternate round by round; the best round of each is reported, in µs per
operation (the SQLite write, its fsync-free WAL commit and the thread hops included,
so the difference is what tracing adds on top of a real statement).

    .venv/bin/python -m benchmarks.storage_tracing
    .venv/bin/python -m benchmarks.storage_tracing --operations 500 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nexus.orders.v1 import orders_pb2

from nexus_grpc import tracing
from nexus_grpc.storage import Storage
from nexus_grpc.tracing._state import set_tracer

SETTINGS = ("off", "on", "on, no parent")


@contextlib.contextmanager
def _tracing_on() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class Dropping(SpanExporter):
        """Counts the spans handed over, and drops them."""

        exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    exporter = Dropping()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    set_tracer(provider.get_tracer("nexus"))
    try:
        yield exporter
    finally:
        set_tracer(None)
        provider.shutdown()


async def _round(setting: str, directory: Path, operations: int) -> tuple[float, float]:
    """µs per create and per get, for one round of ``setting``."""
    tracing_on = setting != "off"
    with _tracing_on() if tracing_on else contextlib.nullcontext():
        # Opened under the setting: the listeners are installed at open time.
        path = directory / f"{setting.replace(' ', '').replace(',', '_')}-{time.monotonic_ns()}.db"
        async with await Storage.connect(f"sqlite:///{path}") as storage:
            orders = storage.namespace("plugins/business/orders").repository(orders_pb2.Order)
            parent = setting != "on, no parent"
            span = (
                tracing.tracer().start_as_current_span("call")
                if parent
                else contextlib.nullcontext()
            )
            with span:
                ids = []
                started = time.perf_counter()
                for index in range(operations):
                    created = await orders.create(orders_pb2.Order(customer_id=f"c{index}"))
                    ids.append(created.id)
                created_us = (time.perf_counter() - started) / operations * 1e6
                started = time.perf_counter()
                for order_id in ids:
                    await orders.get(order_id)
                read_us = (time.perf_counter() - started) / operations * 1e6
    return created_us, read_us


async def main(operations: int, rounds: int) -> dict[str, tuple[float, float]]:
    """The best (create, get) µs per operation of each setting."""
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as name:
        directory = Path(name)
        await _round("off", directory, max(10, operations // 10))  # warm-up
        for _ in range(rounds):
            for setting in SETTINGS:
                create_us, get_us = await _round(setting, directory, operations)
                old = best.get(setting, (float("inf"), float("inf")))
                best[setting] = (min(old[0], create_us), min(old[1], get_us))
    return best


def _print(best: dict[str, tuple[float, float]]) -> None:
    off = best["off"]
    print(f"{'setting':<16}{'create µs':>12}{'get µs':>12}{'Δ create':>12}{'Δ get':>10}")
    for setting in SETTINGS:
        create_us, get_us = best[setting]
        print(
            f"{setting:<16}{create_us:>12.1f}{get_us:>12.1f}"
            f"{create_us - off[0]:>+12.1f}{get_us - off[1]:>+10.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=300, help="creates and gets per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting (best kept)")
    arguments = parser.parse_args()
    _print(asyncio.run(main(arguments.operations, arguments.rounds)))
