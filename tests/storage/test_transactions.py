"""Units of work, row locking and concurrent writers on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
from nexus.orders.v1 import orders_pb2
from sqlalchemy.exc import DBAPIError

from nexus_grpc.errors import AlreadyExistsError, ConflictError, NotFoundError
from nexus_grpc.storage import Namespace, Storage
from nexus_grpc.storage import _sqlite_points as sqlite_points
from nexus_grpc.storage._sqlite_points import SqlitePoints
from tests.storage import connected

Order = orders_pb2.Order


class Boom(Exception):
    """Raised inside a transaction to make it roll back."""


@pytest.fixture
def namespace(storage: Storage) -> Namespace:
    return storage.namespace("plugins/business/orders")


async def test_transaction_commits_on_normal_exit(namespace: Namespace) -> None:
    async with namespace.transaction() as unit:
        repo = unit.repository(Order)
        await repo.create(Order(id="a", note="1"))
        await repo.create(Order(id="b"))
        await repo.update(Order(id="a", note="2"))
        await repo.delete("b")
        assert (await repo.get("a")).note == "2"  # type: ignore[union-attr]  # own writes

    outside = namespace.repository(Order)
    assert (await outside.get("a")).note == "2"  # type: ignore[union-attr]
    assert await outside.get("b") is None


async def test_an_exception_inside_a_transaction_leaves_nothing_written(
    namespace: Namespace,
) -> None:
    outside = namespace.repository(Order)
    await outside.create(Order(id="kept", note="original"))
    await outside.create(Order(id="doomed"))

    async def change_everything_then_fail() -> None:
        async with namespace.transaction() as unit:
            repo = unit.repository(Order)
            for number in range(5):
                await repo.create(Order(id=f"new-{number}"))
            await repo.update(Order(id="kept", note="changed"))
            assert await repo.delete("doomed") is True
            raise Boom

    with pytest.raises(Boom):
        await change_everything_then_fail()

    assert (await outside.get("kept")).note == "original"  # type: ignore[union-attr]
    assert await outside.get("doomed") is not None
    assert [o.id for o in (await outside.list()).items] == ["doomed", "kept"]


async def test_a_storage_error_inside_a_transaction_rolls_it_back(namespace: Namespace) -> None:
    async def create_then_fail() -> None:
        async with namespace.transaction() as unit:
            repo = unit.repository(Order)
            await repo.create(Order(id="half"))
            await repo.update(Order(id="missing"))

    with pytest.raises(NotFoundError):
        await create_then_fail()

    assert await namespace.repository(Order).get("half") is None


async def test_already_exists_inside_a_transaction_leaves_it_usable(
    namespace: Namespace,
) -> None:
    await namespace.repository(Order).create(Order(id="taken"))

    async with namespace.transaction() as unit:
        repo = unit.repository(Order)
        with pytest.raises(AlreadyExistsError):
            await repo.create(Order(id="taken", note="again"))
        # On PostgreSQL a failed statement would abort the whole transaction.
        await repo.create(Order(id="free"))

    assert await namespace.repository(Order).get("free") is not None


async def test_outside_a_transaction_each_call_commits_on_its_own(namespace: Namespace) -> None:
    repo = namespace.repository(Order)
    await repo.create(Order(id="first"))

    with pytest.raises(AlreadyExistsError):
        await repo.create(Order(id="first"))

    assert await repo.get("first") is not None


async def test_for_update_serialises_concurrent_read_modify_write(namespace: Namespace) -> None:
    await namespace.repository(Order).create(Order(id="counter", total_cents=0))
    workers = 5

    async def increment() -> None:
        async with namespace.transaction() as unit:
            repo = unit.repository(Order)
            order = await repo.get("counter", for_update=True)
            assert order is not None
            await asyncio.sleep(0.02)  # let the other workers pile up on the lock
            order.total_cents += 1
            await repo.update(order)

    await asyncio.gather(*(increment() for _ in range(workers)))

    final = await namespace.repository(Order).get_record("counter")
    assert final is not None
    assert final.message.total_cents == workers  # no increment was lost
    assert final.version == 1 + workers


async def test_concurrent_creates_of_one_id_let_exactly_one_win(namespace: Namespace) -> None:
    attempts = 6

    async def create(number: int) -> Order:
        async with namespace.transaction() as unit:
            created = await unit.repository(Order).create(Order(id="same", note=str(number)))
            await asyncio.sleep(0.01)  # keep the transaction open while others try
            return created

    results = await asyncio.gather(*(create(n) for n in range(attempts)), return_exceptions=True)

    winners = [r for r in results if isinstance(r, Order)]
    losers = [r for r in results if isinstance(r, AlreadyExistsError)]
    assert (len(winners), len(losers)) == (1, attempts - 1), results
    assert await namespace.repository(Order).get("same") == winners[0]


async def test_concurrent_plain_creates_of_one_id_let_exactly_one_win(
    namespace: Namespace,
) -> None:
    repo = namespace.repository(Order)

    results = await asyncio.gather(
        *(repo.create(Order(id="same", note=str(n))) for n in range(6)), return_exceptions=True
    )

    assert sum(isinstance(r, Order) for r in results) == 1, results
    assert sum(isinstance(r, AlreadyExistsError) for r in results) == 5, results


async def test_for_update_outside_a_transaction_is_refused(namespace: Namespace) -> None:
    with pytest.raises(RuntimeError, match="for_update needs a transaction"):
        await namespace.repository(Order).get("x", for_update=True)


async def test_a_finished_unit_of_work_refuses_further_work(namespace: Namespace) -> None:
    async with namespace.transaction() as unit:
        repo = unit.repository(Order)

    assert not unit.active
    with pytest.raises(RuntimeError, match="transaction has ended"):
        await repo.get("x")


async def test_concurrent_tasks_may_share_one_unit_of_work(namespace: Namespace) -> None:
    async with namespace.transaction() as unit:
        repo = unit.repository(Order)
        await asyncio.gather(*(repo.create(Order(id=f"o{n}")) for n in range(10)))

    assert len((await namespace.repository(Order).list()).items) == 10


async def test_a_sqlite_writer_that_waits_too_long_gets_a_conflict(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/busy.db"
    storage = await Storage.connect(url, sqlite_busy_timeout=0.05)
    try:
        namespace = storage.namespace("busy")
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="holding the lock"))
            with pytest.raises(ConflictError, match="busy"):
                await namespace.repository(Order).create(Order(id="blocked"))
            # Readers are not blocked by the writer (WAL, deferred read transactions).
            assert await namespace.repository(Order).get("holding the lock") is None
    finally:
        await storage.close()


async def test_concurrent_sqlite_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    # 40 writers at once, each far shorter than the busy timeout: they queue for the
    # write lock instead of contending in SQLite's busy handler, so none is refused.
    url = f"sqlite+aiosqlite:///{tmp_path}/turns.db"
    storage = await Storage.connect(url, sqlite_busy_timeout=2)
    try:
        namespace = storage.namespace("turns")

        async def write(number: int) -> None:
            async with namespace.transaction() as unit:
                repo = unit.repository(Order)
                await repo.create(Order(id=f"o{number}"))
                await asyncio.sleep(0)  # hold the lock across a suspension
                await repo.update(Order(id=f"o{number}", note="done"))

        await asyncio.gather(*(write(number) for number in range(40)))
        orders = (await namespace.repository(Order).list(page_size=100)).items
        assert sorted(o.note for o in orders) == ["done"] * 40
    finally:
        await storage.close()


async def test_sqlite_writers_of_two_processes_still_wait_for_each_other(
    tmp_path: Path,
) -> None:
    # Two Storage objects stand for two processes: only SQLite's lock is shared.
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    first = await Storage.connect(url, sqlite_busy_timeout=5)
    second = await Storage.connect(url, sqlite_busy_timeout=5)
    try:
        holding = asyncio.Event()

        async def hold() -> None:
            async with first.namespace("shared").transaction() as unit:
                await unit.repository(Order).create(Order(id="first"))
                holding.set()
                await asyncio.sleep(0.2)

        holder = asyncio.create_task(hold())
        await holding.wait()
        await second.namespace("shared").repository(Order).create(Order(id="second"))
        assert holder.done()  # the second writer waited for the first one's commit
        await holder
        ids = [o.id for o in (await second.namespace("shared").repository(Order).list()).items]
        assert sorted(ids) == ["first", "second"]
    finally:
        await first.close()
        await second.close()


async def test_more_sqlite_transactions_than_connections_all_complete(tmp_path: Path) -> None:
    # Readers and writers well past the pool size: they wait for a connection, and a
    # transaction holding one always gets on with its next statement.
    storage = await Storage.connect(f"sqlite+aiosqlite:///{tmp_path}/many.db")
    try:
        namespace = storage.namespace("many")
        repo = namespace.repository(Order)
        await repo.create(Order(id="seen"))

        async def unit(number: int) -> None:
            async with namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id=f"o{number}"))
                await asyncio.sleep(0)
                assert await unit.repository(Order).get("seen") is not None

        async def read() -> None:
            assert await repo.get("seen") is not None

        await asyncio.wait_for(
            asyncio.gather(*(unit(n) for n in range(30)), *(read() for _ in range(100))), 30
        )
        assert len((await repo.list(page_size=100)).items) == 31
    finally:
        await storage.close()


async def test_a_sqlite_unit_of_work_cancelled_mid_statement_commits_nothing(
    tmp_path: Path,
) -> None:
    storage = await Storage.connect(f"sqlite+aiosqlite:///{tmp_path}/cancel.db")
    try:
        namespace = storage.namespace("cancel")
        started = asyncio.Event()

        async def cancelled_unit() -> None:
            async with namespace.transaction() as unit:
                repo = unit.repository(Order)
                await repo.create(Order(id="first"))
                started.set()
                for number in range(1000):  # cancelled while one of these runs
                    await repo.create(Order(id=f"more-{number}"))

        task = asyncio.create_task(cancelled_unit())
        await started.wait()
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Rolled back, the write turn and the connection given back: the next unit of
        # work goes through at once, and sees nothing of the cancelled one.
        async with asyncio.timeout(2), namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="after"))
        ids = [o.id for o in (await namespace.repository(Order).list()).items]
        assert ids == ["after"]
    finally:
        await storage.close()


async def test_a_unit_on_the_loops_thread_cancelled_at_any_turn_commits_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    granted: list[bool] = []
    begin_now = SqlitePoints.begin_now

    def spied(self: SqlitePoints, connection: Any, **options: Any) -> bool:
        granted.append(begin_now(self, connection, **options))
        return granted[-1]

    monkeypatch.setattr(SqlitePoints, "begin_now", spied)
    # A yield before every statement (not every eighth, or after 2 ms), so that a
    # cancellation after k turns lands after the unit's k-th create.
    monkeypatch.setattr(sqlite_points, "_TURN_AFTER", 0.0)
    storage = await Storage.connect(f"sqlite:///{tmp_path}/turns.db")
    try:
        namespace = storage.namespace("turns")
        # A first unit leaves a pooled connection idle: the next ones take SQLite's write
        # lock on the loop's thread, and their statements run there too.
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="seed"))
        cut_short = 0
        for turns in range(14):
            began = asyncio.Event()

            async def twelve_creates(
                prefix: str = f"{turns}-", began: asyncio.Event = began
            ) -> None:
                async with namespace.transaction() as unit:
                    repo = unit.repository(Order)
                    for number in range(12):
                        await repo.create(Order(id=f"{prefix}{number}"))
                        began.set()

            granted.clear()
            task = asyncio.create_task(twelve_creates())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
                committed = True
            except asyncio.CancelledError:
                committed = False
                cut_short += began.is_set()
            if began.is_set():
                assert granted == [True], "the unit did not take the lock on the loop's thread"
            ids = [f"{turns}-{n}" for n in range(12)]
            stored = [await namespace.repository(Order).get(i) for i in ids]
            assert [o is not None for o in stored] == [committed] * 12
            # Rolled back or committed, the write turn and the connection are free.
            async with asyncio.timeout(2), namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id=f"after-{turns}"))
        assert cut_short >= 1, "no cancellation landed inside a unit"
    finally:
        await storage.close()


async def test_a_failed_statement_outside_a_unit_of_work_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    storage = await Storage.connect(
        f"sqlite+aiosqlite:///{tmp_path}/failed.db", sqlite_busy_timeout=0.5
    )
    try:
        repo = storage.namespace("failed").repository(Order)
        await repo.create(Order(id="taken"))
        for _ in range(20):  # more than the pool holds: a leaked one would show
            with pytest.raises(AlreadyExistsError):
                await repo.create(Order(id="taken"))
        await repo.create(Order(id="free"))  # the write lock is free
        assert len((await repo.list()).items) == 2
    finally:
        await storage.close()


async def test_a_call_still_waiting_when_its_unit_of_work_ends_opens_no_transaction(
    tmp_path: Path,
) -> None:
    # gather() raises with the first failure and leaves the other calls running: the
    # ones still waiting their turn on the unit must fail, not begin a transaction of
    # their own that nothing would ever end.
    storage = await Storage.connect(f"sqlite:///{tmp_path}/straggler.db", sqlite_busy_timeout=1)
    try:
        namespace = storage.namespace("straggler")
        await namespace.repository(Order).create(Order(id="b"))
        stragglers: list[asyncio.Future[Any]] = []

        async def fail_with_calls_pending() -> None:
            async with namespace.transaction() as unit:
                repo = unit.repository(Order)
                stragglers.extend(asyncio.ensure_future(repo.get("b")) for _ in range(3))
                stragglers.append(asyncio.ensure_future(repo.delete("b")))
                await repo.update(Order(id="missing"))

        with pytest.raises(NotFoundError):
            await fail_with_calls_pending()
        outcomes = await asyncio.gather(*stragglers, return_exceptions=True)
        assert any(isinstance(o, RuntimeError) and "has ended" in str(o) for o in outcomes)
        # Nothing was left holding the write lock, and the delete did not happen.
        async with asyncio.timeout(2):
            await namespace.repository(Order).create(Order(id="later"))
        assert await namespace.repository(Order).get("b") is not None
    finally:
        await storage.close()


async def test_closing_sqlite_storage_lets_an_open_unit_of_work_finish(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/closing.db"
    storage = await Storage.connect(url)
    namespace = storage.namespace("closing")
    inside = asyncio.Event()

    async def unit_of_work() -> None:
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="one"))
            inside.set()
            await asyncio.sleep(0.2)  # close() is called meanwhile
            await unit.repository(Order).create(Order(id="two"))

    task = asyncio.create_task(unit_of_work())
    await inside.wait()
    await storage.close()  # waits for the unit of work
    assert task.done()
    await task
    with pytest.raises(RuntimeError, match="closed"):
        await namespace.repository(Order).get("one")
    async with connected(url) as reopened:
        ids = [o.id for o in (await reopened.namespace("closing").repository(Order).list()).items]
    assert ids == ["one", "two"]


async def test_a_sqlite_commit_cancelled_while_it_waits_still_ends_the_transaction(
    tmp_path: Path,
) -> None:
    # The commit waits for a step another task of the unit still runs; the caller is
    # cancelled meanwhile: the transaction must still be rolled back and its connection
    # given back, not left holding SQLite's write lock.
    import time

    storage = await Storage.connect(f"sqlite:///{tmp_path}/commit.db", sqlite_busy_timeout=1)
    try:
        namespace = storage.namespace("commit")
        committing = asyncio.Event()
        slow: list[asyncio.Future[None]] = []

        async def unit_of_work() -> None:
            async with namespace.transaction() as unit:
                await unit.repository(Order).create(Order(id="never"))
                connection = unit._scope._conn  # type: ignore[attr-defined]
                slow.append(asyncio.ensure_future(connection.run_sync(lambda _: time.sleep(0.5))))
                await asyncio.sleep(0.05)  # the slow step is running
                committing.set()

        task = asyncio.create_task(unit_of_work())
        await committing.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(3):
            await namespace.repository(Order).create(Order(id="after"))
        ids = [o.id for o in (await namespace.repository(Order).list()).items]
        assert ids == ["after"]
        await asyncio.gather(*slow)
    finally:
        await storage.close()


@pytest.mark.parametrize("where", ["thread", "loop"])
async def test_a_statement_error_in_a_unit_of_work_is_freed_once_dropped(
    tmp_path: Path, where: str
) -> None:
    """The error of a statement passed on untranslated is in no reference cycle, which
    would keep it, its frames and the statement's parameters until a collection."""
    storage = await Storage.connect(f"sqlite:///{tmp_path}/freed.db")
    namespace = storage.namespace("freed")
    if where == "loop":
        # A first unit leaves a pooled connection idle: the next one runs on the loop's
        # thread; the very first runs its statements on a thread.
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="seed"))
    gc.disable()
    try:
        async with namespace.transaction() as unit:
            scope: Any = unit._scope
            try:
                await scope.run_point(
                    "SELECT * FROM no_such_table WHERE id = ?", ("x",), write=False
                )
            except DBAPIError as error:
                freed = weakref.ref(error)
        assert freed() is None
    finally:
        gc.enable()
        await storage.close()


class _CountedSleeps:
    """``asyncio`` as a module sees it, its ``sleep`` calls counted."""

    def __init__(self) -> None:
        self.sleeps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.sleeps += 1
        await asyncio.sleep(delay)


async def test_statements_in_a_row_on_the_loops_thread_yield_by_count_and_by_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await Storage.connect(f"sqlite:///{tmp_path}/held.db")
    try:
        repo = storage.namespace("held").repository(Order)
        await repo.create(Order(id="a"))
        assert await repo.get("a") is not None  # the read connection is open
        points: Any = storage._backend._database._sqlite.points  # type: ignore[attr-defined]
        counted = _CountedSleeps()
        monkeypatch.setattr(sqlite_points, "asyncio", counted)

        async def yields_of_twenty_reads(*, loop_turns_between: bool) -> int:
            await asyncio.sleep(0)  # the loop turns: a new run
            before = counted.sleeps
            for _ in range(20):
                if loop_turns_between:
                    await asyncio.sleep(0)
                assert await repo.get("a") is not None
            return counted.sleeps - before

        now = [0.0]

        def slow() -> float:  # each reading of the clock 1 ms later
            now[0] += 0.001
            return now[0]

        points._clock = slow
        # In a row, 2 ms pass every second statement.
        assert await yields_of_twenty_reads(loop_turns_between=False) >= 8
        # With a turn of the loop between them (concurrent calls', an idle gap), never.
        assert await yields_of_twenty_reads(loop_turns_between=True) == 0
        points._clock = lambda: 0.0
        # Statements that take no time: a yield after every eighth in a row.
        assert await yields_of_twenty_reads(loop_turns_between=False) == 2
        assert await yields_of_twenty_reads(loop_turns_between=True) == 0
        # Twenty calls of one statement each, in one pass of the loop: each task has a
        # run of its own.
        await asyncio.sleep(0)
        before = counted.sleeps
        await asyncio.gather(*(repo.get("a") for _ in range(20)))
        assert counted.sleeps == before
    finally:
        await storage.close()
