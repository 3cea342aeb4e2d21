"""Group commit on SQLite: units of work that wait for the write turn run in the
transaction the unit before them left open, each under a savepoint, and commit
together (see ``nexus_grpc.storage._sqlite``)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nexus.orders.v1 import orders_pb2
from sqlalchemy.exc import DBAPIError

from nexus_grpc.errors import ConflictError
from nexus_grpc.storage import Namespace, Storage
from nexus_grpc.storage._sqlite import GROUP_COMMIT_UNITS
from nexus_grpc.storage._sqlite_points import wrap
from nexus_grpc.storage._sqlite_units import SqliteUnit
from nexus_grpc.storage.faults import StorageUnavailableError

from . import connected

Order = orders_pb2.Order


class Commits:
    """Counts the COMMITs units run, and how many units each one ended."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original_end = SqliteUnit._end

        def counted(unit: SqliteUnit, *, commit: bool) -> None:
            original_end(unit, commit=commit)
            if commit:
                self.count += 1

        monkeypatch.setattr(SqliteUnit, "_end", counted)


class HandOns:
    """Counts the units that left their transaction open for the next one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = SqliteUnit.hand_on

        def counted(unit: SqliteUnit) -> None:
            original(unit)
            self.count += 1

        monkeypatch.setattr(SqliteUnit, "hand_on", counted)


def unit_connection(namespace: Namespace) -> sqlite3.Connection:
    """The sqlite3 connection units of ``namespace``'s storage run on (kept between
    units; units_namespace has opened it)."""
    driver = namespace._backend._database._sqlite  # type: ignore[attr-defined]
    raw = driver._idle_units[0].connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


@asynccontextmanager
async def units_namespace(tmp_path: Path) -> AsyncIterator[Namespace]:
    async with connected(f"sqlite:///{tmp_path}/nexus.db") as storage:
        namespace = storage.namespace("group")
        # The first unit opens the connection kept between units, on a thread; the
        # later ones take SQLite's lock on the loop's thread and may form groups.
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id="seed"))
        yield namespace


class Gate:
    """A unit that holds the write turn until released, so others queue behind it."""

    def __init__(self, namespace: Namespace, order_id: str) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(namespace, order_id))

    @classmethod
    async def holding(cls, namespace: Namespace, order_id: str) -> Gate:
        """A gate whose unit has written ``order_id`` and holds the turn."""
        gate = cls(namespace, order_id)
        await gate.entered.wait()
        return gate

    async def _run(self, namespace: Namespace, order_id: str) -> None:
        async with namespace.transaction() as unit:
            await unit.repository(Order).create(Order(id=order_id))
            self.entered.set()
            await self.release.wait()


async def create_in_unit(namespace: Namespace, order_id: str) -> None:
    async with namespace.transaction() as unit:
        await unit.repository(Order).create(Order(id=order_id))


def slow_first_thread_step(raw: sqlite3.Connection, seconds: float) -> threading.Event:
    """Make the first statement run on a thread over ``raw`` (a list, say) last
    ``seconds``: a scan no index serves. The event is set once it has begun."""
    loop_thread = threading.get_ident()
    begun = threading.Event()

    def slow() -> int:
        if threading.get_ident() != loop_thread and not begun.is_set():
            begun.set()
            time.sleep(seconds)
        return 0

    raw.set_progress_handler(slow, 10)
    return begun


async def impatient_unit(namespace: Namespace, body_over: asyncio.Event) -> None:
    """A unit that creates "joined", stops waiting for its list after 10 ms (the list
    goes on on its thread) and returns; ``body_over`` is set as its body ends."""
    async with namespace.transaction() as unit:
        orders = unit.repository(Order)
        await orders.create(Order(id="joined"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(orders.list(page_size=10), 0.01)
        body_over.set()


async def behind(gate: Gate, *calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` queued behind ``gate``'s unit, then let the gate go; the gate's
    result and theirs (exceptions returned, not raised)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    await queued()
    gate.release.set()
    return await asyncio.wait_for(asyncio.gather(gate.task, *tasks, return_exceptions=True), 10)


async def queued() -> None:
    """Let the tasks just started run until they queue for the write turn."""
    for _ in range(5):
        await asyncio.sleep(0)


async def ids(namespace: Namespace) -> set[str]:
    page = await namespace.repository(Order).list(page_size=100)
    return {order.id for order in page.items}


async def test_concurrent_units_share_commits_and_all_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        commits = Commits(monkeypatch)
        gate = await Gate.holding(namespace, "gate")
        names = [f"o-{n}" for n in range(20)]
        results = await behind(gate, *(create_in_unit(namespace, name) for name in names))
        assert results == [None] * 21
        assert await ids(namespace) == {"seed", "gate", *names}
        # 21 units, in groups of GROUP_COMMIT_UNITS at most.
        assert GROUP_COMMIT_UNITS > 1
        assert commits.count == -(-21 // GROUP_COMMIT_UNITS)


async def test_a_lone_unit_commits_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with units_namespace(tmp_path) as namespace:
        commits = Commits(monkeypatch)
        await create_in_unit(namespace, "alone")
        assert commits.count == 1
        assert "alone" in await ids(namespace)


async def test_a_failing_unit_of_a_group_rolls_back_alone(tmp_path: Path) -> None:
    async with units_namespace(tmp_path) as namespace:
        gate = await Gate.holding(namespace, "before")

        async def failing() -> None:
            async with namespace.transaction() as unit:
                orders = unit.repository(Order)
                # It runs in the transaction the gate left open: it sees its order, and
                # the gate waits for the group's commit.
                assert await orders.get("before") is not None
                assert not gate.task.done()
                await orders.create(Order(id="failed"))
                raise RuntimeError("no")

        done, bad, after = await behind(gate, failing(), create_in_unit(namespace, "after"))
        assert done is None and after is None
        assert isinstance(bad, RuntimeError) and str(bad) == "no"
        assert await ids(namespace) == {"seed", "before", "after"}


async def test_a_conflict_in_a_joined_unit_is_its_own(tmp_path: Path) -> None:
    async with units_namespace(tmp_path) as namespace:
        orders = namespace.repository(Order)
        stored = await orders.create(Order(id="versioned", note="v1"))
        gate = await Gate.holding(namespace, "before")

        async def stale_update() -> None:
            async with namespace.transaction() as unit:
                # In the gate's open transaction: its order is there already.
                assert await unit.repository(Order).get("before") is not None
                assert not gate.task.done()
                changed = Order()
                changed.CopyFrom(stored)
                changed.note = "v2"
                await unit.repository(Order).update(changed, expected_version=7)

        done, stale = await behind(gate, stale_update())
        assert done is None
        assert isinstance(stale, ConflictError)
        assert (await orders.get("versioned")) == stored
        assert "before" in await ids(namespace)


async def test_a_unit_cancelled_while_its_group_commits_is_committed(tmp_path: Path) -> None:
    """Its body was over: as without groups, its writes commit; its caller has gone."""
    async with units_namespace(tmp_path) as namespace:
        first = await Gate.holding(namespace, "first")
        second = Gate(namespace, "second")
        await queued()
        first.release.set()  # first hands its transaction on to second, and waits
        await asyncio.wait_for(second.entered.wait(), 10)
        assert not first.task.done()
        first.task.cancel()
        await asyncio.sleep(0)
        second.release.set()
        await asyncio.wait_for(second.task, 10)
        with pytest.raises(asyncio.CancelledError):
            await first.task
        assert {"first", "second"} <= await ids(namespace)


async def test_a_group_whose_next_unit_stops_waiting_still_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        hand_ons = HandOns(monkeypatch)
        gate = await Gate.holding(namespace, "handed-on")
        waiting = asyncio.ensure_future(create_in_unit(namespace, "never"))
        await queued()
        # The gate hands its transaction on and gives the turn back; the unit it was
        # left for stops waiting before it runs.
        gate.release.set()
        waiting.cancel()
        await asyncio.wait_for(gate.task, 10)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert hand_ons.count == 1
        assert await ids(namespace) == {"seed", "handed-on"}
        # The turn is free again and the kept connection clean.
        await create_in_unit(namespace, "next")
        assert "next" in await ids(namespace)


async def test_another_writer_commits_an_open_group_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        hand_ons = HandOns(monkeypatch)
        gate = await Gate.holding(namespace, "unit")
        orders = namespace.repository(Order)
        point = orders.create(Order(id="point"))  # no unit
        results = await behind(gate, point, create_in_unit(namespace, "later"))
        assert results[0] is None and results[2] is None
        # The gate left its transaction open (a unit waited); the point write, first in
        # line, committed it before its own.
        assert hand_ons.count == 1
        assert await ids(namespace) == {"seed", "unit", "point", "later"}


async def test_a_unit_that_ran_a_sqlalchemy_statement_ends_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        commits = Commits(monkeypatch)
        gate = await Gate.holding(namespace, "gate")

        async def listing() -> None:
            async with namespace.transaction() as unit:
                orders = unit.repository(Order)
                await orders.create(Order(id="listed", customer_id="c"))
                page = await orders.list(filter={"customer_id": "c"}, page_size=10)
                assert [order.id for order in page.items] == ["listed"]

        results = await behind(gate, listing(), create_in_unit(namespace, "after"))
        assert results == [None, None, None]
        # gate + listing commit together (the listing's Connection ends it); "after"
        # commits alone.
        assert commits.count == 2
        assert await ids(namespace) == {"seed", "gate", "listed", "after"}


async def test_a_failed_commit_fails_every_unit_of_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        gate = await Gate.holding(namespace, "first")
        second = asyncio.ensure_future(create_in_unit(namespace, "second"))
        await queued()
        original: Callable[..., None] = SqliteUnit._end
        attempts = []

        def failing_commit(unit: SqliteUnit, *, commit: bool) -> None:
            if not commit:
                original(unit, commit=False)
                return
            # What a full disk does to a COMMIT: SQLite rolls the transaction back.
            attempts.append(unit)
            original(unit, commit=False)
            full = sqlite3.OperationalError("database or disk is full")
            raise wrap("COMMIT", full, unit._dialect)

        monkeypatch.setattr(SqliteUnit, "_end", failing_commit)
        gate.release.set()
        results = await asyncio.wait_for(
            asyncio.gather(gate.task, second, return_exceptions=True), 10
        )
        monkeypatch.undo()
        assert len(attempts) == 1  # one COMMIT for both units
        for result in results:
            # Each unit its own error: the storage's "unavailable", as for any full disk.
            assert isinstance(result, (StorageUnavailableError, DBAPIError)), result
        assert results[0] is not results[1]
        assert await ids(namespace) == {"seed"}
        await create_in_unit(namespace, "recovered")
        assert "recovered" in await ids(namespace)


async def test_the_last_unit_commits_after_a_step_it_stopped_waiting_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joined unit whose body gave up waiting for its list (still running on a thread)
    and returned: the group commits once that step is over, never beside it."""
    async with units_namespace(tmp_path) as namespace:
        raw = unit_connection(namespace)
        step_over = threading.Event()
        original_execute = SqliteUnit._execute

        def execute(unit: SqliteUnit, statement: Any) -> Any:
            try:
                return original_execute(unit, statement)
            finally:
                step_over.set()

        under_step: list[bool] = []
        original_commit_now = SqliteUnit.commit_now

        def commit_now(unit: SqliteUnit) -> None:
            under_step.append(step_begun.is_set() and not step_over.is_set())
            original_commit_now(unit)

        monkeypatch.setattr(SqliteUnit, "_execute", execute)
        monkeypatch.setattr(SqliteUnit, "commit_now", commit_now)
        step_begun = slow_first_thread_step(raw, 0.3)
        try:
            gate = await Gate.holding(namespace, "gate")
            assert await behind(gate, impatient_unit(namespace, asyncio.Event())) == [None, None]
        finally:
            raw.set_progress_handler(None, 0)
        assert under_step == [False]
        assert {"gate", "joined"} <= await ids(namespace)


async def test_a_transaction_sqlite_rolled_back_is_not_handed_on(tmp_path: Path) -> None:
    """An error after which SQLite rolls the whole transaction back (an interrupt here; a
    full disk, an I/O error), caught by the body: the unit's COMMIT fails and its caller
    hears of it, rather than the next unit's SAVEPOINT beginning a new transaction."""
    async with units_namespace(tmp_path) as namespace:
        raw = unit_connection(namespace)
        entered, release = asyncio.Event(), asyncio.Event()

        async def tolerant() -> None:
            async with namespace.transaction() as unit:
                orders = unit.repository(Order)
                await orders.create(Order(id="lost"))
                entered.set()
                await release.wait()
                raw.set_progress_handler(lambda: 1, 1)
                try:
                    with contextlib.suppress(Exception):  # an optional write
                        await orders.create(Order(id="interrupted"))
                finally:
                    raw.set_progress_handler(None, 0)
                assert not raw.in_transaction

        told = asyncio.ensure_future(tolerant())
        await entered.wait()
        joined = asyncio.ensure_future(create_in_unit(namespace, "joined"))
        await queued()
        release.set()
        outcome, after = await asyncio.wait_for(
            asyncio.gather(told, joined, return_exceptions=True), 10
        )
        assert isinstance(outcome, ConflictError)
        assert outcome.reason == "TRANSACTION_ROLLED_BACK"
        assert after is None
        assert await ids(namespace) == {"seed", "joined"}


async def test_a_unit_nested_in_another_of_its_task_still_times_out(tmp_path: Path) -> None:
    async with units_namespace(tmp_path) as namespace:
        driver = namespace._backend._database._sqlite  # type: ignore[attr-defined]
        driver._write_timeout = 0.3

        async def later() -> None:
            await asyncio.sleep(0.15)
            await create_in_unit(namespace, "other")

        async with namespace.transaction() as outer:
            await outer.repository(Order).create(Order(id="outer"))
            other = asyncio.ensure_future(later())
            with pytest.raises(ConflictError):
                async with namespace.transaction() as inner:
                    await inner.repository(Order).create(Order(id="inner"))
        await asyncio.wait_for(other, 5)
        assert driver._units_waiting == 0
        assert driver._pending is None
        assert await ids(namespace) == {"seed", "outer", "other"}


async def tolerant_of_a_rollback(namespace: Namespace, *, list_first: bool) -> None:
    """A unit whose write SQLite interrupts (rolling its whole transaction back, as a full
    disk or an I/O error does) and whose body goes on from the error to write again."""
    async with namespace.transaction() as unit:
        raw = unit._scope._conn._raw  # type: ignore[attr-defined]
        orders = unit.repository(Order)
        if list_first:
            await orders.list(filter={"customer_id": "c"}, page_size=10)  # on a thread
        await orders.create(Order(id="doomed"))
        raw.set_progress_handler(lambda: 1, 1)
        try:
            with contextlib.suppress(Exception):
                await orders.create(Order(id="interrupted"))
        finally:
            raw.set_progress_handler(None, 0)
        assert not raw.in_transaction
        if not list_first:
            await orders.list(filter={"customer_id": "c"}, page_size=10)
        await orders.create(Order(id="late"))


@pytest.mark.parametrize("list_first", [True, False])
async def test_a_group_sqlite_rolled_back_fails_all_its_units_and_stores_nothing(
    tmp_path: Path, list_first: bool
) -> None:
    """Whether the joined unit ran a list (SQLAlchemy's Connection, whose commit() of a
    transaction SQLite ended does nothing) before or after the rollback."""
    async with units_namespace(tmp_path) as namespace:
        gate = await Gate.holding(namespace, "first")
        first, joined = await behind(gate, tolerant_of_a_rollback(namespace, list_first=list_first))
        for outcome in (first, joined):
            assert isinstance(outcome, ConflictError), outcome
            assert outcome.reason == "TRANSACTION_ROLLED_BACK"
        assert await ids(namespace) == {"seed"}


async def test_a_lone_unit_sqlite_rolled_back_stores_nothing(tmp_path: Path) -> None:
    async with units_namespace(tmp_path) as namespace:
        with pytest.raises(ConflictError, match="rolled this unit of work's transaction back"):
            await tolerant_of_a_rollback(namespace, list_first=False)
        assert await ids(namespace) == {"seed"}


async def test_a_group_is_committed_when_its_next_unit_times_out_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        namespace._backend._database._sqlite._write_timeout = 0.5  # type: ignore[attr-defined]
        hand_ons = HandOns(monkeypatch)
        gate = await Gate.holding(namespace, "handed-on")
        waiting = asyncio.ensure_future(create_in_unit(namespace, "never"))
        await queued()
        loop = asyncio.get_running_loop()
        began = loop.time()
        # The gate's body ends, then the waiter's deadline passes before it runs: the
        # loop is held past both in one turn.
        loop.call_at(began + 0.49, gate.release.set)
        loop.call_at(began + 0.3, lambda: time.sleep(0.4))
        await asyncio.wait_for(gate.task, 3)
        assert hand_ons.count == 1
        with pytest.raises(ConflictError):
            await waiting
        assert await ids(namespace) == {"seed", "handed-on"}


async def test_a_group_is_committed_when_its_next_unit_stops_waiting_for_a_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with units_namespace(tmp_path) as namespace:
        driver = namespace._backend._database._sqlite  # type: ignore[attr-defined]
        hand_ons = HandOns(monkeypatch)
        gate = await Gate.holding(namespace, "handed-on")
        taken = 0
        try:
            for _ in range(driver._pool_size - 1):  # every slot but the gate's
                await driver._open.acquire()
                taken += 1
            waiting = asyncio.ensure_future(create_in_unit(namespace, "never"))
            await queued()
            # Another transaction is first in line for the slot the gate gives back.
            slot = asyncio.ensure_future(driver._open.acquire())
            await queued()
            gate.release.set()
            await queued()
            assert hand_ons.count == 1
            assert not gate.task.done()
            waiting.cancel()  # it has the turn and waits for a slot
            await asyncio.wait_for(gate.task, 3)
            await slot
            driver._open.release()
        finally:
            for _ in range(taken):
                driver._open.release()
        assert await ids(namespace) == {"seed", "handed-on"}


async def test_the_last_unit_commits_its_group_even_when_its_caller_leaves(
    tmp_path: Path,
) -> None:
    """Its body over, a step of it still running: cancelling its caller leaves the
    group's COMMIT (the earlier units' too) to happen once the step is over."""
    async with units_namespace(tmp_path) as namespace:
        raw = unit_connection(namespace)
        body_over = asyncio.Event()
        gate = await Gate.holding(namespace, "gate")
        slow_first_thread_step(raw, 0.3)
        try:
            joined = asyncio.ensure_future(impatient_unit(namespace, body_over))
            await queued()
            gate.release.set()
            await asyncio.wait_for(body_over.wait(), 5)
            joined.cancel()
            await asyncio.wait_for(gate.task, 5)
        finally:
            raw.set_progress_handler(None, 0)
        with pytest.raises(asyncio.CancelledError):
            await joined
        assert {"gate", "joined"} <= await ids(namespace)


async def test_group_commit_units_of_one_commits_every_unit_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await Storage.connect(f"sqlite:///{tmp_path}/nexus.db", sqlite_group_commit_units=1)
    try:
        namespace = storage.namespace("group")
        await create_in_unit(namespace, "seed")  # opens the connection kept for units
        commits, hand_ons = Commits(monkeypatch), HandOns(monkeypatch)
        gate = await Gate.holding(namespace, "gate")
        names = [f"o-{n}" for n in range(5)]
        assert (
            await behind(gate, *(create_in_unit(namespace, name) for name in names)) == [None] * 6
        )
        assert hand_ons.count == 0
        assert commits.count == 6
        assert await ids(namespace) == {"seed", "gate", *names}
    finally:
        await storage.close()
    with pytest.raises(ValueError, match="group_commit_units must be 1 or more"):
        await Storage.connect(f"sqlite:///{tmp_path}/other.db", sqlite_group_commit_units=0)


async def test_a_group_whose_commit_task_is_cancelled_fails_and_frees_the_lock(
    tmp_path: Path,
) -> None:
    """Only a loop shutting down cancels it; the earlier units hear of it, and the
    connection is discarded (SQLite's write lock freed) once its running step is over."""
    async with units_namespace(tmp_path) as namespace:
        raw = unit_connection(namespace)
        body_over = asyncio.Event()
        gate = await Gate.holding(namespace, "gate")
        step_begun = slow_first_thread_step(raw, 0.3)
        try:
            joined = asyncio.ensure_future(impatient_unit(namespace, body_over))
            await queued()
            gate.release.set()
            await asyncio.wait_for(body_over.wait(), 5)
            await asyncio.sleep(0)
            [committing] = [
                task
                for task in asyncio.all_tasks()
                if getattr(task.get_coro(), "__qualname__", "").endswith("_commit_group")
            ]
            committing.cancel()
            first, _ = await asyncio.gather(gate.task, joined, return_exceptions=True)
            assert isinstance(first, RuntimeError)
            assert "stopped before the commit" in str(first)
            await asyncio.to_thread(step_begun.wait, 5)
            await asyncio.sleep(0.5)  # the step is over: the connection is gone
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed, as it should be
                raw.set_progress_handler(None, 0)
        await asyncio.wait_for(create_in_unit(namespace, "after"), 3)
        assert await ids(namespace) == {"seed", "after"}
