"""Point statements: SQLite on the loop's thread only when no lock stands in the way,
a thread otherwise; PostgreSQL on connections of their own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nexus.orders.v1 import orders_pb2
from sqlalchemy.dialects import sqlite as sqlite_dialect

from nexus_grpc.storage import Storage
from nexus_grpc.storage._sqlite_points import CHECKPOINT_EVERY, SqlitePoints
from tests.fixtures.postgres import PostgresServer
from tests.storage import connected

Order = orders_pb2.Order


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[tuple[Storage, Path]]:
    """A SQLite storage (busy timeout 5 s) and its file."""
    path = tmp_path / "points.db"
    async with connected(f"sqlite:///{path}") as storage:
        yield storage, path


@contextlib.contextmanager
def other_process_holds(path: Path, begin: str) -> Iterator[sqlite3.Connection]:
    """A connection of its own (as another process's) holding ``begin``'s lock."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute(begin)
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


@contextlib.contextmanager
def points_on(path: Path) -> Iterator[SqlitePoints]:
    """The point statements of one process on the SQLite file ``path``, with no storage
    around them."""
    executor = concurrent.futures.ThreadPoolExecutor(1)
    points = SqlitePoints(
        lambda: sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False),
        executor,
        dialect=sqlite_dialect.dialect(),
        busy_timeout_ms=5000,
        carry_context=False,
        span_namespace=None,
    )
    try:
        yield points
    finally:
        points.close()
        executor.shutdown()


async def _loop_stays_responsive(pending: asyncio.Future[object]) -> None:
    """Ticks of 10 ms keep coming while ``pending`` waits for a lock."""
    for _ in range(5):
        started = time.monotonic()
        await asyncio.sleep(0.01)
        assert time.monotonic() - started < 0.5, "the event loop was blocked"
        assert not pending.done()


async def test_a_write_waiting_for_another_processes_lock_never_blocks_the_loop(
    sqlite: tuple[Storage, Path],
) -> None:
    storage, path = sqlite
    orders = storage.namespace("points").repository(Order)
    await orders.create(Order(id="before"))
    with other_process_holds(path, "BEGIN IMMEDIATE") as other:
        create = asyncio.ensure_future(orders.create(Order(id="waiting")))
        update = asyncio.ensure_future(orders.update(Order(id="before", note="n")))
        await _loop_stays_responsive(create)
        other.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(create, update), 5)
    assert (await orders.get("waiting")) == Order(id="waiting")
    assert (await orders.get("before")) == Order(id="before", note="n")


async def test_a_unit_of_work_waiting_for_another_processes_lock_never_blocks_the_loop(
    sqlite: tuple[Storage, Path],
) -> None:
    storage, path = sqlite
    namespace = storage.namespace("points")
    await namespace.repository(Order).create(Order(id="warm"))  # a pooled connection open

    async def unit() -> None:
        async with namespace.transaction() as work:
            await work.repository(Order).create(Order(id="in-unit"))

    with other_process_holds(path, "BEGIN IMMEDIATE") as other:
        pending = asyncio.ensure_future(unit())
        await _loop_stays_responsive(pending)
        other.execute("COMMIT")
        await asyncio.wait_for(pending, 5)
    assert await namespace.repository(Order).get("in-unit") is not None


async def test_a_read_refused_a_lock_at_once_is_left_to_a_thread(tmp_path: Path) -> None:
    # WAL readers are practically never refused; a rollback-journal file shows the path:
    # a writer's exclusive lock refuses readers, and the loop-side read must not wait.
    path = tmp_path / "journal.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as setup:
        setup.execute("CREATE TABLE t (x)")
        setup.execute("INSERT INTO t VALUES (1)")
    with points_on(path) as points:
        assert (await points.read_now("SELECT x FROM t", ())) is not None  # connected
        with other_process_holds(path, "BEGIN EXCLUSIVE"):
            started = time.monotonic()
            assert await points.read_now("SELECT x FROM t", ()) is None
            assert time.monotonic() - started < 1  # refused at once, not after 5 s
        rows = await points.read_now("SELECT x FROM t", ())
        assert rows is not None and list(rows.rows) == [(1,)]


async def test_writes_that_waited_on_a_thread_count_toward_the_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "count.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as setup:
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE t (x)")
    with points_on(path) as points:
        for number in range(CHECKPOINT_EVERY - 1):
            assert await points.write_now("INSERT INTO t VALUES (?)", (number,)) is not None
        assert not points.checkpoint_due()
        # The last one as when another process held the lock: on the thread.
        await points.write_on_thread("INSERT INTO t VALUES (?)", (-1,), lambda: None)
        assert points.checkpoint_due()


#: Commits of the WAL tests, and what their WAL may grow to: three quarters of the least
#: it would hold unchecked (every commit of a record of ~3000 bytes writes 4 or more
#: pages: the record, its index entries; ~5.5 measured, 110 MB in all, 60 MB bound).
#: Checkpointed, it peaks at 13-20 MB here, ~24 MB with other processes writing and
#: syncing beside it; the headroom is for a disk slow to sync while the writers go on.
WAL_COMMITS = 10 * CHECKPOINT_EVERY
WAL_BOUND = WAL_COMMITS * 4 * 4096 * 3 // 4


@pytest.mark.parametrize("writers", [1, 16])
async def test_the_wal_is_checkpointed_although_no_commit_checkpoints(
    sqlite: tuple[Storage, Path], writers: int
) -> None:
    storage, path = sqlite
    orders = storage.namespace("points").repository(Order)
    note = "x" * 3000  # about a page per record

    async def write(writer: int) -> None:
        for number in range(WAL_COMMITS // writers):
            await orders.create(Order(id=f"w{writer}-{number}", note=note))

    await asyncio.gather(*(write(writer) for writer in range(writers)))
    wal = path.with_name(path.name + "-wal")
    # Checkpointed every CHECKPOINT_EVERY commits, SQLite starts the WAL over from the
    # beginning (the file keeps its largest size). Writes go on while the checkpoint's
    # first pass copies the WAL back: it also holds theirs until the second pass, which
    # runs in the write turn, so the WAL starts over however many write at once.
    assert wal.stat().st_size < WAL_BOUND


async def test_a_postgres_connection_the_server_closed_while_idle_is_not_used(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    async with connected(postgres_url) as storage:
        orders = storage.namespace("points").repository(Order)
        await orders.create(Order(id="kept"))
        postgres_server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        await asyncio.sleep(0.1)  # the end of stream reaches the client
        assert await orders.get("kept") == Order(id="kept")
        assert storage.health.healthy


async def test_a_cancelled_postgres_point_statement_leaves_the_next_ones_working(
    postgres_url: str,
) -> None:
    async with connected(postgres_url) as storage:
        orders = storage.namespace("points").repository(Order)
        await orders.create(Order(id="kept"))
        for _ in range(5):
            pending = asyncio.ensure_future(orders.get("kept"))
            await asyncio.sleep(0)  # sent, not answered yet
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        answers = await asyncio.gather(*(orders.get("kept") for _ in range(20)))
        assert answers == [Order(id="kept")] * 20
        await orders.update(Order(id="kept", note="after"), expected_version=1)
        assert await orders.get("kept") == Order(id="kept", note="after")
