"""A unit of work on SQLite: BEGIN IMMEDIATE, statements and COMMIT on the sqlite3 connection.

Through SQLAlchemy's engine a unit of work paid for the pool's checkout and checkin (its
reset rolls back once more), a new Connection and its transaction on every unit: a few
hundred µs of CPU where BEGIN IMMEDIATE, two inserts and COMMIT need ~60 µs. A unit of
work therefore runs on a pooled connection the driver keeps checked out between units
(the write turn lets one unit run at a time: one such connection, rarely two), and
drives the transaction on its sqlite3 connection itself:

* BEGIN IMMEDIATE is tried on the loop's thread with a busy timeout of 0 (see
  ``_sqlite_points.begin_now``; a connection kept between units has none, so no PRAGMA
  runs either side of the BEGIN). Granted, the transaction holds SQLite's write lock:
  its point statements and its COMMIT wait for no lock and run on the loop's thread.
  Refused (another process writes), the connection gets its busy timeout back,
  BEGIN IMMEDIATE waits on a thread up to it and every step of the transaction runs on
  a thread.
* Point statements (get, create, update, delete, delete_many of up to 256 ids) run as
  their SQL text on the sqlite3 connection (its statement cache), as outside a unit of
  work.
* A statement built with SQLAlchemy (a list page, a longer delete_many) runs on a thread through
  the engine's connection over the same sqlite3 connection, in the transaction already
  begun: compiled once by the sqlite dialect (its compiled cache), its rows through the
  column types. It may read many rows: never on the loop's thread.
* The steps of one unit run one after the other; once it has ended, further statements
  raise. A step running on a thread is waited for before the unit ends, even when its
  caller was cancelled; the transaction is then rolled back. A connection that cannot
  roll back is invalidated (closed, never reused).
* A unit may run in a transaction an earlier unit left open for it (group commit, see
  ``_sqlite``): it then runs under a savepoint (:meth:`SqliteUnit.join`), so that
  failing it rolls back its own statements only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, CursorResult, Row
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound
from sqlalchemy.sql.base import Executable

from nexus_grpc.errors import ConflictError

from ._sqlite_points import run_raw, wrap
from ._sqlite_steps import SqliteSteps
from .points import RawRows

if TYPE_CHECKING:
    from ._sqlite import SqliteDriver

__all__ = ["Rows", "SqliteUnit", "rows_of"]

T = TypeVar("T")

#: The savepoint a unit runs under in a transaction an earlier unit left open.
_SAVEPOINT = "nexus_unit"


def _rolled_back() -> ConflictError:
    # SQLite rolls a whole transaction back on some errors (a full disk, an I/O error,
    # an interrupt), which the unit's body may have caught. Its statements must not go
    # on outside it (each would commit on its own, in autocommit), nor its COMMIT
    # report success: ABORTED, which a client retries whole.
    return ConflictError(
        "the database rolled this unit of work's transaction back after an error that "
        "went unheeded (by it or a unit of work sharing its commit); nothing of it is "
        "stored: retry it",
        reason="TRANSACTION_ROLLED_BACK",
    )


@dataclass(frozen=True, slots=True)
class Rows:
    """A statement's result, fetched on the worker thread: the rows and the row count."""

    rows: Sequence[Row[Any]]
    rowcount: int

    def first(self) -> Row[Any] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None

    def all(self) -> Sequence[Row[Any]]:
        """Every row."""
        return self.rows

    def scalar_one_or_none(self) -> Any:
        """The first column of the only row; None without rows."""
        if len(self.rows) > 1:
            raise MultipleResultsFound("more than one row where at most one was expected")
        return self.rows[0][0] if self.rows else None


def rows_of(result: CursorResult[Any]) -> Rows:
    """A SQLAlchemy result's rows, all fetched, and its row count."""
    return Rows(result.all() if result.returns_rows else (), result.rowcount)


class SqliteUnit(SqliteSteps):
    """The statements of one write transaction on ``session`` (a pooled connection kept
    checked out; None: checked out by the first step, on a thread). :meth:`begin`
    starts the transaction, :meth:`finish` ends it."""

    def __init__(self, driver: SqliteDriver, session: Connection | None) -> None:
        super().__init__(driver)
        #: The pooled connection; None once invalidated (or before it is checked out).
        self.session = session
        self._dialect: Dialect = driver.engine.dialect
        self._begun = False
        # Whether the connection has its busy timeout: a new one has; one kept between
        # units has none (see for_next_unit), so that BEGIN IMMEDIATE on the loop's
        # thread needs no PRAGMA either side of it. The unit then holds SQLite's write
        # lock, and its statements and COMMIT wait for no lock (WAL).
        self._waits = session is None
        #: Whether the unit runs under a savepoint, in a transaction begun by an earlier
        #: unit (see :meth:`join`).
        self.joined = False

    @property
    def _raw(self) -> sqlite3.Connection:
        assert self.session is not None
        raw = self.session.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    async def begin(self) -> None:
        """BEGIN IMMEDIATE: on the loop's thread if SQLite grants the lock at once, else
        on a thread waiting up to the busy timeout."""
        if self.session is not None and self._driver.points.begin_now(self._raw, waits=self._waits):
            self._begun = self._on_loop = True
            return
        await self._step(self._begin_waiting, blocking=True)

    def join(self, carrier: SqliteUnit) -> None:
        """Run in the transaction ``carrier`` (a unit that has ended without committing)
        left open on the loop's thread: its connection, under a savepoint of this unit's
        own. On the loop's thread, without waiting: the transaction holds SQLite's write
        lock. On failure the connection has gone back to ``carrier``."""
        self.session, carrier.session = carrier.session, None
        self._waits = carrier._waits
        try:
            if not self._raw.in_transaction:
                # A SAVEPOINT would begin a transaction of its own, and its RELEASE
                # commit it: never the group's (see can_hand_on).
                raise RuntimeError("the transaction left open for this unit has ended")
            self._statement(f"SAVEPOINT {_SAVEPOINT}")
        except BaseException:
            carrier.session, self.session = self.session, None
            raise
        self._begun = self._on_loop = self.joined = True

    def can_hand_on(self) -> bool:
        """Whether the unit, its body over, may leave its transaction open for the next
        unit instead of committing it: it runs on the loop's thread, on its sqlite3
        connection alone (a statement built with SQLAlchemy opened the Connection's own
        transaction, which that Connection must end), with no step still running, and
        its transaction still open (SQLite rolls the whole of it back on some errors, a
        full disk or an interrupt, which a body may have caught: its commit then raises
        ABORTED)."""
        session = self.session
        return (
            self._on_loop
            and self._begun
            and self._running is None
            and session is not None
            and not session.in_transaction()
            and self._raw.in_transaction
        )

    @property
    def step_running(self) -> bool:
        """Whether a step runs on a thread still (its caller stopped waiting for it)."""
        return self._running is not None and not self._running.done()

    def hand_on(self) -> None:
        """End the unit without committing: its statements stay in the open transaction
        (its savepoint released, when it has one), for a later unit to commit."""
        self._ended = True
        if self.joined:
            self._statement(f"RELEASE {_SAVEPOINT}")

    def roll_back_own(self) -> Exception | None:
        """Undo this joined unit's statements only (ROLLBACK TO its savepoint); the
        transaction stays open for the units before it. The error when that failed:
        the whole transaction was rolled back (or the connection discarded) instead."""
        self._ended = True
        try:
            if not self._raw.in_transaction:
                raise _rolled_back()  # by SQLite, the earlier units' statements with it
            self._statement(f"ROLLBACK TO {_SAVEPOINT}")
            self._statement(f"RELEASE {_SAVEPOINT}")
        except Exception as error:
            with contextlib.suppress(Exception):
                self._end(commit=False)
            return error
        return None

    async def settle(self) -> None:
        """End the unit: further statements raise; a step still running on a thread
        (its caller was cancelled) is waited for."""
        self._ended = True
        await self._after_running()

    def commit_now(self) -> None:
        """COMMIT on the loop's thread (the transaction holds the write lock there)."""
        self._ended = True
        self._begun = False
        self._end(commit=True)

    def _statement(self, sql: str) -> None:
        try:
            self._raw.execute(sql)
        except sqlite3.Error as exc:
            raise wrap(sql, exc, self._dialect) from exc

    def _begin_waiting(self) -> None:
        if self.session is None:
            self.session = self._driver.engine.connect()
        elif not self._waits:
            self._driver.points.set_waiting(self._raw, True)
        self._waits = True
        try:
            self._raw.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise wrap("BEGIN IMMEDIATE", exc, self._dialect) from exc
        self._begun = True

    async def execute_raw(self, sql: str, params: Sequence[Any]) -> RawRows:
        """Run a point statement (see ``points``): its rows and row count."""
        if self._on_loop and self._running is None:
            # What _step does here, spelled out: this runs for every statement of a
            # unit, and three coroutines and a partial cost more than an insert's Python.
            if self._ended:
                raise RuntimeError("this transaction has ended")
            points = self._driver.points
            if points.turn_due():
                await points.yield_turn()
                if self._ended:
                    raise RuntimeError("this transaction has ended")
            return self._run_raw(sql, params)
        return await self._step(functools.partial(self._run_raw, sql, params))

    def _run_raw(self, sql: str, params: Sequence[Any]) -> RawRows:
        raw = self._raw
        if self._begun and not raw.in_transaction:  # _check_open, inlined: every statement
            raise _rolled_back()
        return run_raw(raw, sql, params, dialect=self._dialect, span_namespace=self._spans)

    def _check_open(self) -> None:
        """ConflictError when SQLite has rolled the unit's transaction back under it."""
        if self._begun and self.session is not None and not self._raw.in_transaction:
            raise _rolled_back()

    @property
    def _spans(self) -> str | None:
        return self._driver.span_namespace

    async def execute(self, statement: Executable) -> Rows:
        """Run a statement built with SQLAlchemy (a list page, a longer delete_many) on a thread,
        through the engine's connection over the same sqlite3 connection: compiled once
        by the sqlite dialect (its compiled cache), in the transaction already begun."""
        return await self._step(functools.partial(self._execute, statement), blocking=True)

    def _execute(self, statement: Executable) -> Rows:
        assert self.session is not None
        # Before SQLAlchemy's "begin" listener would open a new transaction.
        self._check_open()
        # The engine's "begin" listener sees the sqlite3 transaction open: no second BEGIN.
        return rows_of(self.session.execute(statement))

    async def run_sync(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``work(connection, *args, **kwargs)`` in the transaction, on a thread
        (``connection``: the engine's, over the unit's sqlite3 connection)."""

        def in_transaction() -> T:
            self._check_open()
            return work(self.session, *args, **kwargs)

        return await self._step(in_transaction, blocking=True)

    async def finish(self, *, commit: bool) -> None:
        """COMMIT (or ROLLBACK) once the running step is over; the unit has ended either
        way. Safe to call again after a first call was cancelled."""
        await self.settle()
        if not self._begun or self.session is None:
            return
        self._begun = False
        await self._end_step(functools.partial(self._end, commit=commit))

    def _end(self, *, commit: bool) -> None:
        session = self.session
        assert session is not None
        raw = self._raw
        try:
            if commit and not raw.in_transaction:
                # SQLAlchemy's commit() of a transaction SQLite has rolled back does
                # nothing and returns: it must not pass for one.
                raise _rolled_back()
            if session.in_transaction():
                # A SQLAlchemy statement ran: its Connection ends the transaction (and
                # knows it has ended).
                if commit:
                    session.commit()
                else:
                    session.rollback()
            elif commit:
                try:
                    raw.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise wrap("COMMIT", exc, self._dialect) from exc
            else:
                raw.rollback()
            if commit:
                self._driver.points.committed()
        except BaseException:
            try:
                if session.in_transaction():
                    session.rollback()
                raw.rollback()  # nothing to do when a failed COMMIT ended it
            except Exception:
                self.discard()
            raise
        finally:
            if self.session is not None and (self._raw.in_transaction or session.invalidated):
                self.discard()  # never hand on a connection still in a transaction

    def for_next_unit(self) -> Connection | None:
        """The connection, with no busy timeout, to keep for the next unit (the unit
        has none afterwards); None when there is none or it cannot serve another
        (invalidated, a transaction still open: it is discarded)."""
        session = self.session
        if session is None:
            return None
        if session.invalidated or self._raw.in_transaction:
            self.discard()
            return None
        if self._waits:
            try:
                # A unit joining a group runs under a savepoint, whose journal of the
                # pages it changes costs ~15 µs per unit in a temporary file, next to
                # nothing in memory. Only the units' connections: elsewhere the setting
                # would keep a large sort's spill in memory too.
                self._statement("PRAGMA temp_store = MEMORY")
                self._driver.points.set_waiting(self._raw, False)
            except DBAPIError:
                self.discard()
                return None
            self._waits = False
        self.session = None
        return session

    def discard_when_idle(self) -> None:
        """:meth:`discard` once the step running on a thread, if any, is over (on the
        loop's thread); the unit has no connection from now on."""
        running = self._running
        if running is None or running.done():
            self.discard()
            return
        loop = asyncio.get_running_loop()

        def over(_: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left
                loop.call_soon_threadsafe(self.discard)

        running.add_done_callback(over)

    def discard(self) -> None:
        """Invalidate the connection: closed, never used again."""
        session, self.session = self.session, None
        if session is not None:
            session.invalidate()
            session.close()
