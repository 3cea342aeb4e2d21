"""Does the storage stay flat as a collection grows? 10^4, 10^5 and 10^6 orders.

For each backend (SQLite, PostgreSQL, MongoDB) and size, a fresh database gets one
collection of ``Order`` records, bulk-loaded with the bare driver (sqlite3
``executemany`` in one transaction, asyncpg ``COPY``, PyMongo ``insert_many``), rows
built the way the repository builds them (the same payload, the same
:func:`~nexus_grpc.storage.index_document`, the same column encodings). Then the
order's declared indexes are built as a start builds them (``Storage.apply_indexes``;
the time it takes is printed), and it times, through ``Repository``:

* ``get``: one order by id (random ids over the whole collection);
* ``list``: the first page of 50 of one customer's orders, newest first (a filter on a
  declared index, ``customer_id`` = random customer; every customer has 200 orders, so
  the answer is the same size at every collection size);
* ``create``: one new order.

It reports the median latency (p50, µs) per operation and its ratio to the 10^4 figure:
a real index keeps it near 1.0x; a scan grows with the collection. The sizes take turns
round after round (``--rounds``) and each keeps its best round, so a burst of load from
elsewhere on the machine does not favour one size.

PostgreSQL and MongoDB are throwaway servers started here (the test fixtures' own
starters: PostgreSQL's binaries, SecantusDB from PyPI), never the machine's services.

    .venv/bin/python -m benchmarks.storage_scale                       # all, 10^4..10^6
    .venv/bin/python -m benchmarks.storage_scale --backends sqlite --sizes 10000 100000
    .venv/bin/python -m benchmarks.storage_scale --without-indexes --operations 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexus.orders.v1 import orders_pb2
from sqlalchemy.dialects import sqlite as sqlite_dialect

from nexus_grpc.storage import Repository, Storage, index_document
from nexus_grpc.storage.mongo_query import index_subdocument, record_key
from nexus_grpc.storage.schema import records

__all__ = ["BACKENDS", "SIZES", "load_orders", "order", "scale_results", "scale_table"]

BACKENDS = ("sqlite", "postgresql", "mongodb")
SIZES = (10_000, 100_000, 1_000_000)
NAMESPACE = "bench/scale"
COLLECTION = orders_pb2.Order.DESCRIPTOR.full_name
ORDERS_PER_CUSTOMER = 200
#: Largest MongoDB collection loaded by default: SecantusDB, the test server, stores
#: ~600 records/s, so 10^6 would take half an hour.
MONGODB_LARGEST = 100_000
#: Timed operations of each kind per size.
OPERATIONS = 200
#: Rounds: the sizes take turns, each keeps its best round.
ROUNDS = 3
_BATCH = 20_000
_EPOCH = 1_700_000_000


def order(number: int) -> orders_pb2.Order:
    """Order ``number`` of the benchmark's collection (deterministic)."""
    made = orders_pb2.Order(
        id=f"o{number:08d}",
        customer_id=f"c{number // ORDERS_PER_CUSTOMER:06d}",
        status=orders_pb2.ORDER_STATUS_PENDING,
        total_cents=100 + number % 1000,
        currency_code="EUR",
    )
    made.items.add(sku=f"sku-{number % 50}", quantity=1, unit_price_cents=made.total_cents)
    made.create_time.seconds = made.update_time.seconds = _EPOCH + number
    return made


def _batches(start: int, stop: int) -> Iterator[range]:
    for first in range(start, stop, _BATCH):
        yield range(first, min(first + _BATCH, stop))


def _load_sqlite(path: str, start: int, stop: int) -> None:
    dialect = sqlite_dialect.dialect()  # type: ignore[no-untyped-call]
    as_json = records.c.index_doc.type.bind_processor(dialect)
    as_time = records.c.created_at.type.bind_processor(dialect)
    assert as_json is not None and as_time is not None
    now = as_time(datetime.now(UTC))
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for numbers in _batches(start, stop):
            rows = []
            for number in numbers:
                message = order(number)
                payload = message.SerializeToString(deterministic=True)
                document = as_json(index_document(message))
                rows.append((NAMESPACE, COLLECTION, message.id, payload, document, 1, now, now))
            connection.executemany(
                "INSERT INTO nexus_records (namespace, collection, id, payload, index_doc, "
                "version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        connection.execute("COMMIT")
        # Statistics as a long-running database has them; sampled, so it stays quick.
        connection.execute("PRAGMA analysis_limit = 1000")
        connection.execute("ANALYZE")
    finally:
        connection.close()


async def _load_postgres(url: str, start: int, stop: int) -> None:
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        now = datetime.now(UTC)
        columns = [
            "namespace", "collection", "id", "payload", "index_doc", "version",
            "created_at", "updated_at",
        ]  # fmt: skip
        async with connection.transaction():
            for numbers in _batches(start, stop):
                rows = []
                for number in numbers:
                    message = order(number)
                    payload = message.SerializeToString(deterministic=True)
                    document = json.dumps(index_document(message))
                    rows.append((NAMESPACE, COLLECTION, message.id, payload, document, 1, now, now))
                await connection.copy_records_to_table(
                    "nexus_records", records=rows, columns=columns
                )
        await connection.execute("ANALYZE nexus_records")
    finally:
        await connection.close()


async def _load_mongo(url: str, start: int, stop: int) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        collection = client.get_default_database().get_collection("nexus_records")
        now = datetime.now(UTC).replace(microsecond=0)
        for numbers in _batches(start, stop):
            documents = []
            for number in numbers:
                message = order(number)
                documents.append(
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
            await collection.insert_many(documents, ordered=False)
    finally:
        await client.close()


async def load_orders(backend: str, url: str, start: int, stop: int) -> None:
    """Bulk-load orders ``start``..``stop - 1`` into ``url``'s records with the bare driver."""
    if backend == "sqlite":
        await asyncio.to_thread(_load_sqlite, url.split("///", 1)[1], start, stop)
    elif backend == "postgresql":
        await _load_postgres(url, start, stop)
    else:
        await _load_mongo(url, start, stop)


async def _p50(operation: Callable[[int], Awaitable[object]], count: int) -> float:
    times = []
    for turn in range(count):
        began = time.perf_counter()
        await operation(turn)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


async def _measure(
    repository: Repository[orders_pb2.Order], size: int, operations: int, turn: int
) -> dict[str, float]:
    chooser = random.Random(size * 1000 + turn)
    customers = size // ORDERS_PER_CUSTOMER

    async def get(_: int) -> None:
        found = await repository.get(f"o{chooser.randrange(size):08d}")
        assert found is not None

    async def listed(_: int) -> None:
        customer = f"c{chooser.randrange(customers):06d}"
        page = await repository.list(
            filter={"customer_id": customer}, order_by="create_time desc", page_size=50
        )
        assert len(page.items) == 50 and page.next_page_token

    first_new = 10_000_000 + turn * operations  # each round creates orders of its own

    async def create(number: int) -> None:
        await repository.create(order(first_new + number))

    return {
        "get": await _p50(get, operations),
        "list": await _p50(listed, operations),
        "create": await _p50(create, operations),
    }


@contextlib.contextmanager
def _server(backend: str, workdir: Path) -> Iterator[Callable[[str], str]]:
    """A function giving the URL of a fresh database named ``name`` on ``backend``."""
    if backend == "sqlite":
        yield lambda name: f"sqlite:///{workdir}/{name}.db"
        return
    if backend == "postgresql":
        from tests.fixtures import postgres

        with contextlib.contextmanager(postgres.postgres_server.__wrapped__)() as server:
            yield lambda _name: server.url(server.create_database())
        return
    from tests.fixtures import mongo

    with contextlib.contextmanager(mongo._run_server)(mongo._DEFAULT_SERVER) as server:
        yield server.url


async def _backend_results(
    backend: str, sizes: Sequence[int], *, indexes: bool, operations: int, rounds: int
) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="nexus-scale-") as workdir,
        _server(backend, Path(workdir)) as fresh,
    ):
        storages: dict[int, Storage] = {}
        try:
            for size in sorted(sizes):
                # A database per size, loaded before its indexes exist (a bulk load is
                # faster without them), then indexed as a start would: that build is
                # the "index added to a large collection" case.
                url = fresh(f"scale{size}")
                storages[size] = storage = await Storage.connect(url)
                began = time.perf_counter()
                await load_orders(backend, url, 0, size)
                loaded = time.perf_counter()
                if indexes:
                    await storage.apply_indexes([orders_pb2.Order])
                built = time.perf_counter()
                print(
                    f"scale: {backend} {size} records loaded in {loaded - began:.1f} s, "
                    f"indexes built in {built - loaded:.1f} s",
                    file=sys.stderr,
                )
            # Sizes take turns, round after round, and each keeps its best round: a
            # burst of load from elsewhere on the machine cannot favour one size.
            for turn in range(rounds):
                for size, storage in storages.items():
                    repository = storage.namespace(NAMESPACE).repository(orders_pb2.Order)
                    measured = await _measure(repository, size, operations, turn)
                    best = results.setdefault(size, measured)
                    for operation, value in measured.items():
                        best[operation] = min(best[operation], value)
        finally:
            for storage in storages.values():
                await storage.close()
    return results


async def scale_results(
    sizes: Sequence[int] = SIZES,
    backends: Sequence[str] = BACKENDS,
    *,
    indexes: bool = True,
    operations: int = OPERATIONS,
    rounds: int = ROUNDS,
    mongodb_largest: int | None = MONGODB_LARGEST,
) -> dict[str, dict[int, dict[str, float]] | str]:
    """p50 µs per backend, size and operation; a backend that failed maps to why.

    ``indexes`` False leaves the declared indexes out: what lists cost without them.
    MongoDB gets only the sizes up to ``mongodb_largest`` (None: all).
    """
    results: dict[str, dict[int, dict[str, float]] | str] = {}
    for backend in backends:
        measured = list(sizes)
        if backend == "mongodb" and mongodb_largest is not None:
            measured = [size for size in sizes if size <= mongodb_largest] or measured[:1]
        try:
            results[backend] = await _backend_results(
                backend, measured, indexes=indexes, operations=operations, rounds=rounds
            )
        except BaseException as error:  # pytest.skip/fail of the starters are BaseException
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise
            results[backend] = f"{type(error).__name__}: {error}"
    return results


def _format(results: dict[str, dict[int, dict[str, float]] | str]) -> str:
    lines: list[str] = []
    for backend, by_size in results.items():
        lines.append(f"{backend}: p50 µs (ratio to the smallest size)")
        if isinstance(by_size, str):
            lines.append(f"  not measured: {by_size}")
            continue
        sizes = sorted(by_size)
        lines.append(f"  {'records':>10} | {'get':>16} | {'list 50':>16} | {'create':>16}")
        for size in sizes:
            cells = []
            for operation in ("get", "list", "create"):
                value, base = by_size[size][operation], by_size[sizes[0]][operation]
                cells.append(f"{value:9.0f} ({value / base:4.2f}x)")
            lines.append(f"  {size:>10} | " + " | ".join(cells))
    return "\n".join(lines)


def scale_table(
    sizes: Sequence[int] = SIZES,
    backends: Sequence[str] = BACKENDS,
    *,
    indexes: bool = True,
    operations: int = OPERATIONS,
    rounds: int = ROUNDS,
    mongodb_largest: int | None = MONGODB_LARGEST,
) -> str:
    """Run the scale benchmark and return its tables, one per backend (not inside a
    running event loop: it runs its own)."""
    results = scale_results(
        sizes,
        backends,
        indexes=indexes,
        operations=operations,
        rounds=rounds,
        mongodb_largest=mongodb_largest,
    )
    return _format(asyncio.run(results))


def main(argv: Sequence[str] | None = None) -> None:
    """Print the scale tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--operations", type=int, default=OPERATIONS, help="per size and round")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="the sizes take turns")
    parser.add_argument(
        "--without-indexes", action="store_true", help="leave the declared indexes out"
    )
    parser.add_argument(
        "--mongodb-largest",
        type=int,
        default=MONGODB_LARGEST,
        help="largest MongoDB size (SecantusDB stores ~600 records/s)",
    )
    arguments = parser.parse_args(argv)
    print(
        scale_table(
            arguments.sizes,
            arguments.backends,
            indexes=not arguments.without_indexes,
            operations=arguments.operations,
            rounds=arguments.rounds,
            mongodb_largest=arguments.mongodb_largest,
        )
    )


if __name__ == "__main__":
    main()
