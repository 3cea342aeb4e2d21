"""Point operations of the storage against the bare driver, side by side in one run.

For each backend (SQLite; PostgreSQL on a throwaway server of its own on a free
loopback port, when its binaries are installed) and operation, the CPU time per
operation (``time.process_time`` over N operations: this process's threads included,
a server's not) of:

* ``nexus``: ``Repository.get`` by id, ``Repository.create`` and ``Repository.update``
  with ``expected_version``, each its own transaction, on ``nexus.orders.v1.Order``;
  ``unit``: a unit of work creating two orders (one per collection) in one transaction,
  the shape of a create with its outbox event;
* ``driver``: the same statement on the same table through the bare driver, with the
  message parsed (get) or serialized (create, update) by protobuf: the stdlib
  ``sqlite3`` module on a WAL connection (one cached statement, its own transaction),
  or one ``asyncpg`` connection with prepared statements.

The ratio column is nexus / driver (the issue's goals: ≤ 4x on SQLite, ≤ 1.5x on
PostgreSQL). Rounds interleave the two so drifts of a noisy machine fall on both; the
best round of each is reported. When ``benchmarks/storage_scale.py`` exists, its
``scale_table()`` prints after this table in the same run.

    .venv/bin/python -m benchmarks.storage
    .venv/bin/python -m benchmarks.storage --operations 2000 --rounds 5 --no-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexus.orders.v1 import orders_pb2

from nexus_grpc.storage import Storage

OPERATIONS = ("get", "create", "update", "unit")
#: The collection of a unit of work's second create (where an outbox event would go).
SECOND = "bench.second"
NAMESPACE = "bench/storage"
COLLECTION = orders_pb2.Order.DESCRIPTOR.full_name

#: One op of a side: awaited ``operations`` times per round.
Op = Callable[[int], Awaitable[None]]


def _order(index: int) -> orders_pb2.Order:
    order = orders_pb2.Order(customer_id=f"customer-{index % 97}", currency_code="EUR")
    order.items.add(sku="BOOK-1", quantity=2, unit_price_cents=1250)
    order.items.add(sku="PEN-7", quantity=10, unit_price_cents=199)
    return order


def _sqlite_now() -> str:
    # The stored form of SQLAlchemy's SQLite DateTime, which the table's rows use.
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --------------------------------------------------------------------------- nexus side


class NexusSide:
    """Repository operations on a connected storage."""

    def __init__(self, storage: Storage) -> None:
        self.namespace = storage.namespace(NAMESPACE)
        self.orders = self.namespace.repository(orders_pb2.Order)
        self.ids: list[str] = []
        self.versions: dict[str, int] = {}

    async def seed(self, count: int) -> None:
        for index in range(count):
            created = await self.orders.create(_order(index))
            self.ids.append(created.id)
            self.versions[created.id] = 1

    async def get(self, index: int) -> None:
        if await self.orders.get(self.ids[index % len(self.ids)]) is None:
            raise RuntimeError("a seeded order is missing")

    async def create(self, index: int) -> None:
        await self.orders.create(_order(index))

    async def unit(self, index: int) -> None:
        async with self.namespace.transaction() as unit:
            await unit.repository(orders_pb2.Order).create(_order(index))
            await unit.repository(orders_pb2.Order, collection=SECOND).create(_order(index))

    async def update(self, index: int) -> None:
        order_id = self.ids[index % len(self.ids)]
        order = _order(index)
        order.id = order_id
        version = self.versions[order_id]
        await self.orders.update(order, expected_version=version)
        self.versions[order_id] = version + 1


# --------------------------------------------------------------------------- bare sqlite3


class SqliteDriverSide:
    """The same statements through the stdlib ``sqlite3`` module, each its own
    transaction, on the same file and table."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL").fetchall()
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.ids: list[str] = []
        self.versions: dict[str, int] = {}

    async def seed(self, count: int) -> None:
        for index in range(count):
            await self.create(index)

    async def get(self, index: int) -> None:
        row = self.db.execute(
            "SELECT payload FROM nexus_records WHERE namespace = ? AND collection = ? AND id = ?",
            (NAMESPACE, COLLECTION, self.ids[index % len(self.ids)]),
        ).fetchone()
        orders_pb2.Order.FromString(row[0])

    async def create(self, index: int) -> None:
        order = _order(index)
        order.id = uuid.uuid4().hex
        now = _sqlite_now()
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "INSERT INTO nexus_records (namespace, collection, id, payload, index_doc, "
            "version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
            (NAMESPACE, COLLECTION, order.id, order.SerializeToString(), "{}", now, now),
        )
        self.db.execute("COMMIT")
        self.ids.append(order.id)
        self.versions[order.id] = 1

    async def unit(self, index: int) -> None:
        now = _sqlite_now()
        self.db.execute("BEGIN IMMEDIATE")
        for collection in (COLLECTION, SECOND):
            order = _order(index)
            order.id = uuid.uuid4().hex
            self.db.execute(
                "INSERT INTO nexus_records (namespace, collection, id, payload, index_doc, "
                "version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                (NAMESPACE, collection, order.id, order.SerializeToString(), "{}", now, now),
            )
        self.db.execute("COMMIT")

    async def update(self, index: int) -> None:
        order_id = self.ids[index % len(self.ids)]
        order = _order(index)
        order.id = order_id
        version = self.versions[order_id]
        self.db.execute("BEGIN IMMEDIATE")
        changed = self.db.execute(
            "UPDATE nexus_records SET payload = ?, version = version + 1, updated_at = ? "
            "WHERE namespace = ? AND collection = ? AND id = ? AND version = ?",
            (order.SerializeToString(), _sqlite_now(), NAMESPACE, COLLECTION, order_id, version),
        ).rowcount
        self.db.execute("COMMIT")
        if changed != 1:
            raise RuntimeError("the bare update found no row")
        self.versions[order_id] = version + 1


# --------------------------------------------------------------------------- bare asyncpg


class AsyncpgSide:
    """The same statements through one asyncpg connection with prepared statements."""

    def __init__(self, connection: Any) -> None:
        self.db = connection
        self.ids: list[str] = []
        self.versions: dict[str, int] = {}

    async def prepare(self) -> None:
        self.select = await self.db.prepare(
            "SELECT payload FROM nexus_records WHERE namespace = $1 AND collection = $2 AND id = $3"
        )
        self.insert = await self.db.prepare(
            "INSERT INTO nexus_records (namespace, collection, id, payload, index_doc, "
            "version, created_at, updated_at) VALUES ($1, $2, $3, $4, '{}'::jsonb, 1, $5, $5)"
        )
        self.change = await self.db.prepare(
            "UPDATE nexus_records SET payload = $1, version = version + 1, updated_at = $2 "
            "WHERE namespace = $3 AND collection = $4 AND id = $5 AND version = $6"
        )

    async def seed(self, count: int) -> None:
        for index in range(count):
            await self.create(index)

    async def get(self, index: int) -> None:
        payload = await self.select.fetchval(NAMESPACE, COLLECTION, self.ids[index % len(self.ids)])
        orders_pb2.Order.FromString(payload)

    async def create(self, index: int) -> None:
        order = _order(index)
        order.id = uuid.uuid4().hex
        await self.insert.fetch(
            NAMESPACE, COLLECTION, order.id, order.SerializeToString(), datetime.now(UTC)
        )
        self.ids.append(order.id)
        self.versions[order.id] = 1

    async def unit(self, index: int) -> None:
        now = datetime.now(UTC)
        async with self.db.transaction():
            for collection in (COLLECTION, SECOND):
                order = _order(index)
                order.id = uuid.uuid4().hex
                await self.insert.fetch(
                    NAMESPACE, collection, order.id, order.SerializeToString(), now
                )

    async def update(self, index: int) -> None:
        order_id = self.ids[index % len(self.ids)]
        order = _order(index)
        order.id = order_id
        version = self.versions[order_id]
        status = await self.change.fetch(
            order.SerializeToString(), datetime.now(UTC), NAMESPACE, COLLECTION, order_id, version
        )
        del status
        self.versions[order_id] = version + 1


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres_server() -> Iterator[Any]:
    """The test suite's throwaway PostgreSQL server (free loopback port), or None."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures import postgres

    if postgres.find_postgres_bin_dir() is None:
        yield None
        return
    fixture = postgres.postgres_server
    function = getattr(fixture, "__wrapped__", None) or fixture._get_wrapped_function()  # type: ignore[attr-defined]
    with contextlib.contextmanager(function)() as server:
        yield server


# --------------------------------------------------------------------------- timing


async def _cpu_per_op(op: Op, start: int, operations: int) -> float:
    began = time.process_time()
    for index in range(start, start + operations):
        await op(index)
    return (time.process_time() - began) / operations * 1e6


async def _compare(
    sides: dict[str, Any], operations: int, rounds: int
) -> dict[tuple[str, str], float]:
    """Best µs of CPU per operation, by (side, operation)."""
    best: dict[tuple[str, str], float] = {}
    for side in sides.values():
        await side.seed(max(100, operations // 4))
    counter = 1_000_000
    for _ in range(rounds):
        for operation in OPERATIONS:
            for name, side in sides.items():
                counter += operations
                cost = await _cpu_per_op(getattr(side, operation), counter, operations)
                key = (name, operation)
                best[key] = min(best.get(key, float("inf")), cost)
    return best


@contextlib.asynccontextmanager
async def _sqlite_sides(directory: Path) -> AsyncIterator[dict[str, Any]]:
    nexus_path, bare_path = directory / "nexus.db", directory / "bare.db"
    async with await Storage.connect(f"sqlite:///{nexus_path}") as nexus:
        # The bare side gets a file of its own with the same table, made by nexus.
        async with await Storage.connect(f"sqlite:///{bare_path}"):
            pass
        driver = SqliteDriverSide(bare_path)
        try:
            yield {"nexus": NexusSide(nexus), "driver": driver}
        finally:
            driver.db.close()


@contextlib.asynccontextmanager
async def _postgres_sides(server: Any) -> AsyncIterator[dict[str, Any]]:
    import asyncpg

    nexus_db, bare_db = server.create_database(), server.create_database()
    try:
        async with await Storage.connect(server.url(nexus_db)) as nexus:
            async with await Storage.connect(server.url(bare_db)):
                pass
            connection = await asyncpg.connect(
                host=server.host, port=server.port, user=server.user, database=bare_db
            )
            try:
                bare = AsyncpgSide(connection)
                await bare.prepare()
                yield {"nexus": NexusSide(nexus), "driver": bare}
            finally:
                await connection.close()
    finally:
        server.drop_database(nexus_db)
        server.drop_database(bare_db)


def _print(backend: str, best: dict[tuple[str, str], float], goal: float) -> None:
    print(f"\n{backend}: CPU µs per operation (best round), goal nexus/driver ≤ {goal:g}x")
    print(f"{'operation':<12}{'nexus':>10}{'driver':>10}{'ratio':>8}")
    for operation in OPERATIONS:
        nexus, driver = best[("nexus", operation)], best[("driver", operation)]
        print(f"{operation:<12}{nexus:>10.1f}{driver:>10.1f}{nexus / driver:>7.2f}x")


async def main(operations: int, rounds: int, postgres: bool) -> dict[str, Any]:
    """Run the comparison on each backend; print and return the tables."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-storage-") as name:
        async with _sqlite_sides(Path(name)) as sides:
            best = await _compare(sides, operations, rounds)
        _print("SQLite", best, 4)
        results["sqlite"] = best
    if postgres:
        with postgres_server() as server:
            if server is None:
                print("\nPostgreSQL: no server binaries installed; skipped")
            else:
                async with _postgres_sides(server) as sides:
                    best = await _compare(sides, operations, rounds)
                _print("PostgreSQL", best, 1.5)
                results["postgresql"] = best
    return results


def _scale_hook() -> None:
    # The scale table (10^4..10^6 records) lives in its own module when present.
    if importlib.util.find_spec("benchmarks.storage_scale") is None:
        return
    from benchmarks import storage_scale

    scale_table = getattr(storage_scale, "scale_table", None)
    if scale_table is not None:
        print(f"\n{scale_table()}")  # it returns the tables; printing is the caller's


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=1000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (best kept)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    arguments = parser.parse_args()

    asyncio.run(main(arguments.operations, arguments.rounds, not arguments.no_postgres))
    _scale_hook()
