"""MongoDB point operations: nexus's repository against bare PyMongo async, side by side.

On one throwaway MongoDB-compatible server (SecantusDB, the tests' server), the same
operations run in alternating rounds through

* ``nexus``: ``Repository.get`` / ``create`` / ``update(expected_version=...)`` of an
  ``Order`` on a ``mongodb://`` storage;
* ``bare``: PyMongo's ``AsyncMongoClient`` (same client options) sending the same
  command with the same document, plus the protobuf work the result needs:
  ``find_one`` by ``_id`` + ``Order.FromString``; ``insert_one`` of the stored document
  (payload serialized, index sub-document built by the same function); ``update_one``
  matching ``_id`` and ``version`` with the same ``$set`` / ``$inc``.

It reports, per operation, the median wall time and this process's CPU time (the
client's own cost; the server runs in another process and its time is the same for
both), and the CPU ratio nexus / bare (the goal is ≤ 1.5x). A round is
``--operations`` of one kind; rounds alternate, the best of each is kept.

    .venv/bin/python -m benchmarks.storage_mongo
    .venv/bin/python -m benchmarks.storage_mongo --operations 300 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from nexus.orders.v1 import orders_pb2
from pymongo import AsyncMongoClient

from nexus_grpc.storage import Storage
from nexus_grpc.storage.mongo_query import index_subdocument, record_key

__all__ = ["mongo_point_results", "mongo_point_table"]

NAMESPACE = "bench/point"
COLLECTION = orders_pb2.Order.DESCRIPTOR.full_name
OPERATIONS = ("get", "create", "update")


def _order(number: int) -> orders_pb2.Order:
    made = orders_pb2.Order(
        id=f"p{number:08d}", customer_id="c1", currency_code="EUR", total_cents=500
    )
    made.items.add(sku="sku-1", quantity=1, unit_price_cents=500)
    made.create_time.seconds = 1_700_000_000 + number
    return made


async def _round(
    operation: Callable[[int], Awaitable[object]], start: int, count: int
) -> tuple[float, float]:
    """Median wall µs per operation, and this process's CPU µs per operation (the
    client's own cost: the server runs in another process)."""
    times = []
    cpu = time.process_time()
    for number in range(start, start + count):
        began = time.perf_counter()
        await operation(number)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6, (time.process_time() - cpu) / count * 1e6


async def mongo_point_results(
    url: str, operations: int, rounds: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """Best round per operation, (median wall µs, client CPU µs), of "nexus" and "bare"."""
    storage = await Storage.connect(url)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True, tzinfo=UTC)
    records = client.get_default_database().get_collection("nexus_records")
    orders = storage.namespace(NAMESPACE).repository(orders_pb2.Order)
    fields = {"_id": 0, "payload": 1, "version": 1, "created_at": 1, "updated_at": 1}

    async def bare_get(number: int) -> None:
        found = await records.find_one({"_id": record_key(NAMESPACE, COLLECTION, "seed")}, fields)
        assert found is not None
        orders_pb2.Order.FromString(found["payload"])

    async def bare_create(number: int) -> None:
        message = _order(number)
        now = datetime.now(UTC)
        await records.insert_one(
            {
                "_id": record_key(NAMESPACE, COLLECTION, message.id),
                "ns": NAMESPACE,
                "coll": COLLECTION,
                "id": message.id,
                "payload": message.SerializeToString(deterministic=True),
                "doc": index_subdocument(message),
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
        )

    bare_version = 1

    async def bare_update(number: int) -> None:
        nonlocal bare_version
        message = _order(0)
        message.id, message.note = "bare-updated", str(number)
        done = await records.update_one(
            {"_id": record_key(NAMESPACE, COLLECTION, message.id), "version": bare_version},
            {
                "$set": {
                    "payload": message.SerializeToString(deterministic=True),
                    "doc": index_subdocument(message),
                    "updated_at": datetime.now(UTC),
                },
                "$inc": {"version": 1},
            },
        )
        assert done.matched_count == 1
        bare_version += 1

    async def nexus_get(number: int) -> None:
        assert await orders.get("seed") is not None

    async def nexus_create(number: int) -> None:
        await orders.create(_order(number))

    nexus_version = 1

    async def nexus_update(number: int) -> None:
        nonlocal nexus_version
        message = _order(0)
        message.id, message.note = "nexus-updated", str(number)
        await orders.update(message, expected_version=nexus_version)
        nexus_version += 1

    cases = {
        "nexus": {"get": nexus_get, "create": nexus_create, "update": nexus_update},
        "bare": {"get": bare_get, "create": bare_create, "update": bare_update},
    }
    best: dict[str, dict[str, tuple[float, float]]] = {"nexus": {}, "bare": {}}
    try:
        seed = _order(0)
        seed.id = "seed"
        await orders.create(seed)
        for name in ("bare-updated", "nexus-updated"):
            seed.id = name
            await orders.create(seed)
        start = 1_000
        for _ in range(rounds):
            for operation in OPERATIONS:
                for who in ("nexus", "bare"):
                    took = await _round(cases[who][operation], start, operations)
                    start += operations
                    best[who][operation] = min(best[who].get(operation, took), took)
    finally:
        await client.close()
        await storage.close()
    return best


def _format(best: dict[str, dict[str, tuple[float, float]]]) -> str:
    lines = [
        "MongoDB point operations, nexus vs bare PyMongo async (best round): median wall µs,",
        "client CPU µs per operation, and the CPU ratio (what nexus adds to the driver)",
        f"  {'operation':<10} | {'nexus wall':>10} | {'bare wall':>10} | {'nexus CPU':>10} | "
        f"{'bare CPU':>10} | {'ratio':>6}",
    ]
    for operation in OPERATIONS:
        (wall, cpu), (bare_wall, bare_cpu) = best["nexus"][operation], best["bare"][operation]
        lines.append(
            f"  {operation:<10} | {wall:10.0f} | {bare_wall:10.0f} | {cpu:10.0f} | "
            f"{bare_cpu:10.0f} | {cpu / bare_cpu:5.2f}x"
        )
    return "\n".join(lines)


def mongo_point_table(url: str | None = None, operations: int = 200, rounds: int = 3) -> str:
    """Run the comparison (on ``url``, else a throwaway SecantusDB) and return its table
    (not inside a running event loop: it runs its own)."""
    if url is not None:
        return _format(asyncio.run(mongo_point_results(url, operations, rounds)))
    from tests.fixtures import mongo

    starter = contextlib.contextmanager(mongo._run_server)
    with starter(mongo._DEFAULT_SERVER) as server:
        return _format(asyncio.run(mongo_point_results(server.url("point"), operations, rounds)))


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a mongodb:// URL to use instead of a throwaway server")
    parser.add_argument("--operations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    print(mongo_point_table(arguments.url, arguments.operations, arguments.rounds))


if __name__ == "__main__":
    main()
