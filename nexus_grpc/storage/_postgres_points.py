"""Point statements and units of work on PostgreSQL: asyncpg connections of their own.

Through SQLAlchemy's async engine one point read costs ~500 µs of CPU (pool checkout in
a greenlet, BEGIN, the adapted cursor, COMMIT, the pool's reset); asyncpg itself needs
~70 µs for the same prepared statement. A point statement outside a unit of work is its
own transaction, which PostgreSQL gives a lone statement anyway (autocommit), so it
runs here on a few asyncpg connections of its own: each statement prepared once per
connection (asyncpg's statement cache) and no BEGIN or COMMIT round trips. Concurrent
reads by id share statements under load (see ``_postgres_reads``).

These connections only ever run these statements, one at a time: they change no
session state (no SET, LISTEN or advisory lock), so one goes back to the idle list as
it is (asyncpg's pool would run a four-statement reset and a task per release). One
whose connection was lost mid-statement is dropped. One whose caller was cancelled
mid-statement is closed politely by a task that keeps the caller's slot: asyncpg sends
PostgreSQL a CancelRequest, and the close waits for the server to acknowledge it, so a
cancelled write never commits later behind the caller's back and the server never runs
more point statements than there are slots.
A unit of work takes one of them for its transaction (see ``_postgres_units``) and
leaves it outside any transaction when it gives it back; one interrupted mid-unit is
closed, and the server rolls its transaction back (no COMMIT was sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import Dialect

from ._postgres_reads import BatchedReads, batched_form
from ._postgres_units import FAILURES as _FAILURES
from ._postgres_units import (
    PostgresUnit,
    as_dbapi_error,
    ends_the_session,
    rowcount,
    statement_span,
)
from .points import RawRows
from .spans import Server

__all__ = ["PostgresPoints", "asyncpg_connect_args"]

_log = logging.getLogger("nexus.storage")

#: Connections for point statements at most (opened on demand).
_MAX_SIZE = 10
#: Units of work open at once at most (SQLAlchemy's default pool allowed 5 + 10). Their
#: own limit, not the point statements': a unit of work whose body runs a point statement
#: outside it must never wait for a slot that only units of work hold.
_MAX_UNITS = 15
#: Seconds close() waits for a connection to close politely.
_CLOSE_WAIT = 5.0
#: Seconds a cancelled statement's connection waits for the server to acknowledge the
#: cancel before its backend is ended from another connection.
_CANCEL_WAIT = 1.0


#: Options of SQLAlchemy's asyncpg dialect, not of ``asyncpg.connect``: a database URL
#: may carry them for the engine (``?prepared_statement_cache_size=0`` behind PgBouncer).
_DIALECT_ONLY = (
    "async_creator_fn",
    "async_fallback",
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
)


def asyncpg_connect_args(dialect_args: Mapping[str, Any]) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for the connect arguments SQLAlchemy's
    asyncpg dialect derives from a URL: its own options removed, and its statement cache
    size carried over to asyncpg's (0: no named prepared statements, as PgBouncer in
    transaction mode needs) unless ``statement_cache_size`` is given itself."""
    args = {name: value for name, value in dialect_args.items() if name not in _DIALECT_ONLY}
    size = dialect_args.get("prepared_statement_cache_size")
    if size is not None and "statement_cache_size" not in args:
        try:
            args["statement_cache_size"] = int(size)
        except (TypeError, ValueError):
            raise ValueError(
                f"prepared_statement_cache_size must be a whole number, got {size!r}"
            ) from None
    return args


class PostgresPoints:
    """Connections for point statements, connected with ``connect_kwargs``.

    ``span``: with tracing on, the database name and server of statements' spans.
    """

    def __init__(
        self,
        connect_kwargs: Mapping[str, Any],
        *,
        span: tuple[str | None, Server | None] | None = None,
    ) -> None:
        self._kwargs = dict(connect_kwargs)
        self._span = span
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(_MAX_SIZE)
        self._unit_slots = asyncio.Semaphore(_MAX_UNITS)
        # Tasks closing connections whose statement was cancelled (strong references).
        self._retiring: set[asyncio.Task[None]] = set()
        self._reads = BatchedReads(self._read)
        self._closed = False

    async def run(self, sql: str, params: Sequence[Any], *, write: bool) -> RawRows:
        """Run ``sql`` as a transaction of its own: its rows (a read) or row count.

        A point read by id may share its statement with concurrent ones (see
        ``_postgres_reads``). Failures come as SQLAlchemy's DBAPIError around the
        driver's (parameters hidden), as the engine's statements raise them.
        """
        if self._span is None:
            return await self._statement(sql, params, write)
        # A shared read's span is its caller's wait for the statement that served it.
        with statement_span(self._span, sql):
            return await self._statement(sql, params, write)

    async def _statement(self, sql: str, params: Sequence[Any], write: bool) -> RawRows:
        batched_sql = None if write else batched_form(sql)
        if batched_sql is None:
            return await self._run(sql, params, write)
        return await self._reads.read(sql, batched_sql, params)

    async def _read(self, sql: str, params: Sequence[Any]) -> RawRows:
        return await self._run(sql, params, False, again=True)

    async def _run(
        self, sql: str, params: Sequence[Any], write: bool, *, again: bool = False
    ) -> RawRows:
        """``sql``'s rows or row count; ``again``: a plain read, which may be sent twice."""
        await self._slots.acquire()
        # Whether the slot went to a task retiring a cancelled statement's connection.
        handed_over = False
        try:
            if self._closed:
                raise RuntimeError("the storage is closed")
            connection = None
            try:
                connection = self._take_idle()
                # At most two tries: the second only for a plain read (``again``) whose
                # idle connection the server had ended (a restart, its backend
                # terminated) before this process read the end of its stream.
                for fresh in (connection is None, True):
                    if fresh:
                        connection = await self._connect()
                    try:
                        if write:
                            status = await connection.execute(sql, *params)
                            result = RawRows((), rowcount(status))
                        else:
                            rows = await connection.fetch(sql, *params)
                            result = RawRows(rows, len(rows))
                        break
                    except asyncpg.PostgresError as exc:
                        if not ends_the_session(exc):
                            # The server refused the statement: the connection is fine.
                            self._give_back(connection)
                            raise
                        # Ended by the server: reused, it would fail the next statement.
                        connection.terminate()
                        if fresh or not again:
                            raise
                    except asyncio.CancelledError:
                        # asyncpg has sent (or is sending) PostgreSQL a CancelRequest
                        # from a task of its own; terminate() would cancel that task and
                        # leave the server running (and committing) the statement.
                        # Closing politely waits for the server to acknowledge the
                        # cancel first; the slot is held until then, so the server never
                        # runs more than _MAX_SIZE.
                        handed_over = self._retire(connection)
                        raise
                    except BaseException as exc:
                        # Lost, or interrupted mid-statement otherwise: not used again.
                        connection.terminate()
                        # Not a timeout or a network error: those would come again.
                        ended = isinstance(
                            exc, asyncpg.InterfaceError | asyncpg.InternalClientError
                        )
                        if fresh or not again or not ended:
                            raise
            except _FAILURES as exc:
                # Not connected, or the connection is gone: the storage's "connection lost".
                raise as_dbapi_error(sql, exc, connection) from exc
            self._give_back(connection)
            return result
        finally:
            if not handed_over:
                self._slots.release()

    def _retire(self, connection: Any) -> bool:
        """Close ``connection`` (its statement cancelled) in a task that then frees the
        caller's slot; whether there was one to start."""
        if connection.is_closed():
            return False

        pid = connection.get_server_pid()

        async def retire() -> None:
            try:
                with contextlib.suppress(*_FAILURES):  # close() aborts it when it fails
                    await connection.close(timeout=_CANCEL_WAIT)
                await self._end_backend(pid)
            finally:
                self._slots.release()

        # A context of its own: the cancelled caller's trace has ended.
        task = asyncio.get_running_loop().create_task(
            retire(), name="nexus-postgres-retire", context=contextvars.Context()
        )
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    async def _end_backend(self, pid: int) -> None:
        """End the server process ``pid`` if it is still running a statement.

        A cancel request travels on a connection of its own and may reach the server
        before the statement does; the server drops a cancel that finds its process
        between statements, and then runs the statement the closed connection had
        already sent (waiting for a lock, say). Ending the process rolls it back.
        """
        # Whatever its state: one still reading the statement shows as idle. Its
        # connection is closed, so it has nothing else to do.
        end = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 "
            "AND usename = current_user AND datname = current_database()"
        )
        present = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
        other = None
        try:
            async with asyncio.timeout(_CLOSE_WAIT):
                other = self._take_idle() or await self._connect()
                await other.execute(end, pid)
                # Gone once it has rolled back (a bounded wait: the timeout above).
                while await other.fetchval(present, pid):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        except (*_FAILURES, TimeoutError):
            _log.warning("could not end the PostgreSQL process %d of a cancelled statement", pid)
        if other is not None:
            self._give_back(other)

    @asynccontextmanager
    async def transaction(self, dialect: Dialect) -> AsyncIterator[PostgresUnit]:
        """A unit of work's transaction on one of these connections (see ``_postgres_units``).

        COMMIT on normal exit, else ROLLBACK. A connection whose transaction cannot be
        ended cleanly (a statement or the ending interrupted, cancelled meanwhile, the
        connection lost) is closed, which rolls the transaction back on the server.
        """
        async with self._unit_slots:
            if self._closed:
                raise RuntimeError("the storage is closed")
            connection = None
            try:
                connection = self._take_idle() or await self._connect()
                await connection.execute("BEGIN")
            except BaseException as exc:
                if connection is not None:
                    connection.terminate()
                if isinstance(exc, _FAILURES):
                    raise as_dbapi_error("BEGIN", exc, connection) from exc
                raise
            unit = PostgresUnit(connection, dialect, self._span)
            try:
                yield unit
            except Exception:
                await self._end(unit, connection, "ROLLBACK", reraise=False)
                raise
            except BaseException:
                # Cancelled (or the process stopping): no further round trip.
                unit.interrupted = True
                connection.terminate()
                raise
            await self._end(unit, connection, "COMMIT", reraise=True)

    async def _end(
        self, unit: PostgresUnit, connection: Any, command: str, *, reraise: bool
    ) -> None:
        if unit.interrupted:
            connection.terminate()
            return
        unit.interrupted = True  # no statement after the end
        try:
            await connection.execute(command)
        except BaseException as exc:
            # Whatever happened, the transaction's state is unknown: close the connection.
            connection.terminate()
            if not reraise and isinstance(exc, Exception):
                return  # the body's own error is the one that matters
            if isinstance(exc, _FAILURES):
                raise as_dbapi_error(command, exc, connection) from exc
            raise
        self._give_back(connection)

    def _take_idle(self) -> Any:
        # One the server closed while idle (a restart, a terminated backend) is dropped:
        # asyncpg has seen its end of stream by now.
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_closed():
                return connection
            connection.terminate()
        return None

    async def _connect(self) -> Any:
        return await asyncpg.connect(**self._kwargs)

    def _give_back(self, connection: Any) -> None:
        if self._closed or connection.is_closed():
            connection.terminate()
        else:
            self._idle.append(connection)

    async def close(self) -> None:
        """Close the idle connections; those in use close when their statement ends."""
        self._closed = True
        # Shared reads not sent yet fail now; those sent end as other statements in use.
        self._reads.close()
        if self._retiring:
            # Cancelled statements' connections: closing, each within _CLOSE_WAIT.
            await asyncio.wait(set(self._retiring))
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await connection.close()
            except (*_FAILURES, TimeoutError):
                connection.terminate()
