"""Namespaces (the isolation boundary) and units of work (one transaction each).

Namespace and UnitOfWork are the same classes on every database: what differs is the
:class:`Backend` underneath, which hands out a :class:`RepositoryScope` per namespace
(each call its own transaction) or per transaction. :class:`SqlBackend` is SQLite and
PostgreSQL; ``mongo.MongoBackend`` is MongoDB.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from ._sqlite import GROUP_COMMIT_UNITS
from .declared import BuiltIndex, IndexChanges
from .engine import (
    Database,
    ScopeConnection,
    SqlConnection,
    execute_point,
    raise_if_translated,
    translate_errors,
)
from .faults import StorageHealth
from .indexes import (
    apply_sql_indexes,
    drop_retired_sql_indexes,
    list_sql_indexes,
    retire_sql_indexes,
)
from .points import Point, RawRows
from .repository import M, Repository, check_id_field
from .schema import MAX_KEY_LENGTH
from .sql import SqlDialect

__all__ = [
    "Backend",
    "Namespace",
    "RepositoryScope",
    "SqlBackend",
    "UnitOfWork",
    "validate_namespace",
]

_log = logging.getLogger("nexus.storage")

_SEGMENT = re.compile(r"[a-z0-9_-]+")


def validate_namespace(name: str) -> str:
    """``name`` if it is "/"-separated segments of ``[a-z0-9_-]+``, else ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"namespace must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError("namespace must not be empty")
    if len(name) > MAX_KEY_LENGTH:
        raise ValueError(f"namespace {name[:40]!r}... is longer than {MAX_KEY_LENGTH} characters")
    for position, segment in enumerate(name.split("/"), start=1):
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid namespace {name!r}: segment {position} ({segment!r}) must be "
                "one or more of a-z, 0-9, '_' and '-'"
            )
    return name


def _collection_name(message_type: type[Message], collection: str | None) -> str:
    name = message_type.DESCRIPTOR.full_name if collection is None else collection
    if not isinstance(name, str) or not name or len(name) > MAX_KEY_LENGTH:
        raise ValueError(f"collection must be 1 to {MAX_KEY_LENGTH} characters, got {name!r}")
    return name


class RepositoryScope(Protocol):
    """One namespace of one backend, in a transaction of its own per call or in one."""

    @property
    def namespace(self) -> str:
        """The namespace every record read or written belongs to."""
        ...

    @property
    def active(self) -> bool:
        """Whether repositories may still be used (False once a transaction ended)."""
        ...

    def repository(self, message_type: type[M], *, collection: str, id_field: str) -> Repository[M]:
        """The backend's repository; the arguments are already validated."""
        ...


class Backend(Protocol):
    """A connected database: what :class:`Storage` and :class:`Namespace` run on."""

    @property
    def name(self) -> str:
        """The backend's name: ``"sqlite"``, ``"postgresql"`` or ``"mongodb"``."""
        ...

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        ...

    @property
    def health(self) -> StorageHealth:
        """Infrastructure failures seen, and whether the database works."""
        ...

    async def probe(self) -> None:
        """A cheap write and read; raises StorageUnavailableError when it fails."""
        ...

    async def close(self) -> None:
        """Release every connection; idempotent."""
        ...

    async def apply_indexes(
        self, types: Sequence[Descriptor], *, drop_delay: float
    ) -> IndexChanges:
        """Build the indexes ``types`` declare; retire those they stopped declaring and
        drop them once retired for ``drop_delay`` seconds."""
        ...

    async def drop_retired_indexes(
        self, *, drop_delay: float, declared: Sequence[Descriptor]
    ) -> IndexChanges:
        """Drop the indexes retired for ``drop_delay`` seconds or more, but those the
        ``declared`` types declare."""
        ...

    async def list_indexes(self) -> list[BuiltIndex]:
        """The indexes nexus built and recorded, and the retired ones."""
        ...

    async def retire_indexes(self, message_type: str, *, drop_delay: float) -> IndexChanges:
        """Retire the indexes built for ``message_type`` (dropped after ``drop_delay``)."""
        ...

    def scope(self, namespace: str) -> RepositoryScope:
        """Repositories of ``namespace`` whose every call is its own transaction."""
        ...

    def transaction(self, namespace: str) -> AbstractAsyncContextManager[RepositoryScope]:
        """One transaction: committed on normal exit, rolled back on exception."""
        ...


def _new_repository(
    scope: RepositoryScope,
    message_type: type[M],
    collection: str | None,
    id_field: str,
) -> Repository[M]:
    if not (isinstance(message_type, type) and issubclass(message_type, Message)):
        raise TypeError(f"expected a protobuf message class, got {message_type!r}")
    check_id_field(message_type, id_field)
    return scope.repository(
        message_type, collection=_collection_name(message_type, collection), id_field=id_field
    )


# The scopes are private objects rather than methods of Namespace / UnitOfWork so that
# nothing handed to application code exposes a raw connection: all SQL goes through
# repositories, which always filter on the scope's namespace.


class _AutocommitScope:
    """Outside a unit of work: every repository operation is its own transaction (on
    SQLite, every statement of it)."""

    def __init__(self, database: Database, namespace: str) -> None:
        self._database = database
        self.namespace = namespace
        self.dialect = database.dialect
        self.in_transaction = False
        self.active = True

    @asynccontextmanager
    async def connection(self, *, write: bool) -> AsyncIterator[SqlConnection]:
        # A repository operation's statements need no common snapshot (an update's
        # second statement only tells a missing record from a conflict).
        async with self._database.transaction(write=write, statement_each=True) as conn:
            yield conn

    async def run_point(
        self, sql: str, params: Sequence[Any], *, write: bool, or_else: Point | None = None
    ) -> RawRows:
        if not write:
            return await self._database.read_point(sql, params)
        if or_else is None:
            return await self._database.write_point(sql, params)
        # The read must see what the write saw: read in a second transaction, another
        # writer's change could come between them (a conflict reported as not found, or
        # the other way round).
        if self.dialect.name == "postgresql":
            # One statement, one snapshot: the write and the stored row it was checked
            # against (an asyncpg point statement like any other; it returns rows).
            sql = _with_read(sql, or_else[0])
            both = await self._database.read_point(sql, params)
            changed, stored = both.rows[0]
            return RawRows([] if stored is None else [(stored,)], int(changed is not None))
        # SQLite: both in one write transaction (this process's write turn, and the
        # database's write lock against the others), driven on the sqlite3 connection
        # as a unit of work's (see ``_sqlite_units``).
        async with self._database.unit() as conn:
            done = await execute_point(conn, sql, params)
            if done.rowcount:
                return done
            found = await execute_point(conn, *or_else)
        return RawRows(found.rows, done.rowcount)

    def repository(self, message_type: type[M], *, collection: str, id_field: str) -> Repository[M]:
        return Repository(self, message_type, collection=collection, id_field=id_field)


def _with_read(write: str, read: str) -> str:
    """PostgreSQL: the point ``write`` and the point ``read`` (of one column, on the same
    key) as one statement returning (the written row's first returned column or NULL,
    the read's column or NULL). The read takes the write's key parameters: the write
    binds namespace, collection and id as $4, $5 and $6 (see ``points``)."""
    key = read.rpartition(" WHERE ")[2]
    for old, new in (("$1", "$4"), ("$2", "$5"), ("$3", "$6")):
        key = key.replace(old, new)
    column = read.removeprefix("SELECT ").partition(" FROM ")[0]
    # FOR UPDATE: a row another transaction changes meanwhile is read once that one has
    # ended, as the write finds it, not as the statement's snapshot had it.
    return (
        f"WITH stored AS ({read.rpartition(' WHERE ')[0]} WHERE {key} FOR UPDATE), "
        f"changed AS ({write} RETURNING {column}) "
        f"SELECT (SELECT {column} FROM changed), (SELECT {column} FROM stored)"
    )


class _TransactionScope:
    """Inside a unit of work: every operation runs on its one connection."""

    def __init__(
        self, namespace: str, dialect: SqlDialect, conn: ScopeConnection, health: StorageHealth
    ) -> None:
        self.namespace = namespace
        self._health = health
        self.dialect = dialect
        self.in_transaction = True
        self.active = True
        self._conn = conn
        # One connection cannot run two statements at once; concurrent tasks sharing the
        # unit of work take turns.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def connection(self, *, write: bool) -> AsyncIterator[ScopeConnection]:
        # ``write`` is moot: the transaction was begun for writing.
        async with self._lock:
            # Checked once this task's turn has come: the unit may have ended meanwhile.
            if not self.active:
                raise RuntimeError("this unit of work's transaction has ended")
            with translate_errors(self._health):
                yield self._conn

    async def run_point(
        self, sql: str, params: Sequence[Any], *, write: bool, or_else: Point | None = None
    ) -> RawRows:
        # connection() spelled out: this runs for every statement of a unit of work, and
        # two context managers cost more than the statement's own Python.
        # Both statements in one turn: no other task's call runs between them.
        lock = self._lock
        await lock.acquire()
        try:
            if not self.active:
                raise RuntimeError("this unit of work's transaction has ended")
            try:
                done = await execute_point(self._conn, sql, params)
                if or_else is None or done.rowcount:
                    return done
                found = await execute_point(self._conn, *or_else)
            except DBAPIError as exc:
                raise_if_translated(exc, self._health)
                raise
        finally:
            lock.release()
        return RawRows(found.rows, done.rowcount)

    def repository(self, message_type: type[M], *, collection: str, id_field: str) -> Repository[M]:
        return Repository(self, message_type, collection=collection, id_field=id_field)


class _TransactionScopeContext:
    """:meth:`SqlBackend.transaction`: a unit of work's connection as a
    :class:`_TransactionScope`, inactive once the unit has ended. A class, not a
    generator, as it wraps every unit of work (see ``engine._TranslatedErrors``)."""

    __slots__ = ("_database", "_namespace", "_scope", "_unit")

    def __init__(self, database: Database, namespace: str) -> None:
        self._database = database
        self._namespace = namespace
        self._unit = database.unit()
        self._scope: _TransactionScope | None = None

    async def __aenter__(self) -> RepositoryScope:
        conn = await self._unit.__aenter__()
        database = self._database
        self._scope = _TransactionScope(self._namespace, database.dialect, conn, database.health)
        return self._scope

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._scope is not None
        self._scope.active = False
        return await self._unit.__aexit__(*exc_info)


class SqlBackend:
    """SQLite or PostgreSQL through SQLAlchemy: the :class:`Backend` of those URLs."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @classmethod
    async def open(
        cls,
        url: str | URL,
        *,
        create_schema: bool,
        sqlite_busy_timeout: float,
        connect_timeout: float = 5.0,
        sqlite_group_commit_units: int = GROUP_COMMIT_UNITS,
    ) -> SqlBackend:
        """Connect to ``url`` and create the schema if asked (see :meth:`Storage.connect`)."""
        database = await Database.open(
            url,
            sqlite_busy_timeout=sqlite_busy_timeout,
            connect_timeout=connect_timeout,
            sqlite_group_commit_units=sqlite_group_commit_units,
        )
        try:
            if create_schema:
                await database.create_schema()
        except BaseException:
            await database.close()
            raise
        return cls(database)

    @property
    def name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._database.dialect.name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._database.closed

    @property
    def health(self) -> StorageHealth:
        """Infrastructure failures seen, and whether the database works."""
        return self._database.health

    async def probe(self) -> None:
        """Rewrite the probe row (see :meth:`Database.probe`)."""
        await self._database.probe()

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._database.health.close()
        await self._database.close()

    async def apply_indexes(
        self, types: Sequence[Descriptor], *, drop_delay: float
    ) -> IndexChanges:
        """Build, retire and drop declared indexes (see :mod:`.indexes`)."""
        return await apply_sql_indexes(self._database, types, drop_delay=drop_delay)

    async def drop_retired_indexes(
        self, *, drop_delay: float, declared: Sequence[Descriptor]
    ) -> IndexChanges:
        """Drop the retired indexes that are due (see :mod:`.indexes`)."""
        return await drop_retired_sql_indexes(
            self._database, drop_delay=drop_delay, declared=declared
        )

    async def list_indexes(self) -> list[BuiltIndex]:
        """The catalog and the retired indexes (see :mod:`.indexes`)."""
        with translate_errors(self._database.health):
            return await list_sql_indexes(self._database)

    async def retire_indexes(self, message_type: str, *, drop_delay: float) -> IndexChanges:
        """Retire a type's indexes (see :func:`.indexes.retire_sql_indexes`)."""
        # Also on the DDL connection of PostgreSQL, which no transaction wraps.
        with translate_errors(self._database.health):
            return await retire_sql_indexes(self._database, message_type, drop_delay=drop_delay)

    def scope(self, namespace: str) -> RepositoryScope:
        """Repositories of ``namespace``, each statement group its own transaction."""
        return _AutocommitScope(self._database, namespace)

    def transaction(self, namespace: str) -> AbstractAsyncContextManager[RepositoryScope]:
        """One database transaction on one connection (see :meth:`Namespace.transaction`)."""
        return _TransactionScopeContext(self._database, namespace)


class Namespace:
    """The rows of one namespace, e.g. one plugin's ("plugins/business/orders").

    Everything obtained from a Namespace reads and writes only rows of that namespace;
    two namespaces may hold the same collection and ids without ever seeing each other.
    Get one from :meth:`Storage.namespace`.
    """

    def __init__(self, backend: Backend, name: str) -> None:
        self._backend = backend
        self._name = validate_namespace(name)
        self._scope = backend.scope(self._name)

    def __repr__(self) -> str:
        return f"Namespace({self._name!r})"

    @property
    def name(self) -> str:
        """The namespace name."""
        return self._name

    def repository(
        self, message_type: type[M], *, collection: str | None = None, id_field: str = "id"
    ) -> Repository[M]:
        """The repository of ``message_type`` messages; each call is its own transaction.

        ``collection`` defaults to the message's full name; ``id_field`` names the
        singular string field holding the id.
        """
        return _new_repository(self._scope, message_type, collection, id_field)

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """One database transaction: committed on normal exit, rolled back on exception.

        On SQLite the transaction holds the database's write lock from its start, so
        other writers wait (up to the busy timeout) until it ends: keep it short, and do
        not open a second transaction on the same SQLite database while holding one.
        MongoDB needs a replica set (or mongos) for transactions; see ``mongo``.

        Once committed, the unit's :meth:`UnitOfWork.after_commit` callbacks run, with
        the transaction and its connection released.
        """
        return _UnitOfWorkScope(self._backend.transaction(self._name))


class _UnitOfWorkScope:
    """:meth:`Namespace.transaction`: the backend's transaction as a
    :class:`UnitOfWork`, whose after-commit callbacks run once it has committed."""

    __slots__ = ("_transaction", "_unit")

    def __init__(self, transaction: AbstractAsyncContextManager[RepositoryScope]) -> None:
        self._transaction = transaction
        self._unit: UnitOfWork | None = None

    async def __aenter__(self) -> UnitOfWork:
        self._unit = UnitOfWork(await self._transaction.__aenter__())
        return self._unit

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        suppressed = await self._transaction.__aexit__(*exc_info)
        if exc_info[0] is None:
            # Only reached when the transaction committed: the body raised nothing and
            # the commit itself succeeded.
            assert self._unit is not None
            await self._unit._run_after_commit()
        return suppressed


class UnitOfWork:
    """The repositories of one transaction, from :meth:`Namespace.transaction`.

    Its repositories join the transaction; they fail once the transaction has ended.
    """

    def __init__(self, scope: RepositoryScope) -> None:
        self._scope = scope
        self._after_commit: list[Callable[[], Awaitable[None]]] = []

    def __repr__(self) -> str:
        state = "active" if self._scope.active else "finished"
        return f"UnitOfWork({self._scope.namespace!r}, {state})"

    @property
    def namespace(self) -> str:
        """The namespace name."""
        return self._scope.namespace

    @property
    def active(self) -> bool:
        """Whether the transaction is still open."""
        return self._scope.active

    def repository(
        self, message_type: type[M], *, collection: str | None = None, id_field: str = "id"
    ) -> Repository[M]:
        """The repository of ``message_type`` messages inside this transaction."""
        return _new_repository(self._scope, message_type, collection, id_field)

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``await callback()`` once the transaction has committed (never on rollback).

        Callbacks run in registration order after the commit, in the task that ran the
        transaction, outside it (a callback may open another). One that raises is logged
        and does not stop the others or fail the caller: the data is committed by then.
        If that task is cancelled meanwhile, the callbacks not run yet never run: what
        must happen after a commit whatever happens cannot rely on them alone (the
        outbox relays what its callback did not publish).
        """
        if not self._scope.active:
            raise RuntimeError("this unit of work's transaction has ended")
        self._after_commit.append(callback)

    async def _run_after_commit(self) -> None:
        # Private: run from inside the transaction, it would act on uncommitted data.
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                await callback()
            except Exception:
                _log.exception("after-commit callback of %s failed", self.namespace)
