"""Connecting to SQLite or PostgreSQL, creating the schema, and running transactions.

SQLite needs care to behave like a server database under concurrency:

* WAL journal so readers never block the writer, and a busy timeout so a second
  writer waits for the first instead of failing at once;
* the sqlite3 driver's own transaction handling is switched off and this module emits
  BEGIN itself: ``BEGIN IMMEDIATE`` (take the write lock up front) for anything that
  may write, so a transaction that reads and then writes can never fail half-way with
  "database is locked" when upgrading its lock; plain (deferred) BEGIN for reads;
* SQLAlchemy's synchronous engine runs on threads of our own, a whole step per thread
  switch, rather than its async engine over aiosqlite; writers of one process take
  turns before BEGIN IMMEDIATE instead of sleeping in SQLite's busy handler (see
  ``_sqlite``). The busy timeout still covers writers in other processes.

PostgreSQL goes through SQLAlchemy's async engine on asyncpg.

Both engines hide bound parameters (``hide_parameters``): a failing INSERT would
otherwise put a user's document (a password record's hash) into the exception text
and the log. Infrastructure failures become StorageUnavailableError (see ``faults``).
The SQLite file and its ``-wal``/``-shm`` siblings are created owner-only (0600): they
hold every plugin's data. A directory the host creates for them is 0700; an existing one
is left as it is, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, and_, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from nexus_grpc import tracing
from nexus_grpc.errors import STORAGE_BUSY, ConflictError
from nexus_grpc.urls import mask_url

from ._postgres_points import PostgresPoints, asyncpg_connect_args
from ._postgres_units import PostgresUnit
from ._sqlite import GROUP_COMMIT_UNITS, SqliteConnection, SqliteDriver
from ._sqlite_units import SqliteUnit
from .faults import StorageHealth, StorageUnavailableError, os_cause, postgres_cause, sqlite_cause
from .files import prepare_sqlite_files
from .points import RawRows
from .schema import metadata, records
from .spans import instrument_sql_engine
from .sql import SqlDialect, dialect_for

__all__ = [
    "Database",
    "ScopeConnection",
    "SqlConnection",
    "execute_point",
    "raise_if_translated",
    "translate_errors",
]

#: A connection in a transaction, as repositories use it: ``await conn.execute(stmt)``.
SqlConnection = AsyncConnection | SqliteConnection
#: What a repository's statements run on: a unit of work's is a PostgresUnit or SqliteUnit.
ScopeConnection = SqlConnection | PostgresUnit | SqliteUnit

#: Transactions open at once on SQLite, and threads running their statements.
_SQLITE_POOL_SIZE = 8

#: Execution option naming the SQLite BEGIN flavour of a connection's next transaction.
_SQLITE_BEGIN = "nexus_sqlite_begin"

#: Tries of the schema creation when the database is busy (0.05 s, doubling, between).
_SCHEMA_ATTEMPTS = 5
#: Key of the PostgreSQL advisory lock serialising schema creation across processes.
_SCHEMA_LOCK_KEY = 0x6E657875_73000001  # "nexus" + 1, any constant unique to this table

#: SQLSTATEs of PostgreSQL failures a retry can cure: serialization failure, deadlock,
#: lock not available.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})

#: The row the health probe rewrites: a namespace of the host's own, out of plugins' reach.
PROBE_NAMESPACE, PROBE_COLLECTION, PROBE_ID = "core/health", "nexus.storage.probe", "probe"

_log = logging.getLogger("nexus.storage")

T = TypeVar("T")


class Database:
    """A SQLAlchemy engine (SQLite or PostgreSQL) plus what the storage needs to know
    about its backend."""

    def __init__(
        self,
        dialect: SqlDialect,
        *,
        engine: AsyncEngine | None = None,
        sqlite: SqliteDriver | None = None,
        postgres_points: PostgresPoints | None = None,
    ) -> None:
        self.dialect = dialect
        self._engine = engine
        self._sqlite = sqlite
        self._postgres_points = postgres_points
        self._closed = False
        #: Infrastructure failures seen, and whether the database works.
        self.health = StorageHealth(self.probe)

    @classmethod
    async def open(
        cls,
        url: str | URL,
        *,
        sqlite_busy_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        sqlite_group_commit_units: int = GROUP_COMMIT_UNITS,
    ) -> Database:
        """Create the engine for ``url`` (no connection is made yet).

        ``connect_timeout``: seconds a PostgreSQL connect may take (asyncpg waits 60 by
        default: an unreachable server would hold every call past its deadline instead
        of failing UNAVAILABLE); a ``timeout`` in the URL wins.
        ``sqlite_group_commit_units``: units of work sharing one SQLite COMMIT at most.
        """
        if sqlite_group_commit_units < 1:
            raise ValueError(
                f"group_commit_units must be 1 or more, got {sqlite_group_commit_units}"
            )
        parsed = _normalise_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            assert parsed.database  # checked by _normalise_url
            if not parsed.query.get("uri"):
                await asyncio.to_thread(prepare_sqlite_files, parsed.database)
            # Connections move between the driver's threads, one step at a time.
            connect_args = {"timeout": sqlite_busy_timeout, "check_same_thread": False}
            engine = create_engine(
                parsed,
                hide_parameters=True,
                connect_args=connect_args,
                # One more: units of work keep one checked out between units (see
                # ``_sqlite_units``) beside the transactions' own.
                pool_size=_SQLITE_POOL_SIZE + 1,
                max_overflow=0,
            )
            busy_timeout_ms = round(sqlite_busy_timeout * 1000)
            _configure_sqlite(engine, busy_timeout_ms=busy_timeout_ms)
            traced = tracing.enabled()
            name = os.path.basename(parsed.database)
            if traced:
                instrument_sql_engine(engine, system="sqlite", namespace=name, server=None)
            cargs, cparams = engine.dialect.create_connect_args(parsed)
            cparams.update(connect_args)

            def connect() -> sqlite3.Connection:
                connection: sqlite3.Connection = sqlite3.connect(*cargs, **cparams)  # type: ignore[call-overload]
                _configure_connection(connection, busy_timeout_ms=busy_timeout_ms)
                return connection

            driver = SqliteDriver(
                engine,
                connect=connect,
                pool_size=_SQLITE_POOL_SIZE,
                write_timeout=sqlite_busy_timeout,
                busy_timeout_ms=busy_timeout_ms,
                carry_context=traced,
                span_namespace=name if traced else None,
                group_commit_units=sqlite_group_commit_units,
            )
            return cls(dialect_for(backend), sqlite=driver)
        connect_args = {} if "timeout" in parsed.query else {"timeout": connect_timeout}
        pg = create_async_engine(parsed, hide_parameters=True, connect_args=connect_args)
        # No host: a Unix socket (named in the query), not a network server.
        server = (parsed.host, parsed.port or 5432) if parsed.host else None
        traced = tracing.enabled()
        if traced:
            instrument_sql_engine(
                pg.sync_engine, system="postgresql", namespace=parsed.database, server=server
            )
        _, kwargs = pg.dialect.create_connect_args(parsed)
        points = PostgresPoints(
            asyncpg_connect_args({**kwargs, **connect_args}),
            span=(parsed.database, server) if traced else None,
        )
        return cls(dialect_for(backend), engine=pg, postgres_points=points)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Close every pooled connection; the Database cannot be used afterwards."""
        self._closed = True
        if self._sqlite is not None:
            await self._sqlite.close()
        if self._postgres_points is not None:
            await self._postgres_points.close()
        if self._engine is not None:
            await self._engine.dispose()

    async def create_schema(self) -> None:
        """Create the table if missing; safe when several processes do it at once."""
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                await self._create_schema_once()
                return
            except ConflictError as error:
                # Processes starting together on a new SQLite file contend for its first
                # write (and the switch to WAL), which SQLite may refuse at once rather
                # than wait for: take turns instead of failing the start.
                if error.reason != STORAGE_BUSY or attempt == _SCHEMA_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)

    async def _create_schema_once(self) -> None:
        async with self.transaction(write=True) as conn:
            if self.dialect.name == "postgresql":
                # CREATE TABLE IF NOT EXISTS still races on PostgreSQL's catalogs (unique
                # violation on pg_type); a transaction-scoped advisory lock serialises the
                # check-and-create. On SQLite, BEGIN IMMEDIATE already does.
                lock = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_SCHEMA_LOCK_KEY)
                await conn.execute(lock)
            await conn.run_sync(metadata.create_all, checkfirst=True)

    @asynccontextmanager
    async def transaction(
        self, *, write: bool, statement_each: bool = False
    ) -> AsyncIterator[SqlConnection]:
        """A connection in a fresh transaction: commit on normal exit, else rollback.

        ``write`` False lets SQLite readers run beside a writer; on PostgreSQL it makes
        no difference. ``statement_each`` lets SQLite commit each statement on its own
        (cheaper: see ``_sqlite``), for callers whose statements need no common snapshot.
        """
        if self._closed:
            raise RuntimeError("the storage is closed")
        if self._sqlite is None:
            assert self._engine is not None
            with translate_errors(self.health):
                pg = await self._connect_postgres()
                try:
                    async with pg.begin():
                        yield pg
                finally:
                    await pg.close()
            return
        options = {} if write else {_SQLITE_BEGIN: "DEFERRED"}
        with translate_errors(self.health):
            async with self._sqlite.transaction(
                write=write, autocommit=statement_each, **options
            ) as conn:
                yield conn

    def unit(self) -> AbstractAsyncContextManager[ScopeConnection]:
        """A unit of work's transaction: commit on normal exit, else rollback.

        PostgreSQL: on a point connection, statements straight on asyncpg (see
        ``_postgres_units``); SQLite: on a sqlite3 connection (see ``_sqlite_units``).
        """
        if self._closed:
            raise RuntimeError("the storage is closed")
        unit: AbstractAsyncContextManager[ScopeConnection]
        if self._sqlite is not None:
            unit = self._sqlite.unit()
        else:
            assert self._engine is not None and self._postgres_points is not None
            unit = self._postgres_points.transaction(self._engine.dialect)
        return _TranslatedErrors(unit, self.health)

    async def read_point(self, sql: str, params: Sequence[Any]) -> RawRows:
        """Run a point read (see ``points``) as a transaction of its own.

        SQLite: on the loop's thread when no lock stands in the way (see
        ``_sqlite_points``); PostgreSQL: an asyncpg prepared statement (see
        ``_postgres_points``).
        """
        if self._closed:
            raise RuntimeError("the storage is closed")
        with translate_errors(self.health):
            if self._postgres_points is not None:
                return await self._postgres_points.run(sql, params, write=False)
            if self._sqlite is not None:
                rows = await self._sqlite.points.read_now(sql, params)
                if rows is not None:
                    return rows
        async with self.transaction(write=False, statement_each=True) as conn:
            return await execute_point(conn, sql, params)

    async def write_point(self, sql: str, params: Sequence[Any]) -> RawRows:
        """Run a point write (see ``points``) as a transaction of its own."""
        if self._closed:
            raise RuntimeError("the storage is closed")
        with translate_errors(self.health):
            if self._postgres_points is not None:
                return await self._postgres_points.run(sql, params, write=True)
            assert self._sqlite is not None
            return await self._sqlite.write_point(sql, params)

    async def _connect_postgres(self) -> AsyncConnection:
        assert self._engine is not None
        try:
            return await self._engine.connect().start()
        except OSError as exc:
            # asyncpg's connect errors (refused, reset, unreachable) arrive unwrapped.
            # Only here: an OSError of a transaction's body is the body's own.
            cause = os_cause(exc)
            if cause is None:
                raise
            raise _unavailable(self.health, cause) from None

    async def probe(self) -> None:
        """A cheap write and read: rewrite the probe row in one transaction.

        A write, not a ping: a read-only or full database still answers reads.
        """
        key = and_(
            records.c.namespace == PROBE_NAMESPACE,
            records.c.collection == PROBE_COLLECTION,
            records.c.id == PROBE_ID,
        )
        now = datetime.now(UTC)
        row = self.dialect.insert().values(
            namespace=PROBE_NAMESPACE,
            collection=PROBE_COLLECTION,
            id=PROBE_ID,
            payload=now.isoformat().encode(),
            index_doc={},
            version=1,
            created_at=now,
            updated_at=now,
        )
        async with self.transaction(write=True) as conn:
            await conn.execute(records.delete().where(key))
            await conn.execute(row)


async def execute_point(conn: ScopeConnection, sql: str, params: Sequence[Any]) -> RawRows:
    """Run a point statement's ``sql`` on ``conn``, in its transaction."""
    if isinstance(conn, SqliteConnection | PostgresUnit | SqliteUnit):
        return await conn.execute_raw(sql, params)
    result = await conn.exec_driver_sql(sql, tuple(params))
    rows = [tuple(row) for row in result.all()] if result.returns_rows else []
    return RawRows(rows, result.rowcount)


def _normalise_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {mask_url(url)!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            # Each pooled connection would see its own empty database (or all share one
            # connection and one transaction): neither gives the isolation promised here.
            raise ValueError("in-memory SQLite is not supported; give a file path")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(
        f"unsupported database {backend!r}: use sqlite (sqlite:///path) or postgresql+asyncpg"
    )


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        _configure_connection(dbapi_connection, busy_timeout_ms=busy_timeout_ms)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            return  # begun on the loop's thread already (see _sqlite_points.begin_now)
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _configure_connection(dbapi_connection: sqlite3.Connection, *, busy_timeout_ms: int) -> None:
    # Stop the driver from emitting BEGIN (and COMMIT before DDL) on its own.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL itself may have to wait for a lock.
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        (mode,) = cursor.fetchone()
        if str(mode).lower() != "wal":
            # SQLite keeps its journal mode where WAL cannot work (a VFS or file system
            # without shared memory). Without WAL readers block the writer and COMMIT
            # waits for locks, where nexus runs commits on the loop's thread that must
            # not wait: refused rather than run as conflicts under load.
            raise sqlite3.OperationalError(
                f"SQLite kept the journal mode {mode!r}: nexus needs WAL, which this "
                "database's file system or VFS does not support (it needs shared memory "
                "beside the file: use a local file system)"
            )
        # NORMAL is durable in WAL mode except for the last commits on power loss.
        cursor.execute("PRAGMA synchronous = NORMAL")
        # Commits may run on the event loop's thread: checkpoints run on a thread of
        # their own instead (see ``_sqlite_points``).
        cursor.execute("PRAGMA wal_autocheckpoint = 0")
    finally:
        cursor.close()


@contextmanager
def translate_errors(health: StorageHealth | None = None) -> Iterator[None]:
    """Turn lock timeouts, deadlocks and serialization failures into ConflictError, and
    infrastructure failures into StorageUnavailableError (reported to ``health``)."""
    try:
        yield
    except DBAPIError as exc:
        raise_if_translated(exc, health)
        raise


class _TranslatedErrors(Generic[T]):
    """``inner`` with the errors of entering it, of its body and of leaving it
    translated as by :func:`translate_errors`. A class, not a generator, as it wraps
    every unit of work (a generator-based context manager costs a few µs more)."""

    __slots__ = ("_health", "_inner")

    def __init__(self, inner: AbstractAsyncContextManager[T], health: StorageHealth) -> None:
        self._inner = inner
        self._health = health

    async def __aenter__(self) -> T:
        try:
            return await self._inner.__aenter__()
        except DBAPIError as exc:
            raise_if_translated(exc, self._health)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            suppressed = await self._inner.__aexit__(exc_type, exc, traceback)
        except DBAPIError as error:
            raise_if_translated(error, self._health)
            raise
        if not suppressed and isinstance(exc, DBAPIError):
            raise_if_translated(exc, self._health)
        return bool(suppressed)


def raise_if_translated(exc: DBAPIError, health: StorageHealth | None) -> None:
    """Raise what :func:`translate_errors` turns ``exc`` into, if anything; the caller
    re-raises ``exc`` itself (a bare ``raise``) when this returns. For callers on a hot
    path, where a ``try`` costs less than the context manager."""
    conflict = _conflict_for(exc)
    if conflict is not None:
        raise conflict from exc
    cause = _unavailable_cause(exc)
    if cause is not None:
        # "from None": the driver's error (its text holds the SQL) is not shown with
        # this one in a logged traceback; the cause says what went wrong.
        raise _unavailable(health, cause) from None


def _unavailable(health: StorageHealth | None, cause: str) -> StorageUnavailableError:
    if health is not None:
        health.report(cause)
    return StorageUnavailableError(cause)


def _unavailable_cause(exc: DBAPIError) -> str | None:
    if isinstance(exc.orig, sqlite3.Error):
        return sqlite_cause(exc.orig)
    if exc.connection_invalidated:
        return "connection lost"
    return postgres_cause(exc.orig) if exc.orig is not None else None


def _conflict_for(exc: DBAPIError) -> ConflictError | None:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return ConflictError("the operation collided with a concurrent change; retry it")
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
        return ConflictError(
            "the database is busy with another write; retry it", reason=STORAGE_BUSY
        )
    return None
