"""SQLite driven from asyncio: each step of a transaction is one call on a worker thread.

The sqlite3 module blocks, so its work runs on threads. An adapter that hands every
DBAPI call to a thread (aiosqlite under SQLAlchemy's async engine) pays one thread
switch for each of: creating a cursor, BEGIN, the statement, fetching, closing the
cursor, COMMIT and the pool's reset — nine for one read, at ~100 µs of CPU each on
small cloud machines, where SQLite itself needs ~10 µs. Here SQLAlchemy's synchronous
engine runs on a small thread pool and one call does a whole step: checking a
connection out, beginning and running the first statement with its rows fetched; one
more call per further statement; one to commit (or roll back) and check the
connection back in: a unit of work costs one thread switch per statement plus one.
Outside a unit of work every statement is its own transaction, and one call does all
of it (checkout, BEGIN, statement, rows, COMMIT, checkin): one switch for a read.

Point statements (one row by its key) outside a unit of work run on the loop's thread
when SQLite lets them through at once, else on a thread (see ``_sqlite_points``). A unit
of work (:meth:`SqliteDriver.unit`) skips the pool and SQLAlchemy's transaction: it
drives BEGIN IMMEDIATE, its statements and COMMIT on the sqlite3 connection of a pooled
connection kept checked out between units (see ``_sqlite_units``). The transactions
below serve the schema, index builds, the health probe and statements outside a unit.

Concurrency:

* At most ``pool_size`` transactions are open at once (the others wait their turn),
  and there are as many threads: an open transaction always finds a thread for its
  next step, so a checkout never waits on a connection another transaction holds.
* Writers of one process take turns on an asyncio lock before BEGIN IMMEDIATE (taken
  before a connection, so a writer never holds one while it waits). SQLite has one
  writer at a time anyway, and a connection refused SQLite's lock waits in its busy
  handler, which sleeps in growing steps (up to 100 ms) instead of being woken when the
  lock frees. The wait is bounded by the busy timeout (then ConflictError), so a write
  transaction opened inside another one of the same task fails instead of hanging.
* The steps of one transaction run one after the other, never two at once; once it
  has ended, further statements raise instead of opening another.
* A transaction whose caller is cancelled is still ended (rolled back) and its
  connection, slot and write turn given back, by a task of its own that a second
  cancellation cannot interrupt.

Group commit. A commit's cost is mostly the pages it writes to the WAL (two system calls
a page): an order with its outbox event dirties ~12 pages of a table of 20,000 records
(its row, the primary key's leaves, a leaf of each declared index) and its COMMIT costs
more CPU than its statements. Concurrent units touch many of the same pages, so units
that commit together write fewer pages each (~7 in groups of eight). A unit of work
whose body is over while other units wait for the write turn therefore does not commit:
it leaves its transaction open and gives the turn to the next unit, which runs in that
transaction under a savepoint (its failure rolls back its own statements only) and
does the same; the unit that finds no unit waiting, or ends a group of
:data:`GROUP_COMMIT_UNITS`, commits them all, and each unit's ``__aexit__`` returns
once that COMMIT is over (a failed COMMIT fails every unit of the group). Any other
writer taking the turn (a point write, a SQLAlchemy transaction, the checkpoint) commits
an open group first. Only units running on the loop's thread on their sqlite3 connection
alone hand their transaction on (see ``SqliteUnit.can_hand_on``).

The price: a unit's COMMIT waits for the bodies of the units that joined its group
(seven at most by default). Those units were waiting for the turn anyway; a body that awaits
something slow while holding the turn (a network call inside a transaction) now delays
the units before it as well as those after it, and a body must never wait for a write
of another request to become visible.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql import Executable

from nexus_grpc.errors import STORAGE_BUSY, ConflictError

from ._sqlite_points import SqlitePoints, run_raw, wrap
from ._sqlite_steps import SqliteSteps
from ._sqlite_units import Rows, SqliteUnit, rows_of
from .points import RawRows

__all__ = ["Rows", "SqliteConnection", "SqliteDriver"]

T = TypeVar("T")

_log = logging.getLogger("nexus.storage")

#: Seconds close() waits for open transactions to end before closing the connections.
_CLOSE_WAIT = 10.0

#: Units of work that share one COMMIT at most (group commit; 1: each commits alone).
#: Eight measured ~7 WAL pages per unit of an order and its event, against ~12 alone
#: (``benchmarks/group_commit.py``); sixteen served no more creates through the host and
#: make a unit wait for more bodies.
GROUP_COMMIT_UNITS = 8


class SqliteConnection(SqliteSteps):
    """One transaction on one pooled connection, checked out by its first statement;
    with ``autocommit``, one transaction per statement instead. Its point statements run
    on the loop's thread once :meth:`begin_on_loop` took the write lock there; any other
    statement runs on a thread (see ``_sqlite_steps``)."""

    def __init__(self, driver: SqliteDriver, options: dict[str, Any], *, autocommit: bool) -> None:
        super().__init__(driver)
        self._options = options
        self._autocommit = autocommit
        self._sync: Connection | None = None

    def begin_on_loop(self) -> bool:
        """Check a pooled connection out and BEGIN IMMEDIATE on the loop's thread, if
        that cannot wait: a connection already open, SQLite's write lock granted at
        once. Whether it did (else the transaction's steps all run on threads)."""
        driver = self._driver
        pool = driver.engine.pool
        if self._sync is not None or not isinstance(pool, QueuePool) or not pool.checkedin():
            return False  # opening a connection may wait for a lock (the switch to WAL)
        connection = driver.engine.connect().execution_options(**self._options)
        try:
            raw = connection.connection.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            if not driver.points.begin_now(raw):
                connection.close()
                return False
            # SQLAlchemy's transaction over it: the BEGIN listener sees one open already.
            connection.begin()
        except BaseException:
            connection.close()  # rolls back what was begun
            raise
        self._sync = connection
        self._on_loop = True
        return True

    async def execute(self, statement: Executable) -> Rows:
        """Run ``statement`` in the transaction (begun by the first one), on a thread.

        Always on a thread, even when the transaction holds the write lock on the loop's
        thread: a statement built with SQLAlchemy may read many rows (a list with a
        filter no index serves, DDL building an index) and would stall every other task.
        """
        return await self._step(functools.partial(self._execute, statement), blocking=True)

    async def execute_raw(self, sql: str, params: Sequence[Any]) -> RawRows:
        """Run a point statement's ``sql`` in the transaction on the sqlite3 connection."""
        return await self._step(functools.partial(self._execute_raw, sql, params))

    async def run_sync(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``work(connection, *args, **kwargs)`` in the transaction, on the thread."""
        return await self._step(lambda: work(self._connection(), *args, **kwargs), blocking=True)

    async def _finish(self, *, commit: bool) -> None:
        # Safe to call again after a first call was cancelled: whichever call takes the
        # connection ends it, and a later one waits for that to be over.
        self._ended = True
        await self._after_running()
        connection, self._sync = self._sync, None
        if connection is None:
            return
        await self._end_step(functools.partial(self._end, connection, commit=commit))

    # -- on the worker thread ----------------------------------------------------------

    def _connection(self) -> Connection:
        if self._sync is None:
            self._sync = self._driver.engine.connect().execution_options(**self._options)
        return self._sync

    def _execute(self, statement: Executable) -> Rows:
        connection = self._connection()
        if not self._autocommit:
            return rows_of(connection.execute(statement))
        self._sync = None
        try:
            rows = rows_of(connection.execute(statement))
        except BaseException:
            self._end(connection, commit=False)
            raise
        self._end(connection, commit=True)
        return rows

    def _execute_raw(self, sql: str, params: Sequence[Any]) -> RawRows:
        connection = self._connection()
        if not connection.in_transaction():
            connection.begin()  # BEGIN of the transaction's flavour (an engine listener)
        raw = connection.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        if not self._autocommit:
            return self._run_raw(raw, sql, params)
        self._sync = None
        try:
            rows = self._run_raw(raw, sql, params)
        except BaseException:
            self._end(connection, commit=False)
            raise
        self._end(connection, commit=True)
        return rows

    def _run_raw(self, raw: sqlite3.Connection, sql: str, params: Sequence[Any]) -> RawRows:
        driver = self._driver
        return run_raw(
            raw, sql, params, dialect=driver.engine.dialect, span_namespace=driver.span_namespace
        )

    def _end(self, connection: Connection, *, commit: bool) -> None:
        try:
            if commit:
                connection.commit()
                self._driver.points.committed()
            else:
                connection.rollback()
        finally:
            connection.close()


class SqliteDriver:
    """A synchronous SQLAlchemy engine on SQLite, used from asyncio through threads.

    ``connect``: opens a configured sqlite3 connection to the same file (busy timeout,
    WAL, no implicit transactions), for the point statements' read and write
    connections. ``write_timeout``: seconds a writer waits for this process's other
    writers; ``busy_timeout_ms``: the connections' busy timeout. ``carry_context``: run
    each step in a copy of the calling task's context variables (tracing's current
    span), which threads otherwise do not see.
    ``span_namespace``: with tracing on, the database name of point statements' spans
    (None: no spans). ``group_commit_units``: units of work sharing one COMMIT at most
    (1: each commits alone).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        connect: Callable[[], sqlite3.Connection],
        pool_size: int,
        write_timeout: float,
        busy_timeout_ms: int = 5000,
        carry_context: bool = False,
        span_namespace: str | None = None,
        group_commit_units: int = GROUP_COMMIT_UNITS,
    ) -> None:
        self.engine = engine
        #: Opens a configured sqlite3 connection (units of work's, point statements').
        self.connect = connect
        #: Whether each step runs in a copy of the caller's context (when tracing).
        self.carry_context = carry_context
        # One thread more than transactions: a point write always finds one too; and
        # one for the checkpoint's first pass, which runs beside them (_checkpoint).
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size + 2, thread_name_prefix="nexus-sqlite"
        )
        #: Database name of point statements' spans (None: tracing off).
        self.span_namespace = span_namespace
        #: Point statements outside units of work.
        self.points = SqlitePoints(
            connect,
            self.executor,
            dialect=engine.dialect,
            busy_timeout_ms=busy_timeout_ms,
            carry_context=carry_context,
            span_namespace=span_namespace,
        )
        self._pool_size = pool_size
        self._open = asyncio.Semaphore(pool_size)
        # A semaphore rather than a Lock: its locked() also says whether others queue,
        # i.e. whether acquire() would wait (see _take_write_turn).
        self._writer = asyncio.BoundedSemaphore(1)
        self._write_timeout = write_timeout
        self._checkpointing: asyncio.Task[None] | None = None
        self._closed = False
        # Pooled connections of units of work kept checked out between two units (none
        # in a transaction): a unit skips the pool's checkout and checkin.
        self._idle_units: list[Connection] = []
        #: Units of work sharing one COMMIT at most (see the module docstring).
        self.group_commit_units = group_commit_units
        # The transaction a unit left open with the write turn for the next unit, while
        # no unit runs in it; and how many units wait for the turn.
        self._pending: _CommitGroup | None = None
        self._units_waiting = 0

    async def write_point(self, sql: str, params: Sequence[Any]) -> RawRows:
        """Run the point write ``sql`` as a transaction of its own in this process's
        write turn: on the loop's thread if SQLite grants its lock at once, else on a
        thread (which keeps the turn until its step is over)."""
        if self._closed:
            raise RuntimeError("the storage is closed")
        await self.points.take_turns()
        await self._take_write_turn()
        try:
            rows = await self.points.write_now(sql, params)
            if rows is None:
                waiting = self.points.write_on_thread(sql, params, self._writer.release)
        except BaseException:
            self._writer.release()
            raise
        if rows is None:
            rows = await waiting
        else:
            self._writer.release()
        self._checkpoint_if_due()
        return rows

    def _checkpoint_if_due(self) -> None:
        # On the loop, after a write transaction: commits may be counted on threads.
        # Asked only once the last checkpoint is over: asking starts the count over.
        if self._closed or (self._checkpointing is not None and not self._checkpointing.done()):
            return
        if not self.points.checkpoint_due():
            return
        # A context of its own: not the caller's trace or request id.
        self._checkpointing = asyncio.get_running_loop().create_task(
            self._checkpoint(), name="nexus-sqlite-checkpoint", context=contextvars.Context()
        )

    async def _checkpoint(self) -> None:
        # Two passive checkpoints. The first copies the WAL back while writers go on
        # (SQLite lets them): the copying of ~500 commits, and two fsyncs, ~20-40 ms
        # here. The second, in the write turn, copies what was written meanwhile (and
        # syncs again): with no writer of this process running it can copy the whole
        # WAL, and the next write starts the WAL over instead of growing it. Writers
        # wait for the second only.
        try:
            await asyncio.wrap_future(self.executor.submit(self.points.checkpoint_step))
            await self._take_write_turn()
        except (ConflictError, RuntimeError):
            return  # busy writers: the next one; or closed meanwhile
        try:
            await asyncio.wrap_future(self.executor.submit(self.points.checkpoint_step))
        except RuntimeError:  # closed meanwhile
            pass
        finally:
            self._writer.release()

    @asynccontextmanager
    async def transaction(
        self, *, write: bool, autocommit: bool = False, **options: Any
    ) -> AsyncIterator[SqliteConnection]:
        """A transaction with execution ``options``: committed when the body returns,
        rolled back when it raises or is cancelled (``autocommit``: one per statement)."""
        await self._take_slot(write=write)

        def release() -> None:
            self._give_back(write=write)

        connection = SqliteConnection(self, options, autocommit=autocommit)
        try:
            if write and not autocommit:
                connection.begin_on_loop()
            yield connection
            await connection._finish(commit=True)
        except BaseException:
            # The body failed, or the commit did (a failed commit has closed the
            # connection; a cancelled one has not, and is rolled back here).
            await _detached(connection._finish(commit=False), release)
            raise
        release()
        if write:
            self._checkpoint_if_due()

    def unit(self) -> AbstractAsyncContextManager[SqliteUnit]:
        """A unit of work's write transaction on a sqlite3 connection (see
        ``_sqlite_units``): committed when the body returns, rolled back when it raises
        or is cancelled. Takes a slot and the write turn as :meth:`transaction` does."""
        return _SqliteUnitScope(self)

    async def close(self) -> None:
        """Wait (a while) for open transactions to end, close the pooled connections and
        let the threads end."""
        taken = 0
        try:
            async with asyncio.timeout(_CLOSE_WAIT):
                for _ in range(self._pool_size):
                    await self._open.acquire()
                    taken += 1
        except TimeoutError:
            _log.warning("closing the SQLite storage with transactions still open")
        self._closed = True
        if self._checkpointing is not None:
            self._checkpointing.cancel()  # its thread step ends on its own connection
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointing
        # A point write still running keeps the write turn (and its connection) until
        # its step is over.
        turn = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT):
                turn = await self._writer.acquire()
        self._commit_pending()
        self.points.close()
        for session in self._idle_units:
            session.close()  # back to the pool, which dispose() closes
        self._idle_units.clear()
        if turn:
            self._writer.release()
        await asyncio.to_thread(self.engine.dispose)
        self.executor.shutdown(wait=False)
        for _ in range(taken):
            self._open.release()

    async def _take_slot(self, *, write: bool, unit: bool = False) -> None:
        """A pooled connection's slot, after the write turn for a write (the turn is
        given back if the wait for the slot ends otherwise). ``unit``: for a unit of
        work, which joins a transaction left open for it instead of committing it."""
        if write:
            await self._take_write_turn(unit=unit)
        try:
            await self._open.acquire()
        except BaseException:
            if write:
                self._writer.release()
                self._commit_if_stranded()
            raise

    def _give_back(self, *, write: bool) -> None:
        """Release what :meth:`_take_slot` took."""
        self._open.release()
        if write:
            self._writer.release()

    async def _take_write_turn(self, *, unit: bool = False) -> None:
        """This process's write turn. A writer other than a unit of work (``unit``)
        commits the transaction a unit left open first (group commit)."""
        if not self._writer.locked():
            # Granted without waiting: no deadline to arm (asyncio.timeout costs ~8 µs,
            # as much as SQLite's BEGIN IMMEDIATE).
            await self._writer.acquire()
        else:
            if unit:
                self._units_waiting += 1
            try:
                async with asyncio.timeout(self._write_timeout):
                    await self._writer.acquire()
            except TimeoutError:
                self._commit_if_stranded()
                raise ConflictError(
                    "the database is busy with another write; retry it", reason=STORAGE_BUSY
                ) from None
            except BaseException:
                self._commit_if_stranded()
                raise
            finally:
                if unit:
                    self._units_waiting -= 1
        if not unit:
            self._commit_pending()

    def _may_hand_on(self, unit: SqliteUnit, size: int) -> bool:
        """Whether ``unit``, its body over and the ``size``-th of its group, leaves the
        transaction open for a unit waiting for the turn rather than committing it."""
        return (
            self._units_waiting > 0
            and size < self.group_commit_units
            and not self._closed
            and unit.can_hand_on()
        )

    def _commit_pending(self) -> None:
        """Commit the transaction left open for a next unit, if any (the caller holds
        the write turn, or nobody does). A failed COMMIT is the group's units' error,
        which each of them raises, not the caller's."""
        group, self._pending = self._pending, None
        if group is not None:
            with contextlib.suppress(Exception):
                group.commit(self)

    def _commit_if_stranded(self) -> None:
        # A unit left its transaction open for units that waited for the turn; should
        # every one of them have stopped waiting, nobody takes the turn to commit it.
        if self._pending is not None and not self._writer.locked():
            self._commit_pending()


class _CommitGroup:
    """Units of work sharing one transaction and its COMMIT (see the module docstring):
    ``carrier``, the last unit, holds the connection; each earlier unit waits on its
    future in ``waiting``."""

    __slots__ = ("carrier", "waiting")

    def __init__(self, carrier: SqliteUnit) -> None:
        self.carrier = carrier
        self.waiting: list[asyncio.Future[None]] = []

    @property
    def size(self) -> int:
        """The units in the group: each earlier one waits, the carrier runs."""
        return len(self.waiting) + 1

    def commit(self, driver: SqliteDriver) -> None:
        """COMMIT on the loop's thread and tell the waiting units how it went; the
        connection goes to the next unit. A failed COMMIT raises here too."""
        carrier = self.carrier
        try:
            carrier.commit_now()
        except Exception as error:
            self.fail(error, driver)
            raise
        else:
            for waiter in self.waiting:
                if not waiter.done():
                    waiter.set_result(None)
        finally:
            _keep_or_discard(driver, carrier)

    def fail(self, error: BaseException, driver: SqliteDriver) -> None:
        """The group's transaction was rolled back: each waiting unit raises an error of
        its own (one exception raised by several tasks would collect all their
        tracebacks)."""
        cause = error.orig if isinstance(error, DBAPIError) else None
        for waiter in self.waiting:
            if waiter.done():
                continue
            if isinstance(cause, sqlite3.Error):
                waiter.set_exception(wrap("COMMIT", cause, driver.engine.dialect))
            elif isinstance(error, ConflictError):
                waiter.set_exception(ConflictError(error.message, reason=error.reason))
            else:
                waiter.set_exception(RuntimeError(f"the unit of work's commit failed: {error}"))


class _SqliteUnitScope:
    """:meth:`SqliteDriver.unit`: a class, not a generator, as it wraps every unit of
    work (a generator-based context manager costs a few µs more per layer)."""

    __slots__ = ("_driver", "_group", "_unit")

    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = driver
        self._unit: SqliteUnit | None = None
        # The group whose transaction the unit runs in (None: one of its own so far).
        self._group: _CommitGroup | None = None

    async def __aenter__(self) -> SqliteUnit:
        driver = self._driver
        if driver._closed:
            raise RuntimeError("the storage is closed")
        await driver._take_slot(write=True, unit=True)
        group, driver._pending = driver._pending, None
        if group is not None:
            # An earlier unit left its transaction open for this one.
            unit = self._unit = SqliteUnit(driver, None)
            try:
                unit.join(group.carrier)
            except BaseException:
                try:
                    group.commit(driver)  # what the earlier units wrote, without this one
                finally:
                    self._release()
                raise
            group.carrier = unit
            self._group = group
            return unit
        idle = driver._idle_units
        unit = self._unit = SqliteUnit(driver, idle.pop() if idle else None)
        try:
            await unit.begin()
        except BaseException:
            await _detached(unit.finish(commit=False), self._release)
            raise
        return unit

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        unit = self._unit
        assert unit is not None
        driver = self._driver
        group = self._group
        if exc_type is not None:
            if group is not None:
                # Only this unit's statements are undone; the earlier units' commit.
                await _detached(self._leave_group(group), self._release)
                return
            # The body failed or was cancelled: rolled back, its error goes on.
            await _detached(unit.finish(commit=False), self._release)
            return
        size = 1 if group is None else group.size
        if driver._may_hand_on(unit, size):
            await self._hand_on(group or _CommitGroup(unit))
        elif group is not None:
            # The group's last unit: its COMMIT runs on the loop's thread (a joined unit
            # holds the write lock there), after a step its body stopped waiting for.
            if unit.step_running:
                await _finished(self._commit_group(group))
            else:
                self._commit_group_now(group)
        else:
            try:
                await unit.finish(commit=True)
            except BaseException:
                # The commit failed (and was rolled back), or was cancelled: waited
                # for, then the transaction rolled back if still open.
                await _detached(unit.finish(commit=False), self._release)
                raise
            self._release()
        driver._checkpoint_if_due()

    async def _hand_on(self, group: _CommitGroup) -> None:
        """Leave the transaction open for the next unit, give the turn back and wait
        for the group's COMMIT."""
        driver, unit = self._driver, self._unit
        assert unit is not None
        try:
            unit.hand_on()
        except Exception:
            # Its savepoint could not be released: the group ends with this unit.
            self._end_group(group)
            raise
        committed = asyncio.get_running_loop().create_future()
        group.waiting.append(committed)
        driver._pending = group
        # The connection stays with the open transaction: the slot and the turn only.
        driver._give_back(write=True)
        # Cancelled meanwhile: the group commits all the same (or fails) without it.
        await committed

    async def _commit_group(self, group: _CommitGroup) -> None:
        unit = self._unit
        assert unit is not None
        try:
            await unit.settle()
        except BaseException:
            # Cancelled (the loop shutting down): the group's units hear of it, and the
            # connection is discarded (its transaction rolled back, SQLite's lock freed)
            # once the step still running on it is over.
            group.fail(RuntimeError("the storage stopped before the commit"), self._driver)
            unit.discard_when_idle()
            self._driver._give_back(write=True)
            raise
        self._commit_group_now(group)

    def _commit_group_now(self, group: _CommitGroup) -> None:
        try:
            group.commit(self._driver)
        finally:
            self._release()

    async def _leave_group(self, group: _CommitGroup) -> None:
        # A joined unit failed: its own statements are undone and the group committed at
        # once. A failure ends the group: this unit's caller must not wait for later
        # bodies, and it is rare.
        unit = self._unit
        assert unit is not None
        await unit.settle()
        self._end_group(group, release=False)

    def _end_group(self, group: _CommitGroup, *, release: bool = True) -> None:
        """Undo this unit's own statements and commit what the group's earlier units
        wrote (or fail them, should the rollback to the savepoint fail)."""
        unit = self._unit
        assert unit is not None
        try:
            error = unit.roll_back_own()
            if error is None:
                group.commit(self._driver)
            else:
                group.fail(error, self._driver)
        finally:
            if release:
                self._release()

    def _release(self) -> None:
        """Give the slot and the turn back; the unit's connection, if it still has it,
        to the next unit."""
        driver, unit = self._driver, self._unit
        assert unit is not None
        _keep_or_discard(driver, unit)
        driver._give_back(write=True)


def _keep_or_discard(driver: SqliteDriver, unit: SqliteUnit) -> None:
    """``unit``'s connection, if it still has it and its transaction is over, for the
    next unit (discarded once the driver is closed, or when it cannot serve another)."""
    if driver._closed:
        unit.discard()
    else:
        kept = unit.for_next_unit()
        if kept is not None:
            driver._idle_units.append(kept)


async def _finished(work: Awaitable[None]) -> None:
    """Await ``work`` in a task of its own that the caller's cancellation does not stop
    (a group's COMMIT is the other units' too); its error, if the caller still waits."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_log_unheard)
    await asyncio.shield(task)


def _log_unheard(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Retrieved here, so that one whose caller was cancelled is not reported as
        # never retrieved; the group's units get their own errors.
        _log.debug("a group's commit failed after its last unit's caller left")


async def _detached(finishing: Awaitable[None], release: Callable[[], None]) -> None:
    async def finish() -> None:
        try:
            await finishing
        except Exception:
            # The caller gets its own error; a connection that cannot roll back is
            # closed all the same and discarded by the pool.
            _log.warning("rolling back a SQLite transaction failed", exc_info=True)
        finally:
            release()

    task = asyncio.ensure_future(finish())
    # The caller may be cancelled while waiting; the task still ends the transaction.
    await asyncio.wait([task])
