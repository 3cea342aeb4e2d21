"""Declared indexes as real SQLite and PostgreSQL indexes, built and dropped at start.

Each declared index (:mod:`.declared`) becomes a partial expression index on
``nexus_records``: ``(namespace, <typed value of each path> [DESC], id) WHERE collection
= '<its collection>'``. The expressions are compiled from :mod:`.sql`, the very ones a
list statement filters and orders on, so the planner serves "filter by X, order by Y,
page of 50" from the index (``EXPLAIN`` shows it) instead of reading the JSON of every
row. A list statement names its collection as a literal when one of its type's indexes
covers it (the namespace and the filter values stay parameters): a planner can prove a
literal implies the index's WHERE, never a bound parameter.

Partial, because the records of every plugin share one table: an index over all of them
made every write of every collection evaluate every declared expression (each one parses
the record's JSON index document), so each type's indexes slowed every other type's
writes; measured on SQLite, 6 declared indexes cost an outbox event's insert and delete
~100 µs each. With the predicate, a write pays only for its own collection's indexes.

Evolution, at every start, for the message types given:

* an index a type declares and the database lacks is built: on PostgreSQL with ``CREATE
  INDEX CONCURRENTLY`` (writes go on while it builds); on SQLite inside one write
  transaction (readers go on in WAL mode; writers wait until it is built);
* an index nexus built for a type (recorded in ``nexus_index_catalog``) that the type no
  longer declares is retired once no other type declares it: kept for ``drop_delay``
  seconds (``storage.index_drop_delay``; recorded in ``nexus_index_retired``), then
  dropped by the first start or retired-index sweep (:func:`drop_retired_sql_indexes`)
  that finds it due. During a rolling upgrade the processes still on the previous release
  keep serving their lists from it, and a release rolled back to within the delay finds
  it still built (its start takes it back; nothing is rebuilt). A delay of 0 drops it at
  once. A retired index leaves the catalog: a process declaring it again (of any
  release, one that knows nothing of retirement too) writes its row back, and the next
  start or sweep takes it back instead of dropping it. Indexes nexus did not build
  (other names, no catalog row, no retirement) are never touched;
* a declared path whose value kind changed (a field's type changed) re-derives the index
  documents of the collections the type's indexes cover from the payloads, in batches,
  before the index is built: payloads are the source of truth, so filters then agree
  with what reading the records returns instead of comparing values of the old type.

Records written before a field existed need nothing: their documents lack the path, and
every expression reads a missing path as the field's default, which is what parsing the
old payload with the new message type yields too.

Several processes starting at once: SQLite's write transaction serialises them.
PostgreSQL's concurrent build cannot run in a transaction, so a session advisory lock
(polled: a waiting statement would hold a snapshot the build waits for, a deadlock) lets
one process at a time compare and build; the next finds everything done. A build that
failed half-way leaves an invalid index behind, which the next start drops and rebuilds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeGuard

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, Connection, and_, bindparam, delete, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Delete
from sqlalchemy.sql.elements import TextClause

from .declared import (
    BuiltIndex,
    DeclaredIndex,
    IndexChanges,
    declared_indexes,
    index_collections,
    report_changes,
)
from .engine import Database, SqlConnection
from .index import index_document, indexed_fields
from .schema import RECORDS_TABLE, collection_literal, index_catalog, index_retired, records

__all__ = [
    "IndexChanges",
    "apply_sql_indexes",
    "drop_retired_sql_indexes",
    "index_columns",
    "index_predicate",
    "list_sql_indexes",
    "reindex_collection",
    "retire_sql_indexes",
]

_log = logging.getLogger("nexus.storage")

#: Key of the PostgreSQL advisory lock serialising index changes across processes.
_INDEX_LOCK_KEY = 0x6E657875_73000002  # "nexus" + 2
#: Seconds between tries of that lock, and the longest wait for it.
_LOCK_POLL, _LOCK_WAIT = 0.2, 600.0
#: Records re-indexed per transaction after a type change.
REINDEX_BATCH = 500

_SQLITE_DIALECT = sqlite.dialect()


def index_columns(database: Database, index: DeclaredIndex) -> str:
    """The column list of ``index``'s CREATE INDEX, as SQL."""
    columns = ["namespace"]
    for key in index.keys:
        expression = _literal_sql(database, database.dialect.index_value(key.path, key.kind))
        columns.append(f"({expression})" + (" DESC" if key.descending else ""))
    columns.append("id")
    return ", ".join(columns)


def index_predicate(database: Database, index: DeclaredIndex) -> str:
    """The WHERE of ``index``'s CREATE INDEX, as SQL: its collection's records only."""
    return _literal_sql(database, collection_literal(index.collection))


def _create_index_sql(
    database: Database, index: DeclaredIndex, *, concurrently: bool
) -> TextClause:
    how = "CONCURRENTLY " if concurrently else ""
    sql = (
        f"CREATE INDEX {how}IF NOT EXISTS {index.name} ON {RECORDS_TABLE} "
        f"({index_columns(database, index)}) WHERE {index_predicate(database, index)}"
    )
    # text() reads ":word" as a bound parameter, even inside the collection's quoted
    # name ("tenant :id"); each colon escaped ("\\:") is sent as it is.
    return text(sql.replace(":", "\\:"))


def _compiler(database: Database) -> Dialect:
    """The dialect compiling the list statements: a collection's name must render in an
    index's WHERE exactly as in them. On PostgreSQL the engine's own (asyncpg's), which
    knows once connected whether the server reads a backslash as an escape
    (standard_conforming_strings off) and leaves a "%" alone, where SQLAlchemy's default
    (psycopg2, pyformat) dialect doubles it: either way, an index over another collection
    than its name, or a name breaking out of its quotes."""
    engine = database._engine  # the PostgreSQL engine; SQLite has none of this kind
    return _SQLITE_DIALECT if engine is None else engine.dialect


def _literal_sql(database: Database, expression: ColumnElement[Any]) -> str:
    compiled = expression.compile(
        dialect=_compiler(database),
        compile_kwargs={"literal_binds": True, "include_table": False},
    )
    return str(compiled)


async def apply_sql_indexes(
    database: Database, types: Sequence[Descriptor], *, drop_delay: float = 0.0
) -> IndexChanges:
    """Build the indexes ``types`` declare; retire those they no longer declare, and
    drop them once retired for ``drop_delay`` seconds (0: at once)."""
    wanted = {descriptor.full_name: declared_indexes(descriptor) for descriptor in types}
    by_name = {descriptor.full_name: descriptor for descriptor in types}
    if not wanted:
        return IndexChanges()
    if database.dialect.name == "sqlite":
        return await _apply_sqlite(database, wanted, by_name, drop_delay)
    return await _apply_postgres(database, wanted, by_name, drop_delay)


async def drop_retired_sql_indexes(
    database: Database, *, drop_delay: float, declared: Sequence[Descriptor] = ()
) -> IndexChanges:
    """The host's periodic sweep: what a start does but build, for the ``declared``
    types (this process's contracts). So an index no contract declares is dropped once
    the delay is over, not at the next start; an index the ``declared`` types declare is
    taken back (a process of another release may have retired it) with its catalog rows
    written back; and an index of theirs they no longer declare is retired (a process of
    the previous release still running may have taken it back). On PostgreSQL a sweep
    finding another process changing indexes (the advisory lock taken) does nothing
    this time; on SQLite it waits for the write lock as any write."""
    changes = IndexChanges()
    wanted = {descriptor.full_name: declared_indexes(descriptor) for descriptor in declared}
    # Read first, without a lock: nearly every sweep has nothing to do.
    async with database.transaction(write=False) as conn:
        recorded, retired, now = await _recorded(conn), await _retired(conn), await _now(conn)
    if not _sweep_due(wanted, recorded, retired, now, drop_delay):
        return changes
    if database.dialect.name == "sqlite":
        async with database.transaction(write=True) as conn:
            await _sweep(conn, wanted, changes, drop_delay)
    else:
        async with _postgres_ddl(database, wait=False) as locked:
            if locked is None:
                return changes
            await _sweep(locked, wanted, changes, drop_delay)
    report_changes(changes, drop_delay)
    return changes


async def list_sql_indexes(database: Database) -> list[BuiltIndex]:
    """Every catalog row, then every retired index, each by name."""
    async with database.transaction(write=False) as conn:
        recorded, retired = await _recorded(conn), await _retired(conn)
    return _built(recorded, retired)


def _built(
    recorded: Sequence[tuple[str, str, str]], retired: dict[str, datetime]
) -> list[BuiltIndex]:
    """Catalog rows (name, type, definition) and retirements as :class:`BuiltIndex`."""
    return [
        *(
            BuiltIndex(name, type_name, definition)
            for name, type_name, definition in sorted(recorded)
        ),
        *(BuiltIndex(name, retired_at=since) for name, since in sorted(retired.items())),
    ]


async def retire_sql_indexes(
    database: Database, message_type: str, *, drop_delay: float
) -> IndexChanges:
    """Retire the indexes built for ``message_type``, as a start does for an index its
    type stops declaring: for a type no process declares any more (its plugin removed
    everywhere), which no start can tell apart from one another process still serves.
    Each index is retired (dropped at once for a 0 delay) and its catalog row goes; one
    another type's row names too is kept, with its row. A process still declaring the
    type takes the retired ones back at its next sweep or start."""
    if database.dialect.name == "sqlite":
        async with database.transaction(write=True) as conn:
            changes = await _retire_type(conn, message_type, drop_delay)
    else:
        async with _postgres_ddl(database, wait=True) as locked:
            assert locked is not None  # waited for
            changes = await _retire_type(locked, message_type, drop_delay)
    report_changes(changes, drop_delay)
    return changes


async def _retire_type(conn: SqlConnection, message_type: str, drop_delay: float) -> IndexChanges:
    changes = IndexChanges()
    recorded, retired, now = await _recorded(conn), await _retired(conn), await _now(conn)
    others = {name for name, type_name, _ in recorded if type_name != message_type}
    for name in sorted({name for name, type_name, _ in recorded if type_name == message_type}):
        if name in others:
            # Its row stays: retiring the type again once the other type no longer
            # declares the index retires it then.
            changes.shared.append(name)
            continue
        if drop_delay <= 0:
            await _drop_retired(conn, name)
            changes.dropped.append(name)
        else:
            if name not in retired:  # else retired by an attempt that failed after
                await conn.execute(index_retired.insert().values(index_name=name, retired_at=now))
            changes.retired.append(name)
        # The catalog row goes last, as in _retire_or_drop.
        await conn.execute(_forget(name, message_type))
    return changes


def _sweep_due(
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    recorded: list[tuple[str, str, str]],
    retired: dict[str, datetime],
    now: datetime,
    drop_delay: float,
) -> bool:
    """Whether a sweep has anything to do: a retirement due, declared or with a catalog
    row again, or a catalog row of a declared type that its type no longer declares."""
    declared = {index.name for indexes in wanted.values() for index in indexes}
    return (
        any(_due(since, now, drop_delay) for since in retired.values())
        or bool(set(retired) & (declared | {name for name, _, _ in recorded}))
        or bool(_unwanted(wanted, recorded))
    )


async def _sweep(
    conn: SqlConnection,
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    changes: IndexChanges,
    drop_delay: float,
) -> None:
    """A sweep under the lock: the declared types' retired indexes re-recorded, then
    what a start does with the catalog."""
    retired = await _retired(conn)
    for indexes in wanted.values():
        for index in indexes:
            if index.name in retired:
                await _record(conn, index)
    recorded = await _recorded(conn)
    await _retire_or_drop(conn, wanted, recorded, changes, drop_delay=drop_delay)
    # Reported (logged) once, when retired, not at every sweep while kept.
    changes.retired = [name for name in changes.retired if name not in retired]


async def _retire_or_drop(
    conn: SqlConnection,
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    recorded: list[tuple[str, str, str]],
    changes: IndexChanges,
    *,
    drop_delay: float,
) -> None:
    """The catalog's part of a start, under the lock.

    A retired index someone declares again is taken back: one of the given types, or
    any catalog row (a retired index has none: a row means a process wrote it since,
    perhaps of a release that knows nothing of retirement, rolled back to). Then each
    catalog row of a given type whose index it no longer declares goes, and the index
    is retired unless another type still declares it; then every retired index that is
    due is dropped. A type whose index documents were just re-derived (a field's type
    changed) has its old indexes dropped at once: their values no longer mean what its
    previous release read them as."""
    retired = await _retired(conn)
    declared = {index.name for indexes in wanted.values() for index in indexes}
    await _take_back(conn, retired, declared | {name for name, _, _ in recorded})
    now = await _now(conn)
    # The catalog row goes last: on PostgreSQL each statement commits on its own, and an
    # index left with neither a catalog row nor a retirement would never be dropped.
    for name, type_name, still_used in _unwanted(wanted, recorded):
        if not (still_used or name in changes.dropped or name in retired):
            if type_name in changes.reindexed or drop_delay <= 0:
                await _drop_retired(conn, name)
                changes.dropped.append(name)
            else:
                await conn.execute(index_retired.insert().values(index_name=name, retired_at=now))
                retired[name] = now
        await conn.execute(_forget(name, type_name))
    for name, since in retired.items():
        if name in changes.dropped:
            continue
        if _due(since, now, drop_delay):
            await _drop_retired(conn, name)
            changes.dropped.append(name)
        else:
            changes.retired.append(name)


async def _take_back(conn: SqlConnection, retired: dict[str, datetime], names: set[str]) -> None:
    """Un-retire those of ``retired`` that ``names`` holds (and forget them there)."""
    taken_back = sorted(names & set(retired))
    if taken_back:
        await conn.execute(delete(index_retired).where(index_retired.c.index_name.in_(taken_back)))
        for name in taken_back:
            del retired[name]


async def _retired(conn: SqlConnection) -> dict[str, datetime]:
    """Retired index → when it was retired."""
    rows: Sequence[Any] = (
        await conn.execute(select(index_retired.c.index_name, index_retired.c.retired_at))
    ).all()
    return {str(row[0]): row[1] for row in rows}


def _on_postgres(conn: SqlConnection) -> TypeGuard[AsyncConnection]:
    return isinstance(conn, AsyncConnection) and conn.dialect.name == "postgresql"


async def _now(conn: SqlConnection) -> datetime:
    """The time retirements are measured in: PostgreSQL's clock, shared by every process
    of every machine using the database (SQLite's processes share one machine's)."""
    if not _on_postgres(conn):
        return datetime.now(UTC)
    value: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
    return value.astimezone(UTC)


def _due(since: datetime, now: datetime, drop_delay: float) -> bool:
    """Whether an index retired ``since`` may be dropped."""
    return drop_delay <= 0 or (now - since).total_seconds() >= drop_delay


async def _drop_retired(conn: SqlConnection, name: str) -> None:
    """Drop ``name`` and forget its retirement (a retired index has no catalog row). On
    PostgreSQL concurrently: writes go on meanwhile (the connection commits each
    statement on its own, see :func:`_postgres_ddl`)."""
    how = "CONCURRENTLY " if _on_postgres(conn) else ""
    await conn.execute(text(f"DROP INDEX {how}IF EXISTS {name}"))
    await conn.execute(delete(index_retired).where(index_retired.c.index_name == name))


async def _apply_sqlite(
    database: Database,
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    types: dict[str, Descriptor],
    drop_delay: float,
) -> IndexChanges:
    changes = IndexChanges()
    async with database.transaction(write=False) as conn:
        recorded = await _recorded(conn)
    for type_name in _kind_changed(recorded, types):
        await _reindex_type(database, types[type_name])
        changes.reindexed.append(type_name)
    # One write transaction: processes starting together take turns, and the catalog
    # never disagrees with the indexes that exist.
    async with database.transaction(write=True) as conn:
        recorded = await _recorded(conn)
        # The catalog says what was built, the schema what still exists: an index
        # dropped by hand (or lost with a restored file) is built again.
        master = text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t")
        schema = await conn.execute(master.bindparams(t=RECORDS_TABLE))
        present = {str(row[0]) for row in schema.all()}
        built = [row for row in recorded if row[0] in present]
        for index in _missing(wanted, built):
            await conn.execute(_create_index_sql(database, index, concurrently=False))
            await _record(conn, index)
            # One still there (retired, now declared again) was not built now.
            if index.name not in present:
                changes.created.append(index.name)
        await _retire_or_drop(conn, wanted, recorded, changes, drop_delay=drop_delay)
    report_changes(changes, drop_delay)
    return changes


async def _apply_postgres(
    database: Database,
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    types: dict[str, Descriptor],
    drop_delay: float,
) -> IndexChanges:
    changes = IndexChanges()
    async with _postgres_ddl(database, wait=True) as conn:
        assert conn is not None
        recorded = await _recorded(conn)
        for type_name in _kind_changed(recorded, types):
            await _reindex_type(database, types[type_name])
            changes.reindexed.append(type_name)
        for index in _missing(wanted, recorded, ignore_recorded=True):
            if await _build_postgres(database, conn, index):
                changes.created.append(index.name)
            await _record(conn, index)
        await _retire_or_drop(conn, wanted, recorded, changes, drop_delay=drop_delay)
    report_changes(changes, drop_delay)
    return changes


@asynccontextmanager
async def _postgres_ddl(database: Database, *, wait: bool) -> AsyncIterator[AsyncConnection | None]:
    """The connection index changes run on, holding the index lock: waiting for it up
    to :data:`_LOCK_WAIT` (a start), or None at once when another process holds it (a
    sweep). CREATE and DROP INDEX CONCURRENTLY refuse to run inside a transaction
    block: this connection commits each statement. The Database hands out transactions
    only."""
    engine = database._engine  # the one DDL connection outside them
    assert engine is not None
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        if wait:
            await _lock(conn)
        elif not await _try_lock(conn):
            yield None
            return
        try:
            yield conn
        finally:
            await _unlock(conn)


async def _try_lock(conn: AsyncConnection) -> bool:
    try_lock = text("SELECT pg_try_advisory_lock(:key)")
    return bool((await conn.execute(try_lock, {"key": _INDEX_LOCK_KEY})).scalar_one())


async def _unlock(conn: AsyncConnection) -> None:
    """Release the index lock; never raises (it runs in ``finally`` blocks, where an
    error would replace what is propagating, a cancellation included)."""
    try:
        await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _INDEX_LOCK_KEY})
    except Exception:
        # A statement interrupted on this connection (a cancelled sweep) left it unusable.
        # Its session still holds the lock: close it rather than let the pool keep it.
        with contextlib.suppress(Exception):
            await conn.invalidate()


async def _lock(conn: AsyncConnection) -> None:
    deadline = time.monotonic() + _LOCK_WAIT
    while not await _try_lock(conn):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"another process held the index lock for over {_LOCK_WAIT:.0f} s "
                "(building a large index?); start again once it is done"
            )
        await asyncio.sleep(_LOCK_POLL)


async def _build_postgres(database: Database, conn: AsyncConnection, index: DeclaredIndex) -> bool:
    """Build ``index`` unless a valid one exists; whether it was built now."""
    state = await conn.execute(
        text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
        {"name": index.name},
    )
    valid = state.scalar_one_or_none()
    if valid:
        return False
    if valid is not None:
        # Left invalid by a build that failed or was interrupted: it is maintained on
        # every write yet never used. Only this process builds now (advisory lock).
        _log.warning("dropping the invalid index %s left by an interrupted build", index.name)
        await conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}"))
    await conn.execute(_create_index_sql(database, index, concurrently=True))
    return True


async def _recorded(conn: SqlConnection) -> list[tuple[str, str, str]]:
    """Every catalog row (index name, message type, definition). All of them, not only
    the given types': an index one type stops declaring may still be another's (one
    not loaded by this process), and is then kept. The catalog holds a few rows per
    declaring type."""
    catalog = index_catalog.c
    statement = select(catalog.index_name, catalog.message_type, catalog.definition)
    rows: Sequence[Any] = (await conn.execute(statement)).all()
    return [(str(row[0]), str(row[1]), str(row[2])) for row in rows]


def _missing(
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    recorded: list[tuple[str, str, str]],
    *,
    ignore_recorded: bool = False,
) -> list[DeclaredIndex]:
    """Declared indexes without a catalog row for their type (all declared ones when
    ``ignore_recorded``: PostgreSQL checks each against the database itself)."""
    have = {(name, type_name) for name, type_name, _ in recorded}
    found: list[DeclaredIndex] = []
    for type_name, indexes in wanted.items():
        found.extend(i for i in indexes if ignore_recorded or (i.name, type_name) not in have)
    return found


def _unwanted(
    wanted: dict[str, tuple[DeclaredIndex, ...]], recorded: list[tuple[str, str, str]]
) -> list[tuple[str, str, bool]]:
    """(index, type, whether another type still declares it) for each catalog row of a
    given type whose index that type no longer declares (an index several given types
    stop declaring comes once per type: drop it once)."""
    declared = {(i.name, type_name) for type_name, indexes in wanted.items() for i in indexes}
    # Who still declares each index: the given types as they are now, and the others as
    # recorded. Not the given types' own stale rows: two of them dropping the same index
    # at one start (or an index two types shared before indexes were partial) would
    # each keep it for the other, and it would stay, out of the catalog, forever.
    users: dict[str, set[str]] = {}
    for name, type_name, _ in recorded:
        if type_name not in wanted:
            users.setdefault(name, set()).add(type_name)
    for name, type_name in declared:
        users.setdefault(name, set()).add(type_name)
    stale = [
        (name, type_name)
        for name, type_name, _ in recorded
        if type_name in wanted and (name, type_name) not in declared
    ]
    return [
        (name, type_name, bool(users.get(name, set()) - {type_name})) for name, type_name in stale
    ]


def _kind_changed(recorded: list[tuple[str, str, str]], types: dict[str, Descriptor]) -> list[str]:
    """Types with a recorded index path whose value kind is no longer the same."""
    changed: list[str] = []
    for type_name, descriptor in types.items():
        fields = indexed_fields(descriptor)
        for _, recorded_type, definition in recorded:
            if recorded_type != type_name:
                continue
            for spec in definition.split(","):
                path, kind = spec.split(":")[:2]
                now = fields.get(path)
                if now is not None and now.kind.value != kind:
                    changed.append(type_name)
                    break
            if changed and changed[-1] == type_name:
                break
    return changed


async def _record(conn: SqlConnection, index: DeclaredIndex) -> None:
    catalog = index_catalog.c
    exists = await conn.execute(
        select(catalog.index_name).where(
            catalog.index_name == index.name, catalog.message_type == index.message_type
        )
    )
    if exists.first() is None:
        await conn.execute(
            index_catalog.insert().values(
                index_name=index.name,
                message_type=index.message_type,
                definition=index.definition,
                created_at=datetime.now(UTC),
            )
        )


def _forget(name: str, type_name: str) -> Delete:
    catalog = index_catalog.c
    return delete(index_catalog).where(
        and_(catalog.index_name == name, catalog.message_type == type_name)
    )


async def _reindex_type(database: Database, descriptor: Descriptor) -> None:
    """Re-derive the index documents of every collection the type's indexes cover (its
    own when it declares none any more)."""
    for collection in index_collections(descriptor) or [descriptor.full_name]:
        await reindex_collection(database, descriptor, collection)


async def reindex_collection(database: Database, descriptor: Descriptor, collection: str) -> int:
    """Re-derive the index documents of every record in ``collection`` (all namespaces)
    from their payloads, :data:`REINDEX_BATCH` records per transaction; how many.

    Namespace by namespace, each batch seeks on the primary key from the last id of the
    one before (no scan or sort of what was done), and runs on the transaction's thread
    on SQLite: parsing and the statements never hold up the event loop there.
    """
    message_class = message_factory.GetMessageClass(descriptor)
    async with database.transaction(write=False) as conn:
        found = await conn.execute(
            select(records.c.namespace).where(records.c.collection == collection).distinct()
        )
        namespaces = sorted(str(row[0]) for row in found.all())
    done = 0
    for namespace in namespaces:
        after = ""
        while True:
            async with database.transaction(write=True) as conn:
                count, after = await conn.run_sync(
                    _reindex_batch, message_class, namespace, collection, after
                )
            done += count
            if count < REINDEX_BATCH:
                break
    return done


def _reindex_batch(
    connection: Connection,
    message_class: type[Message],
    namespace: str,
    collection: str,
    after: str,
) -> tuple[int, str]:
    """Re-derive the next batch of records after id ``after``: (how many, last id)."""
    page: Sequence[Any] = connection.execute(
        select(records.c.id, records.c.payload)
        .where(
            records.c.namespace == namespace,
            records.c.collection == collection,
            records.c.id > after,
        )
        .order_by(records.c.id)
        .limit(REINDEX_BATCH)
    ).all()
    if not page:
        return 0, after
    documents = [
        {"b_id": record_id, "b_doc": index_document(message_class.FromString(payload))}
        for record_id, payload in page
    ]
    update = (
        records.update()
        .where(
            records.c.namespace == namespace,
            records.c.collection == collection,
            records.c.id == bindparam("b_id"),
        )
        .values(index_doc=bindparam("b_doc", type_=records.c.index_doc.type))
    )
    connection.execute(update, documents)
    return len(page), str(page[-1][0])
