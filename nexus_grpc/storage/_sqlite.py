"""SQLite driven from asyncio: each statement is one call on a worker thread.

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

At most ``pool_size`` transactions are open at once (the others wait their turn), and
there are as many threads: an open transaction always finds a thread for its next
step, so a checkout never waits on a connection another transaction cannot give back.
Writers of one process also take turns (see ``engine``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, CursorResult, Engine, Row
from sqlalchemy.exc import MultipleResultsFound
from sqlalchemy.sql import Executable

__all__ = ["Rows", "SqliteConnection", "SqliteDriver"]

T = TypeVar("T")

_log = logging.getLogger("nexus.storage")


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


class SqliteConnection:
    """One transaction on one pooled connection, checked out by its first statement;
    with ``autocommit``, one transaction per statement instead."""

    def __init__(self, driver: SqliteDriver, options: dict[str, Any], *, autocommit: bool) -> None:
        self._driver = driver
        self._options = options
        self._autocommit = autocommit
        self._sync: Connection | None = None
        # The step running on a thread, if any: a cancelled caller does not stop it,
        # and the connection must not be touched again before it is over.
        self._running: concurrent.futures.Future[Any] | None = None

    async def execute(self, statement: Executable) -> Rows:
        """Run ``statement`` in the transaction (begun by the first one)."""
        return await self._step(functools.partial(self._execute, statement))

    async def run_sync(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``work(connection, *args, **kwargs)`` in the transaction, on the thread."""
        return await self._step(lambda: work(self._connection(), *args, **kwargs))

    async def _finish(self, *, commit: bool) -> None:
        if self._running is not None and not self._running.done():
            # Wait for it without raising: its caller was cancelled, or has seen its error.
            await asyncio.wait([asyncio.wrap_future(self._running)])
        # Ended once, whatever happens: a failed commit has closed the connection too.
        connection, self._sync = self._sync, None
        if connection is not None:
            await self._step(functools.partial(self._end, connection, commit=commit))

    async def _step(self, work: Callable[[], T]) -> T:
        future = self._driver.executor.submit(work)
        self._running = future
        return await asyncio.wrap_future(future)

    # -- on the worker thread ----------------------------------------------------------

    def _connection(self) -> Connection:
        if self._sync is None:
            self._sync = self._driver.engine.connect().execution_options(**self._options)
        return self._sync

    def _execute(self, statement: Executable) -> Rows:
        connection = self._connection()
        if not self._autocommit:
            return _rows(connection.execute(statement))
        self._sync = None
        try:
            rows = _rows(connection.execute(statement))
        except BaseException:
            self._end(connection, commit=False)
            raise
        self._end(connection, commit=True)
        return rows

    @staticmethod
    def _end(connection: Connection, *, commit: bool) -> None:
        try:
            if commit:
                connection.commit()
            else:
                connection.rollback()
        finally:
            connection.close()


def _rows(result: CursorResult[Any]) -> Rows:
    return Rows(result.all() if result.returns_rows else (), result.rowcount)


class SqliteDriver:
    """A synchronous SQLAlchemy engine on SQLite, used from asyncio through threads."""

    def __init__(self, engine: Engine, *, pool_size: int) -> None:
        self.engine = engine
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size, thread_name_prefix="nexus-sqlite"
        )
        self._open = asyncio.Semaphore(pool_size)

    @asynccontextmanager
    async def transaction(
        self, *, autocommit: bool = False, **options: Any
    ) -> AsyncIterator[SqliteConnection]:
        """A transaction with execution ``options``: committed when the body returns,
        rolled back when it raises or is cancelled (``autocommit``: one per statement)."""
        await self._open.acquire()
        connection = SqliteConnection(self, options, autocommit=autocommit)
        try:
            yield connection
        except BaseException:
            # Finished in a task of its own, so a second cancellation of this one cannot
            # leave the connection checked out in an open transaction.
            await _unless_cancelled(connection._finish(commit=False), self._open)
            raise
        try:
            await connection._finish(commit=True)
        except BaseException:
            await _unless_cancelled(connection._finish(commit=False), self._open)
            raise
        self._open.release()

    async def close(self) -> None:
        """Close the pooled connections and let the threads end."""
        await asyncio.to_thread(self.engine.dispose)
        self.executor.shutdown(wait=False)


async def _unless_cancelled(finishing: Awaitable[None], slot: asyncio.Semaphore) -> None:
    async def finish() -> None:
        try:
            await finishing
        except Exception:
            # The caller gets its own error; a connection that cannot roll back is
            # closed all the same and discarded by the pool.
            _log.warning("rolling back a SQLite transaction failed", exc_info=True)
        finally:
            slot.release()

    task = asyncio.ensure_future(finish())
    # The caller may be cancelled while waiting; the task still ends the transaction.
    await asyncio.wait([task])
