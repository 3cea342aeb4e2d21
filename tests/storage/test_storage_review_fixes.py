"""Regressions of storage defects: cancelled PostgreSQL point writes, SQLite statements
on the event loop, the reindex after a type change, and URL options of the driver."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nexus.orders.v1 import orders_pb2
from sqlalchemy import event
from sqlalchemy.engine import Engine

from benchmarks.storage_scale import NAMESPACE, load_orders
from nexus_grpc.errors import ConflictError, NotFoundError
from nexus_grpc.storage import indexes
from nexus_grpc.storage._postgres_points import asyncpg_connect_args
from nexus_grpc.storage.declared import declared_indexes

from . import backend_url, connected
from .test_indexes import item_type

Order = orders_pb2.Order


def _pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextmanager
def statement_threads() -> Iterator[list[tuple[str, Any, int]]]:
    """(statement, parameters, thread id) of every statement SQLAlchemy engines send
    meanwhile."""
    seen: list[tuple[str, Any, int]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters, threading.get_ident()))

    event.listen(Engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", grab)


# --- PostgreSQL: a cancelled point statement is cancelled on the server too -----------


async def test_cancelled_point_writes_are_cancelled_on_the_server(postgres_url: str) -> None:
    async with connected(postgres_url) as storage:
        orders = storage.namespace("points").repository(Order)
        await orders.create(Order(id="locked"))
        other = await asyncpg.connect(_pg(postgres_url))
        # pg_stat_activity is read outside a transaction: inside one it is a snapshot.
        monitor = await asyncpg.connect(_pg(postgres_url))
        try:
            lock = other.transaction()
            await lock.start()
            await other.fetch("SELECT * FROM nexus_records WHERE id = 'locked' FOR UPDATE")
            # Each update waits for the row lock until its caller gives up on it.
            for n in range(15):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(orders.update(Order(id="locked", note=f"n{n}")), 0.1)
            running = (
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND state <> 'idle' AND query LIKE 'UPDATE nexus_records%'"
            )
            # The cancels reach the server within a few round trips (bounded wait).
            for _ in range(100):
                if await monitor.fetchval(running) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await monitor.fetchval(running) == 0
            await lock.rollback()
            # Nothing was left waiting for the lock: no update commits once it is free.
            await asyncio.sleep(0.2)
            version = "SELECT version FROM nexus_records WHERE id = 'locked'"
            assert await other.fetchval(version) == 1
        finally:
            await other.close()
            await monitor.close()
        # The storage still works, within its connections, after the cancellations.
        updated = await orders.update(Order(id="locked", note="after"))
        assert updated.note == "after"
        assert (await orders.get("locked")) == updated


async def test_cancelled_point_statements_keep_their_slot_until_the_backend_is_gone(
    postgres_url: str,
) -> None:
    async with connected(postgres_url) as storage:
        orders = storage.namespace("points").repository(Order)
        await orders.create(Order(id="locked"))
        other = await asyncpg.connect(_pg(postgres_url))
        monitor = await asyncpg.connect(_pg(postgres_url))
        count = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'"
        )
        try:
            # Besides the point connections: the engine's pool (schema), these two.
            points = storage._backend._database._postgres_points  # type: ignore[attr-defined]
            others = await monitor.fetchval(count) - len(points._idle)
            lock = other.transaction()
            await lock.start()
            await other.fetch("SELECT * FROM nexus_records WHERE id = 'locked' FOR UPDATE")
            # Many at once, all cancelled together: the server never sees more point
            # connections than the storage's cap, counted while they are cancelled.
            updates = [
                asyncio.ensure_future(orders.update(Order(id="locked", note=f"n{n}")))
                for n in range(25)
            ]
            await asyncio.sleep(0.3)
            for update in updates:
                update.cancel()
            peak = 0
            for _ in range(20):
                peak = max(peak, await monitor.fetchval(count))
                await asyncio.sleep(0.02)
            await asyncio.gather(*updates, return_exceptions=True)
            await lock.rollback()
            await asyncio.sleep(0.2)
            version = "SELECT version FROM nexus_records WHERE id = 'locked'"
            assert await other.fetchval(version) == 1
        finally:
            await other.close()
            await monitor.close()
    # Ten point connections at most.
    assert 0 < peak - others <= 10, (peak, others)


# --- PostgreSQL: options of SQLAlchemy's dialect in the URL ---------------------------


def test_dialect_only_url_options_are_not_passed_to_asyncpg() -> None:
    args = asyncpg_connect_args(
        {"host": "db", "user": "u", "prepared_statement_cache_size": "0", "timeout": 5.0}
    )
    assert args == {"host": "db", "user": "u", "timeout": 5.0, "statement_cache_size": 0}
    # asyncpg's own option wins over the dialect's.
    kept = asyncpg_connect_args({"prepared_statement_cache_size": 0, "statement_cache_size": 7})
    assert kept == {"statement_cache_size": 7}
    with pytest.raises(ValueError, match="prepared_statement_cache_size"):
        asyncpg_connect_args({"prepared_statement_cache_size": "none"})


async def test_the_pgbouncer_url_option_works_and_prepares_no_named_statements(
    postgres_url: str,
) -> None:
    async with connected(postgres_url + "?prepared_statement_cache_size=0") as storage:
        orders = storage.namespace("points").repository(Order)
        created = await orders.create(Order(id="a", note="first"))
        assert await orders.get("a") == created
        await orders.update(Order(id="a", note="second"), expected_version=1)
        assert (await orders.get_record("a")).version == 2  # type: ignore[union-attr]
        page = await orders.list(filter={"customer_id": ""})
        assert [order.note for order in page.items] == ["second"]
        # No named prepared statement on any point connection (PgBouncer's pitfall).
        points = storage._backend._database._postgres_points  # type: ignore[attr-defined]
        assert points._idle
        assert all(not connection._stmt_cache_enabled for connection in points._idle)


# --- SQLite: statements that may read many rows never run on the event loop -----------


async def test_a_unit_of_work_runs_its_list_statements_off_the_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nexus.db"
    async with connected(url) as storage:
        await load_orders("sqlite", url, 0, 30_000)
        loop_thread = threading.get_ident()
        ticks = 0
        stop = asyncio.Event()

        async def probe() -> None:
            # Counts turns of the loop: none while a statement holds the loop's thread.
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0)
                ticks += 1

        ticker = asyncio.ensure_future(probe())
        try:
            with statement_threads() as seen:
                async with storage.namespace(NAMESPACE).transaction() as unit:
                    repository = unit.repository(Order)
                    before = ticks
                    page = await repository.list(filter={"currency_code": "XXX"}, page_size=50)
                    during_list = ticks - before
                    # A point statement of the same unit still runs where it stands.
                    assert await repository.get("o00000001") is not None
        finally:
            stop.set()
            await ticker
        assert page.items == []
        selects = [thread for sql, _, thread in seen if sql.startswith("SELECT")]
        assert selects and loop_thread not in selects
        # The loop kept turning while the unindexed filter read all 30k rows.
        assert during_list > 10, during_list


async def test_sqlite_index_builds_and_reindex_batches_run_off_the_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nexus.db"
    v1 = item_type({"owner": "string", "rank": "int64"}, [["rank"]])
    async with connected(url) as storage:
        await storage.apply_indexes([v1])
        items = storage.namespace("tests/evo").repository(v1)
        for number in range(3):
            await items.create(v1(id=f"i{number}", rank=number))
    v2 = item_type({"owner": "string", "rank": "string"}, [["rank"], ["owner"]])
    loop_thread = threading.get_ident()
    async with connected(url) as storage:
        with statement_threads() as seen:
            changes = await storage.apply_indexes([v2])
        assert changes.reindexed and len(changes.created) == 2
    heavy = [
        thread
        for sql, _, thread in seen
        if sql.startswith(("CREATE INDEX", "UPDATE nexus_records", "SELECT nexus_records.id"))
    ]
    assert len(heavy) >= 4 and loop_thread not in heavy


# --- the reindex after a type change: keyset batches per namespace --------------------


async def test_the_reindex_seeks_batch_after_batch_in_every_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/nexus.db"
    v1 = item_type({"owner": "string", "rank": "int64"}, [["rank"]])
    sizes = {"tests/a": 12, "tests/b": 5, "tests/c": 0, "tests/d": 7}
    async with connected(url) as storage:
        await storage.apply_indexes([v1])
        for namespace, size in sizes.items():
            items = storage.namespace(namespace).repository(v1)
            for number in range(size):
                await items.create(v1(id=f"i{number:02d}", rank=number + 1))
    monkeypatch.setattr(indexes, "REINDEX_BATCH", 5)
    v2 = item_type({"owner": "string", "rank": "string"}, [["rank"]])
    async with connected(url) as storage:
        with statement_threads() as seen:
            changes = await storage.apply_indexes([v2])
        assert changes.reindexed == ["nexus.storage.evo.Item"]
        for namespace, size in sizes.items():
            items = storage.namespace(namespace).repository(v2)
            page = await items.list(filter={"rank": ""}, page_size=100)
            assert len(page.items) == size
    batches = [(sql, bound) for sql, bound, _ in seen if sql.startswith("SELECT nexus_records.id")]
    # Per namespace with records: full batches, then one short one (12 -> 5, 5, 2).
    assert len(batches) == 3 + 2 + 2
    # Each batch seeks on the primary key: no scan of the collection, no sort.
    with contextlib.closing(sqlite3.connect(f"{tmp_path}/nexus.db")) as connection:
        plan = connection.execute("EXPLAIN QUERY PLAN " + batches[1][0], batches[1][1]).fetchall()
    detail = " | ".join(str(row[-1]) for row in plan)
    assert "(namespace=? AND collection=? AND id>?)" in detail, detail
    assert "SCAN" not in detail and "TEMP B-TREE" not in detail, detail


# --- an update outside a unit of work tells a conflict from a missing record at once --


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


async def test_an_update_tells_conflict_from_not_found(sql_url: str) -> None:
    async with connected(sql_url) as storage:
        orders = storage.namespace("points").repository(Order)
        await orders.create(Order(id="a"))
        await orders.update(Order(id="a", note="two"), expected_version=1)
        with pytest.raises(ConflictError, match="version 2, expected 1"):
            await orders.update(Order(id="a", note="stale"), expected_version=1)
        with pytest.raises(NotFoundError):
            await orders.update(Order(id="missing"), expected_version=1)
        with pytest.raises(NotFoundError):
            await orders.update(Order(id="missing"))
        assert (await orders.get_record("a")).version == 2  # type: ignore[union-attr]


async def test_a_conflict_reports_the_version_the_update_found(postgres_url: str) -> None:
    async with connected(postgres_url) as storage:
        orders = storage.namespace("points").repository(Order)
        await orders.create(Order(id="a"))
        other = await asyncpg.connect(_pg(postgres_url))
        try:
            change = other.transaction()
            await change.start()
            await other.execute("UPDATE nexus_records SET version = 2 WHERE id = 'a'")
            # Waits for the other transaction's row lock, then finds version 2: the
            # conflict names that version, not the one of the statement's snapshot.
            update = asyncio.ensure_future(
                orders.update(Order(id="a", note="late"), expected_version=1)
            )
            await asyncio.sleep(0.2)
            assert not update.done()
            await change.commit()
            with pytest.raises(ConflictError, match="version 2, expected 1"):
                await update
            # Deleted while the update waits: not found.
            change = other.transaction()
            await change.start()
            await other.execute("DELETE FROM nexus_records WHERE id = 'a'")
            update = asyncio.ensure_future(
                orders.update(Order(id="a", note="late"), expected_version=2)
            )
            await asyncio.sleep(0.2)
            await change.commit()
            with pytest.raises(NotFoundError):
                await update
        finally:
            await other.close()


async def test_sqlite_rebuilds_a_declared_index_dropped_by_hand(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nexus.db"
    v1 = item_type({"owner": "string"}, [["owner"]])
    (name,) = [index.name for index in declared_indexes(v1.DESCRIPTOR)]
    async with connected(url) as storage:
        assert (await storage.apply_indexes([v1])).created == [name]
    with contextlib.closing(sqlite3.connect(f"{tmp_path}/nexus.db")) as connection:
        connection.execute(f"DROP INDEX {name}")
        connection.commit()
    async with connected(url) as storage:
        again = await storage.apply_indexes([v1])
        assert again.created == [name] and not again.dropped
        # Built once: the catalog keeps one row for it.
        assert not (await storage.apply_indexes([v1])).created
    with contextlib.closing(sqlite3.connect(f"{tmp_path}/nexus.db")) as connection:
        found = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?"
        assert connection.execute(found, (name,)).fetchone() == (1,)
        rows = "SELECT count(*) FROM nexus_index_catalog WHERE index_name = ?"
        assert connection.execute(rows, (name,)).fetchone() == (1,)
