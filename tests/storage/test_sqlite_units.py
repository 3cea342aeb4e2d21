"""SQLite units of work on the sqlite3 connection: the connection a unit leaves behind is
clean whatever happened to it (commit, rollback, cancellation, a lock held by another
process), and it serves the next unit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import ConflictError
from nexus_grpc.storage import Storage
from nexus_grpc.storage._sqlite_points import SqlitePoints

from . import connected

Order = orders_pb2.Order


async def test_units_commit_roll_back_and_reuse_one_clean_connection(tmp_path: Path) -> None:
    async with connected(f"sqlite:///{tmp_path}/nexus.db") as storage:
        namespace = storage.namespace("units")
        orders = namespace.repository(Order)
        for n in range(5):
            async with namespace.transaction() as unit:
                repository = unit.repository(Order)
                await repository.create(Order(id=f"o-{n}", customer_id="c"))
                # A list of the same unit (SQLAlchemy's statement, on a thread) sees it.
                page = await repository.list(filter={"customer_id": "c"}, page_size=50)
                assert len(page.items) == n + 1

        async def failing() -> None:
            async with namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id="gone"))
                raise RuntimeError("no")

        with pytest.raises(RuntimeError, match="no"):
            await failing()
        assert await orders.get("gone") is None
        assert len((await orders.list(page_size=50)).items) == 5


async def test_a_cancelled_unit_rolls_back_and_the_next_one_runs(tmp_path: Path) -> None:
    async with connected(f"sqlite:///{tmp_path}/nexus.db") as storage:
        namespace = storage.namespace("units")
        started = asyncio.Event()

        async def body() -> None:
            async with namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id="cancelled"))
                started.set()
                await asyncio.sleep(30)

        task = asyncio.ensure_future(body())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="after"))
        orders = namespace.repository(Order)
        assert await orders.get("cancelled") is None
        assert await orders.get("after") is not None


async def test_a_unit_waits_for_another_process_lock_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    async with connected(f"sqlite:///{path}") as storage:
        namespace = storage.namespace("units")
        async with namespace.transaction() as unit:  # the unit's connection is open
            await unit.repository(Order).create(Order(id="first"))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's lock
            ticks = 0

            async def unit_of_work() -> None:
                async with namespace.transaction() as unit:
                    await unit.repository(Order).create(Order(id="second"))

            task = asyncio.ensure_future(unit_of_work())
            for _ in range(20):  # the loop keeps turning while the unit waits for the lock
                await asyncio.sleep(0.01)
                ticks += 1
            assert not task.done()
            other.execute("COMMIT")
            await asyncio.wait_for(task, 10)
            assert ticks == 20
            assert await namespace.repository(Order).get("second") is not None
        finally:
            other.close()


async def test_a_unit_refused_the_lock_past_the_busy_timeout_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    storage = await Storage.connect(f"sqlite:///{path}", sqlite_busy_timeout=0.3)
    try:
        namespace = storage.namespace("units")

        async def unit_of_work(order_id: str) -> None:
            async with namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id=order_id))

        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
            with pytest.raises(ConflictError, match="busy"):
                await unit_of_work("refused")
            other.execute("ROLLBACK")
        finally:
            other.close()
        await unit_of_work("later")  # the connection the refused unit left is clean
        assert await namespace.repository(Order).get("refused") is None
        assert await namespace.repository(Order).get("later") is not None
    finally:
        await storage.close()


async def test_a_unit_on_a_kept_connection_runs_no_pragma_and_one_that_waited_gets_none_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between units the connection has no busy timeout: a unit that takes SQLite's lock
    on the loop's thread runs BEGIN IMMEDIATE, its statements and COMMIT, nothing else.
    One refused the lock at once gets the busy timeout back to wait with, and gives it
    up again once it has ended."""
    path = tmp_path / "nexus.db"
    statements: list[str] = []
    begin_now = SqlitePoints.begin_now

    def traced(self: SqlitePoints, connection: sqlite3.Connection, **options: Any) -> bool:
        connection.set_trace_callback(statements.append)
        return begin_now(self, connection, **options)

    monkeypatch.setattr(SqlitePoints, "begin_now", traced)
    async with connected(f"sqlite:///{path}") as storage:
        namespace = storage.namespace("units")

        async def unit_of_work(order_id: str) -> None:
            async with namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id=order_id))

        await unit_of_work("first")  # on a thread: it opens the connection kept
        statements.clear()
        await unit_of_work("second")
        assert [s.split()[0] for s in statements] == ["BEGIN", "INSERT", "COMMIT"]

        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
            statements.clear()
            waiting = asyncio.ensure_future(unit_of_work("third"))
            await asyncio.sleep(0.3)  # refused at once, it waits on a thread
            assert not waiting.done()
            other.execute("COMMIT")
            await asyncio.wait_for(waiting, 10)
        finally:
            other.close()
        assert statements[:2] == ["BEGIN IMMEDIATE", "PRAGMA busy_timeout = 5000"]
        assert statements[-1] == "PRAGMA busy_timeout = 0"

        statements.clear()
        await unit_of_work("fourth")
        assert [s.split()[0] for s in statements] == ["BEGIN", "INSERT", "COMMIT"]
        assert await namespace.repository(Order).get("fourth") is not None
