"""Declared indexes on MongoDB: what :mod:`.indexes` is for SQL.

Each declared index (:mod:`.declared`) becomes the compound index ``(ns, coll,
doc.<path> ±1 ..., id)`` on the records collection. Unlike SQL's partial indexes, one
such index serves every collection (``coll`` leads it), so declarations that differ only
in their collections are one index, named after its keys: a write's upkeep of an index
here costs no parsing of the record, which is what the SQL predicate saves. MongoDB builds
indexes without blocking reads and writes (since 4.2), and ``createIndex`` with the same
name and keys is a no-op, so processes starting together do not fail on it. What was
built for which type is recorded in the ``nexus_index_catalog`` collection, so an index
a type stops declaring is retired at start once no other type declares it (recorded in
``nexus_index_retired``), dropped once retired for the drop delay as on SQL (see
:mod:`.indexes`), and no index nexus did not build is ever dropped. One on the same keys
as an index now declared is dropped at once: MongoDB keeps one index per set of keys. A
path whose value kind changed re-derives the index documents of the collections the
type's indexes cover from the payloads, in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure

from .declared import (
    BuiltIndex,
    DeclaredIndex,
    IndexChanges,
    declared_indexes,
    index_collections,
    report_changes,
)
from .index import indexed_fields
from .mongo_query import ID_FIELD, INDEX_FIELD, index_subdocument
from .schema import INDEX_CATALOG_TABLE, INDEX_RETIRED_TABLE

__all__ = [
    "apply_mongo_indexes",
    "drop_retired_mongo_indexes",
    "index_keys",
    "list_mongo_indexes",
    "reindex_collection",
    "retire_mongo_indexes",
]

_log = logging.getLogger("nexus.storage")

#: Records re-indexed per bulk write after a type change.
REINDEX_BATCH = 500

Document = dict[str, Any]

#: The server's answer to a second index on the same keys under another name.
_INDEX_OPTIONS_CONFLICT = 85
#: The server's answer to dropping an index that does not exist.
_INDEX_NOT_FOUND = 27
#: The collection holding the lease on index changes (see :func:`_lease`).
INDEX_LEASE_COLLECTION = "nexus_index_lease"
#: The lease document's id.
_LEASE_ID = "indexes"
#: Seconds a lease lasts unless renewed, and between two tries of a held one.
_LEASE_SECONDS, _LEASE_POLL = 30.0, 0.2
#: Seconds a start waits for another process's index changes (PostgreSQL's too).
_LEASE_WAIT = 600.0


def index_keys(index: DeclaredIndex) -> list[tuple[str, int]]:
    """The keys of ``index``'s MongoDB index."""
    keys = [("ns", 1), ("coll", 1)]
    keys.extend((f"{INDEX_FIELD}.{key.path}", -1 if key.descending else 1) for key in index.keys)
    keys.append((ID_FIELD, 1))
    return keys


async def apply_mongo_indexes(
    records: AsyncCollection[Document], types: Sequence[Descriptor], *, drop_delay: float = 0.0
) -> IndexChanges:
    """Build the indexes ``types`` declare; retire those they no longer declare, and
    drop them once retired for ``drop_delay`` seconds (0: at once)."""
    wanted = {descriptor.full_name: _by_keys(descriptor) for descriptor in types}
    if not wanted:
        return IndexChanges()
    async with _lease(records, wait=_LEASE_WAIT) as held:
        if not held:
            raise TimeoutError(
                f"another process held the index lease for over {_LEASE_WAIT:.0f} s "
                "(building a large index?); start again once it is done"
            )
        changes = await _apply(records, types, wanted, drop_delay)
    report_changes(changes, drop_delay)
    return changes


async def _apply(
    records: AsyncCollection[Document],
    types: Sequence[Descriptor],
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    drop_delay: float,
) -> IndexChanges:
    """:func:`apply_mongo_indexes` under the lease: the same steps as on SQL (see
    :func:`.indexes._retire_or_drop`), drops before builds."""
    changes = IndexChanges()
    recorded = await _recorded(records, wanted)
    for descriptor in types:
        if _kind_changed(descriptor, recorded):
            for collection in index_collections(descriptor) or [descriptor.full_name]:
                await reindex_collection(records, descriptor, collection)
            changes.reindexed.append(descriptor.full_name)
    await _settle(records, wanted, recorded, changes, drop_delay)
    existing = await records.index_information()
    for indexes in wanted.values():
        for index in indexes:
            if index.keys_name not in existing and await _create(records, index):
                changes.created.append(index.keys_name)
            await _record(records, index)
    return changes


async def _recorded(
    records: AsyncCollection[Document], wanted: dict[str, tuple[DeclaredIndex, ...]]
) -> list[Document]:
    """The catalog rows of the ``wanted`` types."""
    rows = _catalog(records).find({"message_type": {"$in": sorted(wanted)}})
    return [document async for document in rows]


async def _settle(
    records: AsyncCollection[Document],
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    recorded: list[Document],
    changes: IndexChanges,
    drop_delay: float,
) -> None:
    """Take back, retire and drop as on SQL (see :func:`.indexes._retire_or_drop`)."""
    catalog = _catalog(records)
    declared = {(i.keys_name, type_name) for type_name, indexes in wanted.items() for i in indexes}
    declared_names = {name for name, _ in declared}
    retired = await _retired(records)
    await _take_back(records, retired, declared_names | await _with_rows(records, retired))
    # Drops first: an index whose only change is a path's value kind has the same keys,
    # and MongoDB refuses a second index on the same keys under another name; a retired
    # one on the keys of an index now declared is in its way too.
    existing = await records.index_information()
    wanted_keys = {
        _key_tuple(index_keys(index)): index.keys_name
        for indexes in wanted.values()
        for index in indexes
    }

    def in_the_way(name: str) -> bool:
        keys = _key_tuple(existing.get(name, {}).get("key", ()))
        return wanted_keys.get(keys, name) != name

    now = time.time()
    # The catalog row goes last: an index left with neither a catalog row nor a
    # retirement (a failure between the two) would never be dropped.
    for document in recorded:
        name, type_name = document["index_name"], document["message_type"]
        if (name, type_name) in declared:
            continue
        if (
            name not in declared_names
            and name not in changes.dropped
            and name not in retired
            # A type not loaded here declaring it (or its keys: the same index here).
            and not await _used_elsewhere(
                catalog, name, str(document.get("definition", "")), sorted(wanted)
            )
        ):
            if type_name in changes.reindexed or drop_delay <= 0 or in_the_way(name):
                await _drop(records, name)
                changes.dropped.append(name)
            else:
                await _retirements(records).update_one(
                    {"_id": name}, {"$set": {"retired_at": now}}, upsert=True
                )
                retired[name] = now
        await catalog.delete_one({"_id": document["_id"]})
    for name, since in retired.items():
        if name in changes.dropped:
            continue
        if in_the_way(name) or _due(since, now, drop_delay):
            await _drop(records, name)
            changes.dropped.append(name)
        else:
            changes.retired.append(name)


async def drop_retired_mongo_indexes(
    records: AsyncCollection[Document], *, drop_delay: float, declared: Sequence[Descriptor] = ()
) -> IndexChanges:
    """The host's periodic sweep, as on SQL (see :func:`.indexes.drop_retired_sql_indexes`):
    what a start does but build, for the ``declared`` types. A sweep finding the lease
    held does nothing this time."""
    changes = IndexChanges()
    wanted = {descriptor.full_name: _by_keys(descriptor) for descriptor in declared}
    if not await _sweep_due(records, wanted, drop_delay):
        return changes
    async with _lease(records, wait=0) as held:
        if not held:
            return changes
        retired = await _retired(records)
        for indexes in wanted.values():
            for index in indexes:
                if index.keys_name in retired:
                    await _record(records, index)
        await _settle(records, wanted, await _recorded(records, wanted), changes, drop_delay)
    # Reported (logged) once, when retired, not at every sweep while kept.
    changes.retired = [name for name in changes.retired if name not in retired]
    report_changes(changes, drop_delay)
    return changes


async def list_mongo_indexes(records: AsyncCollection[Document]) -> list[BuiltIndex]:
    """Every catalog row, then every retired index, each by name."""
    rows = [
        BuiltIndex(str(d["index_name"]), str(d["message_type"]), str(d.get("definition", "")))
        async for d in _catalog(records).find({})
    ]
    retired = [
        BuiltIndex(name, retired_at=datetime.fromtimestamp(since, UTC))
        for name, since in (await _retired(records)).items()
    ]
    return [
        *sorted(rows, key=lambda i: (i.name, i.message_type)),
        *sorted(retired, key=lambda i: i.name),
    ]


async def retire_mongo_indexes(
    records: AsyncCollection[Document], message_type: str, *, drop_delay: float
) -> IndexChanges:
    """Retire the indexes built for ``message_type``, as on SQL (see
    :func:`.indexes.retire_sql_indexes`), under the lease."""
    changes = IndexChanges()
    async with _lease(records, wait=_LEASE_WAIT) as held:
        if not held:
            raise TimeoutError(
                f"another process held the index lease for over {_LEASE_WAIT:.0f} s "
                "(building a large index?); try again once it is done"
            )
        catalog = _catalog(records)
        retired = await _retired(records)
        now = time.time()
        rows = [document async for document in catalog.find({"message_type": message_type})]
        for document in sorted(rows, key=lambda row: str(row["index_name"])):
            name = str(document["index_name"])
            if await _used_elsewhere(
                catalog, name, str(document.get("definition", "")), [message_type]
            ):
                # Its entry stays: retiring the type again once the other type no
                # longer declares the index retires it then.
                changes.shared.append(name)
                continue
            if drop_delay <= 0:
                await _drop(records, name)
                changes.dropped.append(name)
            else:
                if name not in retired:  # else retired by an attempt that failed after
                    await _retirements(records).update_one(
                        {"_id": name}, {"$set": {"retired_at": now}}, upsert=True
                    )
                changes.retired.append(name)
            # The catalog row goes last, as in _settle.
            await catalog.delete_one({"_id": document["_id"]})
    report_changes(changes, drop_delay)
    return changes


async def _sweep_due(
    records: AsyncCollection[Document],
    wanted: dict[str, tuple[DeclaredIndex, ...]],
    drop_delay: float,
) -> bool:
    """Whether a sweep has anything to do (read without the lease): a retirement due,
    declared or with a catalog row again, or a catalog row of a declared type that its
    type no longer declares."""
    retired = await _retired(records)
    now = time.time()
    declared = {(i.keys_name, type_name) for type_name, indexes in wanted.items() for i in indexes}
    if any(_due(since, now, drop_delay) for since in retired.values()):
        return True
    if set(retired) & ({name for name, _ in declared} | await _with_rows(records, retired)):
        return True
    recorded = await _recorded(records, wanted)
    return any((row["index_name"], row["message_type"]) not in declared for row in recorded)


@asynccontextmanager
async def _lease(records: AsyncCollection[Document], *, wait: float) -> AsyncIterator[bool]:
    """Hold the index lease (what PostgreSQL's advisory lock is on SQL) while the block
    runs, waiting up to ``wait`` seconds for it; yields whether it is held.

    MongoDB has no session lock that ends with its holder, so the lease is a document
    that expires :data:`_LEASE_SECONDS` after it was last renewed (by the clocks of the
    processes sharing the database): the holder renews it every third of that while the
    block runs (a large build or re-index takes as long as it takes), and a process
    killed while holding it stops the others that long at most. Taking it is one upsert
    whose filter only matches an expired lease: a live one makes the insert collide on
    ``_id``.
    """
    leases = records.database.get_collection(INDEX_LEASE_COLLECTION)
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    held = False
    try:
        while True:
            now = time.time()
            try:
                await leases.update_one(
                    {"_id": _LEASE_ID, "until": {"$lt": now}},
                    {"$set": {"holder": holder, "until": now + _LEASE_SECONDS}},
                    upsert=True,
                )
                held = True
                break
            except DuplicateKeyError:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(_LEASE_POLL)
        renewing = asyncio.get_running_loop().create_task(_renew(leases, holder)) if held else None
        try:
            yield held
        finally:
            if renewing is not None:
                renewing.cancel()
    finally:
        # Even when cancelled, and when cancelled while taking it (the server may have
        # applied the upsert): a lease left behind stops every start for a while.
        with contextlib.suppress(Exception):
            await asyncio.shield(leases.delete_one({"_id": _LEASE_ID, "holder": holder}))


async def _renew(leases: AsyncCollection[Document], holder: str) -> None:
    while True:
        await asyncio.sleep(_LEASE_SECONDS / 3)
        renewed = await leases.update_one(
            {"_id": _LEASE_ID, "holder": holder},
            {"$set": {"until": time.time() + _LEASE_SECONDS}},
        )
        if renewed.matched_count == 0:
            _log.warning("the MongoDB index lease expired before it could be renewed")
            return


async def _retired(records: AsyncCollection[Document]) -> dict[str, float]:
    """Retired index → when it was retired (seconds since the epoch)."""
    return {str(d["_id"]): float(d["retired_at"]) async for d in _retirements(records).find({})}


async def _with_rows(records: AsyncCollection[Document], names: Iterable[str]) -> set[str]:
    """Those of ``names`` with a catalog row: someone declares them (a retired index has
    none; a process declaring it wrote one since, perhaps of a release that knows
    nothing of retirement)."""
    rows = _catalog(records).find({"index_name": {"$in": sorted(names)}}, {"index_name": 1})
    return {str(row["index_name"]) async for row in rows}


async def _take_back(
    records: AsyncCollection[Document], retired: dict[str, float], names: set[str]
) -> None:
    """Un-retire those of ``retired`` that ``names`` holds (and forget them there)."""
    taken_back = sorted(names & set(retired))
    if taken_back:
        await _retirements(records).delete_many({"_id": {"$in": taken_back}})
        for name in taken_back:
            del retired[name]


async def _record(records: AsyncCollection[Document], index: DeclaredIndex) -> None:
    """The catalog row saying ``index`` was built for its type."""
    await _catalog(records).update_one(
        {"_id": f"{index.keys_name}|{index.message_type}"},
        {
            "$set": {
                "index_name": index.keys_name,
                "message_type": index.message_type,
                "definition": index.definition,
            }
        },
        upsert=True,
    )


async def _used_elsewhere(
    catalog: AsyncCollection[Document], name: str, definition: str, types: list[str]
) -> bool:
    """Whether a catalog row of a type but ``types`` names the index ``name``, or keys
    like ``definition``'s: declarations differing only in their value kinds are one
    MongoDB index, built under the first one's name (see :func:`_create`)."""
    keys = _definition_keys(definition)
    rows = catalog.find({"message_type": {"$nin": types}}, {"index_name": 1, "definition": 1})
    async for row in rows:
        if row["index_name"] == name or _definition_keys(str(row.get("definition", ""))) == keys:
            return True
    return False


def _definition_keys(definition: str) -> tuple[tuple[str, bool], ...]:
    """The (path, descending) keys of a catalog row's definition (``path:kind[:desc]``,
    comma-separated): what the MongoDB index is built on, whatever the value kinds."""
    specs = [spec.split(":") for spec in definition.split(",") if spec]
    return tuple((parts[0], parts[-1] == "desc") for parts in specs)


def _catalog(records: AsyncCollection[Document]) -> AsyncCollection[Document]:
    return records.database.get_collection(INDEX_CATALOG_TABLE)


def _retirements(records: AsyncCollection[Document]) -> AsyncCollection[Document]:
    """Retired index name (``_id``) → ``retired_at`` (seconds since the epoch)."""
    return records.database.get_collection(INDEX_RETIRED_TABLE)


def _key_tuple(keys: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(field), int(direction)) for field, direction in keys)


def _due(since: float, now: float, drop_delay: float) -> bool:
    """Whether an index retired at ``since`` may be dropped."""
    return drop_delay <= 0 or now - since >= drop_delay


async def _drop(records: AsyncCollection[Document], name: str) -> None:
    """Drop ``name`` and forget its retirement (a retired index has no catalog row)."""
    try:
        await records.drop_index(name)
    except OperationFailure as exc:
        # Dropped by hand (or by a process of a release without the lease) already. Any
        # other refusal keeps the retirement, so a later start or sweep tries again.
        if exc.code != _INDEX_NOT_FOUND:
            raise
    await _retirements(records).delete_one({"_id": name})


def _by_keys(descriptor: Descriptor) -> tuple[DeclaredIndex, ...]:
    """The type's declared indexes, one per set of keys (whatever their collections)."""
    found: dict[str, DeclaredIndex] = {}
    for index in declared_indexes(descriptor):
        found.setdefault(index.keys_name, index)
    return tuple(found.values())


async def _create(records: AsyncCollection[Document], index: DeclaredIndex) -> bool:
    """Build ``index``; False when an index on the same keys exists under another name
    (one another type declares with other value kinds): that one serves as well."""
    try:
        await records.create_index(index_keys(index), name=index.keys_name)
    except OperationFailure as exc:
        if exc.code != _INDEX_OPTIONS_CONFLICT:
            raise
        return False
    return True


def _kind_changed(descriptor: Descriptor, recorded: list[Document]) -> bool:
    fields = indexed_fields(descriptor)
    for document in recorded:
        if document["message_type"] != descriptor.full_name:
            continue
        for spec in str(document["definition"]).split(","):
            path, kind = spec.split(":")[:2]
            now = fields.get(path)
            if now is not None and now.kind.value != kind:
                return True
    return False


async def reindex_collection(
    records: AsyncCollection[Document], descriptor: Descriptor, collection: str
) -> int:
    """Re-derive the index documents of every record in ``collection`` (all namespaces)
    from their payloads, :data:`REINDEX_BATCH` records per bulk write; how many."""
    message_class = message_factory.GetMessageClass(descriptor)
    batch: list[UpdateOne] = []
    done = 0
    async for document in records.find({"coll": collection}, {"_id": 1, "payload": 1}):
        subdocument = index_subdocument(message_class.FromString(document["payload"]))
        batch.append(UpdateOne({"_id": document["_id"]}, {"$set": {INDEX_FIELD: subdocument}}))
        if len(batch) >= REINDEX_BATCH:
            await records.bulk_write(batch, ordered=False)
            done, batch = done + len(batch), []
    if batch:
        await records.bulk_write(batch, ordered=False)
        done += len(batch)
    return done
