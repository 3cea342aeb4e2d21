"""Point statements on SQLite outside a unit of work: on the loop's thread when SQLite
lets them through at once, else on a thread.

A point statement (one row by its key: see ``points``) skips SQLAlchemy and runs on a
sqlite3 connection with its statement cache. Handing it to a thread costs ~100-200 µs
of CPU in thread switches on small machines; the statement itself ~5 µs (a read) to
~40 µs (a write and its commit, WAL with ``synchronous = NORMAL``: no fsync). So:

* a read runs on the loop's thread, on a read connection of its own whose busy timeout
  is 0: it never waits. Should SQLite refuse it a lock (rare for a WAL reader: recovery,
  a truncating checkpoint), it returns None and the caller retries on a thread;
* a write, in this process's write turn, first tries ``BEGIN IMMEDIATE`` on the loop's
  thread on a write connection whose busy timeout is 0. SQLite's write lock taken, the
  statement and COMMIT run there too. Refused (another process writes), the whole
  transaction runs on a thread instead, on a connection that waits up to the busy
  timeout: a write waiting for a lock never blocks the loop;
* a unit of work that may write takes SQLite's write lock on the loop's thread the
  same way (``begin_now``) when a pooled connection is open already; it then holds the
  lock, so its statements and COMMIT wait for none and run on the loop's thread too
  (see ``_sqlite``);
* no connection of this process checkpoints on commit (a checkpoint writes and syncs
  the database file: milliseconds on the loop's thread). Every
  :data:`CHECKPOINT_EVERY` commits passive checkpoints run on a thread instead: one
  while writers go on (most of the copying), then one in the write turn,
  as SQLite's own runs right after a commit (a writer running beside it would keep the
  WAL from starting over); other processes checkpoint as they do.

Between a point write's BEGIN and COMMIT on the loop's thread nothing awaits: a
cancelled caller cannot leave it open (a unit of work's statements may yield between
them; a cancelled unit is rolled back, see ``_sqlite``). A write handed to a thread
keeps the write turn until its step is over, even when its caller stops waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError

from .points import RawRows
from .spans import client_span, sql_operation, sql_table

__all__ = ["CHECKPOINT_EVERY", "SqlitePoints", "run_raw"]

#: Commits of this process (point writes and units, on the loop or on threads) between
#: two passive checkpoints. SQLite's own default (1000 pages) is of the same order for
#: small records.
CHECKPOINT_EVERY = 500

#: Statements a task runs on the loop's thread in a row, at most, before it yields.
_YIELD_EVERY = 8
#: Seconds such a run may last, at most, before the task's next statement yields first.
_TURN_AFTER = 0.002

#: sqlite3 error names of a lock SQLite refused at once (busy timeout 0).
_REFUSED = ("SQLITE_BUSY", "SQLITE_LOCKED")


def run_raw(
    connection: sqlite3.Connection,
    sql: str,
    params: Sequence[Any],
    *,
    dialect: Dialect,
    span_namespace: str | None,
) -> RawRows:
    """Run ``sql`` on ``connection``: its rows and row count. sqlite3 errors become
    SQLAlchemy's (parameters hidden), as the engine's own statements raise them; with
    ``span_namespace`` (tracing on) the statement is a CLIENT span."""
    if span_namespace is None:
        return _run(connection, sql, params, dialect)
    with client_span(
        "sqlite", sql_operation(sql), collection=sql_table(sql), namespace=span_namespace, query=sql
    ):
        return _run(connection, sql, params, dialect)


def _run(
    connection: sqlite3.Connection, sql: str, params: Sequence[Any], dialect: Dialect
) -> RawRows:
    try:
        cursor = connection.execute(sql, params)
        rows = cursor.fetchall()
        return RawRows(rows, cursor.rowcount)
    except sqlite3.Error as exc:
        raise wrap(sql, exc, dialect) from exc


def wrap(sql: str, exc: sqlite3.Error, dialect: Dialect) -> BaseException:
    """``exc`` as the SQLAlchemy error the engine would raise (parameters hidden)."""
    return DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True, dialect=dialect)


def _refused(error: DBAPIError) -> bool:
    return str(getattr(error.orig, "sqlite_errorname", "")).startswith(_REFUSED)


class SqlitePoints:
    """The read and write connections of point statements outside units of work.

    ``connect`` opens a configured connection (WAL, busy timeout, no implicit BEGIN);
    ``executor`` runs what must not run on the loop. The caller holds the process's
    write turn around :meth:`write_now` and :meth:`write_on_thread`.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        executor: concurrent.futures.Executor,
        *,
        dialect: Dialect,
        busy_timeout_ms: int,
        carry_context: bool,
        span_namespace: str | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._connect = connect
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = executor
        self._dialect = dialect
        self._carry_context = carry_context
        self._span_namespace = span_namespace
        self._reader: sqlite3.Connection | None = None
        self._loop_writer: sqlite3.Connection | None = None
        self._thread_writer: sqlite3.Connection | None = None
        self._commits = 0
        self._clock = clock
        # The statements a task runs in a row on the loop's thread: which task, how
        # many, since when, and the loop whose next turn is to start a new run.
        self._streak_task: asyncio.Task[Any] | None = None
        self._streak = 0
        self._streak_began = 0.0
        self._reset_on: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _run(self, connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> RawRows:
        return run_raw(
            connection, sql, params, dialect=self._dialect, span_namespace=self._span_namespace
        )

    async def take_turns(self) -> None:
        """Before a statement on the loop's thread: yield to other tasks first once the
        statements run in a row number :data:`_YIELD_EVERY`, or have lasted
        :data:`_TURN_AFTER` seconds.

        "In a row" means without the loop turning in between: each turn of the loop
        (and so each idle gap) starts a new run, so statements interleaved with the
        loop's own turns, as concurrent calls' are, never yield here. A yield before
        every statement would cost more than the statement (resuming the caller's whole
        chain of awaits); none at all would let a long series (a loop of creates, of
        256-id deletes) hold the loop for as long as it lasts. Each task has a run of
        its own, and one that yielded starts a new run with the statement it resumes
        for: concurrent series take turns, each holding the loop for at most eight
        statements, or 2 ms and one statement, at a time."""
        if self.turn_due():
            await self.yield_turn()

    def turn_due(self) -> bool:
        """Count a statement about to run on the loop's thread: whether its task must
        yield first (:meth:`yield_turn`). :meth:`take_turns` in two halves, for the
        paths where awaiting a coroutine per statement is a cost of its own."""
        if self._streak == 0 or self._streak_task is not asyncio.current_task():
            self._begin_streak()
        self._streak += 1
        return self._streak > _YIELD_EVERY or self._clock() - self._streak_began >= _TURN_AFTER

    async def yield_turn(self) -> None:
        """Give the other tasks a turn of the loop; the statement this task resumes for
        is the first of a new run."""
        self._streak = 0
        await asyncio.sleep(0)
        self._begin_streak()
        self._streak = 1

    def _begin_streak(self) -> None:
        self._streak_task = asyncio.current_task()
        self._streak = 0
        self._streak_began = self._clock()
        loop = asyncio.get_running_loop()
        # The loop's next turn starts a new run. Asked again on another loop: one closed
        # before it turned never will.
        if self._reset_on is not loop:
            self._reset_on = loop
            loop.call_soon(self._turned)

    def _turned(self) -> None:
        self._reset_on = None
        self._streak = 0

    # -- reads -------------------------------------------------------------------------

    async def read_now(self, sql: str, params: Sequence[Any]) -> RawRows | None:
        """Run the read ``sql`` on the loop's thread; None if SQLite refused a lock."""
        await self.take_turns()
        reader = self._reader
        if reader is None:
            opened = await self._open(query_only=True)
            if self._reader is None:
                self._reader = opened
            else:  # another task opened one meanwhile
                opened.close()
            reader = self._reader
        try:
            return self._run(reader, sql, params)
        except DBAPIError as error:
            if _refused(error):
                return None
            raise

    async def _open(self, *, query_only: bool = False) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the storage is closed")
        opened = await asyncio.to_thread(self._connect_now_or_never, query_only)
        if self._closed:
            opened.close()
            raise RuntimeError("the storage is closed")
        return opened

    def _connect_now_or_never(self, query_only: bool) -> sqlite3.Connection:
        connection = self._connect()
        try:
            # Never wait on the loop's thread: a refused lock goes to a thread instead.
            connection.execute("PRAGMA busy_timeout = 0")
            if query_only:
                connection.execute("PRAGMA query_only = 1")
        except BaseException:
            connection.close()
            raise
        return connection

    # -- writes (the caller holds the write turn) -------------------------------------

    async def write_now(self, sql: str, params: Sequence[Any]) -> RawRows | None:
        """Run the write ``sql`` as a transaction of its own on the loop's thread; None
        if SQLite refused the write lock at once (another process writes)."""
        writer = self._loop_writer
        if writer is None:
            writer = self._loop_writer = await self._open()
        try:
            writer.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = wrap("BEGIN IMMEDIATE", exc, self._dialect)
            if isinstance(error, DBAPIError) and _refused(error):
                return None
            raise error from exc
        rows = self._finish(writer, sql, params)
        self.committed()
        return rows

    def begin_now(self, connection: sqlite3.Connection, *, waits: bool = True) -> bool:
        """BEGIN IMMEDIATE on ``connection`` without waiting: whether SQLite granted
        the write lock. ``waits``: the connection has its busy timeout, set to 0 for the
        BEGIN and restored either way; False: its busy timeout is 0 already (see
        :meth:`set_waiting`)."""
        try:
            if not waits:
                connection.execute("BEGIN IMMEDIATE")
            else:
                connection.execute("PRAGMA busy_timeout = 0")
                try:
                    connection.execute("BEGIN IMMEDIATE")
                finally:
                    connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        except sqlite3.Error as exc:
            error = wrap("BEGIN IMMEDIATE", exc, self._dialect)
            if isinstance(error, DBAPIError) and _refused(error) and not connection.in_transaction:
                return False
            raise error from exc
        return True

    def set_waiting(self, connection: sqlite3.Connection, waits: bool) -> None:
        """Give ``connection`` its busy timeout (``waits``), or none: a connection that
        only ever takes SQLite's write lock with :meth:`begin_now` (and runs its
        statements holding it, when they wait for no lock) needs no PRAGMA either side
        of each BEGIN."""
        timeout = self._busy_timeout_ms if waits else 0
        try:
            connection.execute(f"PRAGMA busy_timeout = {timeout}")
        except sqlite3.Error as exc:
            raise wrap("PRAGMA busy_timeout", exc, self._dialect) from exc

    def committed(self) -> None:
        """Count a commit of this process (on any thread)."""
        self._commits += 1

    def checkpoint_due(self) -> bool:
        """Whether CHECKPOINT_EVERY commits were counted since the last checkpoint
        (the count starts over)."""
        if self._commits < CHECKPOINT_EVERY:
            return False
        self._commits = 0
        return True

    def write_on_thread(
        self, sql: str, params: Sequence[Any], give_back: Callable[[], None]
    ) -> asyncio.Future[RawRows]:
        """Run the write ``sql`` as a transaction of its own on a thread, waiting for
        SQLite's lock up to the busy timeout; ``give_back()`` (the write turn) runs on
        the loop once the step is over, whether or not anyone still waits for it."""
        work: Callable[[], RawRows] = functools.partial(self._write_step, sql, params)
        if self._carry_context:
            work = functools.partial(contextvars.copy_context().run, work)
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(work)
        except RuntimeError:  # shut down by close()
            raise RuntimeError("the storage is closed") from None

        def done(_: concurrent.futures.Future[RawRows]) -> None:
            # A closed loop (RuntimeError) has nobody waiting for the turn.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(give_back)

        future.add_done_callback(done)
        return asyncio.wrap_future(future)

    def _write_step(self, sql: str, params: Sequence[Any]) -> RawRows:
        connection = self._thread_writer
        if connection is None:
            connection = self._thread_writer = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise wrap("BEGIN IMMEDIATE", exc, self._dialect) from exc
        rows = self._finish(connection, sql, params)
        # Counted too: under another process's writes most commits may come this way.
        self.committed()
        return rows

    def _finish(self, connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> RawRows:
        """Run ``sql`` and COMMIT in the transaction begun on ``connection``; roll back
        when either fails."""
        try:
            rows = self._run(connection, sql, params)
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                raise wrap("COMMIT", exc, self._dialect) from exc
        except BaseException:
            try:
                connection.rollback()  # nothing to do when a failed COMMIT ended it
            except sqlite3.Error:
                self._discard(connection)  # one that cannot roll back is not used again
            raise
        return rows

    def _discard(self, connection: sqlite3.Connection) -> None:
        if connection is self._loop_writer:
            self._loop_writer = None
        if connection is self._thread_writer:
            self._thread_writer = None
        connection.close()

    def checkpoint_step(self) -> None:
        """A passive checkpoint, on a thread. Run in the write turn, with no writer of
        this process running meanwhile, it can copy the whole WAL back, and the next
        write starts the WAL over instead of growing it (see ``SqliteDriver._checkpoint``)."""
        # A failure (opening too) is left to the next one, or to another process's.
        with contextlib.suppress(sqlite3.Error), contextlib.closing(self._connect()) as connection:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Close the connections (the caller holds the write turn)."""
        self._closed = True
        for connection in (self._reader, self._loop_writer, self._thread_writer):
            if connection is not None:
                connection.close()
        self._reader = self._loop_writer = self._thread_writer = None
