"""A unit of work on PostgreSQL: one transaction on one of the point connections.

Through SQLAlchemy's async engine a unit of work creating an order and its outbox event
costs ~950 µs of CPU where asyncpg needs ~360 µs for BEGIN, the two inserts and COMMIT:
the pool checkout in a greenlet, the adapted cursor per statement and the pool's reset on
return cost more than the statements. A unit of work therefore runs on a connection of
:class:`~._postgres_points.PostgresPoints`: BEGIN, its statements, COMMIT or ROLLBACK.

* Point statements (get, create, update, delete, delete_many of up to 256 ids) run as
  their SQL text, prepared once per connection by asyncpg's statement cache, as outside
  a unit of work.
* The other statements a repository builds with SQLAlchemy (a list page, a longer
  delete_many) are compiled by SQLAlchemy's asyncpg dialect (its parameters numbered
  and cast, an IN list expanded) and run on the same connection, in the same
  transaction.

A statement the server refuses leaves the connection usable (the transaction is aborted
and rolled back at the end). A statement interrupted midway (the task cancelled, the
connection lost) leaves it in an unknown state: it is closed instead of reused, which
ends its transaction on the server, and the unit of work raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from opentelemetry.trace import Span
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from .points import RawRows
from .spans import Server, client_span, sql_operation, sql_table

__all__ = [
    "FAILURES",
    "PostgresUnit",
    "as_dbapi_error",
    "ends_the_session",
    "rowcount",
    "statement_span",
]

#: What a failing statement may raise: server errors, asyncpg's own, the network.
FAILURES = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def ends_the_session(exc: BaseException) -> bool:
    """Whether server error ``exc`` ends the connection's session: the server is
    shutting down or restarting, or ended this backend (``pg_terminate_backend``), and
    closes the connection after it. Such a connection is not used again."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    # asyncpg's own "connection lost" errors carry class 08 too.
    return sqlstate.startswith(("57P", "08"))


def statement_span(
    span: tuple[str | None, Server | None], sql: str
) -> AbstractContextManager[Span | None]:
    """The CLIENT span of one PostgreSQL statement in database ``span[0]`` on ``span[1]``
    (callers skip it when tracing is off: no context manager on the fast path)."""
    namespace, server = span
    return client_span(
        "postgresql",
        sql_operation(sql),
        collection=sql_table(sql),
        namespace=namespace,
        server=server,
        query=sql,
    )


def rowcount(status: str) -> int:
    """The row count of a command status: "INSERT 0 1", "UPDATE 1", "DELETE 0"."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


def as_dbapi_error(sql: str, exc: BaseException, connection: Any) -> BaseException:
    """``exc`` as the storage's statements raise it: SQLAlchemy's DBAPIError, no parameters.

    ``connection`` None or closed: the storage's "connection lost".
    """
    lost = connection is None or connection.is_closed()
    return DBAPIError.instance(
        sql,
        None,
        exc,
        Exception,
        hide_parameters=True,
        connection_invalidated=lost,
    )


class _Result:
    """A compiled statement's rows (as tuples) and row count, as repositories read them."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[tuple[Any, ...]], count: int) -> None:
        self._rows = rows
        self.rowcount = count

    def all(self) -> Sequence[tuple[Any, ...]]:
        """Every row."""
        return self._rows


class PostgresUnit:
    """The statements of one transaction, on ``connection`` (BEGIN already sent).

    ``dialect``: SQLAlchemy's asyncpg dialect, to compile built statements.
    ``span``: with tracing on, the database name and server of statements' spans.
    """

    def __init__(
        self,
        connection: Any,
        dialect: Dialect,
        span: tuple[str | None, Server | None] | None,
    ) -> None:
        self._connection = connection
        self._dialect = dialect
        self._span = span
        #: Whether a statement was interrupted midway: the connection must not be reused.
        self.interrupted = False

    async def execute_raw(self, sql: str, params: Sequence[Any]) -> RawRows:
        """Run a point statement (see ``points``): its rows (a SELECT) or row count."""
        reads = sql.startswith("SELECT")
        if reads:
            rows = await self._run(sql, params, fetch=True)
            return RawRows(rows, len(rows))
        return RawRows((), rowcount(await self._run(sql, params, fetch=False)))

    async def execute(self, statement: Executable) -> _Result:
        """Run a statement built with SQLAlchemy: its rows as tuples, or its row count."""
        if not isinstance(statement, ClauseElement):
            raise TypeError(f"cannot run {type(statement).__name__} in a unit of work")
        # render_postcompile: an IN list becomes one numbered parameter per value.
        compiled = statement.compile(
            dialect=self._dialect, compile_kwargs={"render_postcompile": True}
        )
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"cannot run {type(statement).__name__} in a unit of work")
        values = compiled.construct_params()
        processors = compiled._bind_processors
        params = []
        for name in compiled.positiontup or ():
            value = values[name]
            process = processors.get(name)
            # A sequence of processors is a tuple type's, which no repository statement binds.
            params.append(process(value) if callable(process) else value)
        sql = compiled.string
        if not (compiled.isdelete or compiled.isinsert or compiled.isupdate):
            rows = await self._run(sql, params, fetch=True)
            return _Result([tuple(row) for row in rows], len(rows))
        return _Result((), rowcount(await self._run(sql, params, fetch=False)))

    async def _run(self, sql: str, params: Sequence[Any], *, fetch: bool) -> Any:
        if self._span is None:
            return await self._statement(sql, params, fetch)
        with statement_span(self._span, sql):
            return await self._statement(sql, params, fetch)

    async def _statement(self, sql: str, params: Sequence[Any], fetch: bool) -> Any:
        if self.interrupted:
            raise RuntimeError("this unit of work's connection was interrupted")
        connection = self._connection
        try:
            if fetch:
                return await connection.fetch(sql, *params)
            return await connection.execute(sql, *params)
        except asyncpg.PostgresError as exc:
            # The server refused it: the connection is fine, its transaction aborted.
            raise as_dbapi_error(sql, exc, connection) from exc
        except BaseException as exc:
            # Lost, or interrupted mid-statement (cancelled): not used again.
            self.interrupted = True
            if isinstance(exc, FAILURES):
                raise as_dbapi_error(sql, exc, connection) from exc
            raise
