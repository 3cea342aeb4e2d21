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

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

from .declared import (
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
    "reindex_collection",
]

_log = logging.getLogger("nexus.storage")

#: Records re-indexed per bulk write after a type change.
REINDEX_BATCH = 500

Document = dict[str, Any]

#: The server's answer to a second index on the same keys under another name.
_INDEX_OPTIONS_CONFLICT = 85


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
    changes = IndexChanges()
    wanted = {descriptor.full_name: _by_keys(descriptor) for descriptor in types}
    if not wanted:
        return changes
    catalog = _catalog(records)
    retirements = _retirements(records)
    recorded = [
        document async for document in catalog.find({"message_type": {"$in": sorted(wanted)}})
    ]
    for descriptor in types:
        if _kind_changed(descriptor, recorded):
            for collection in index_collections(descriptor) or [descriptor.full_name]:
                await reindex_collection(records, descriptor, collection)
            changes.reindexed.append(descriptor.full_name)
    declared = {(i.keys_name, type_name) for type_name, indexes in wanted.items() for i in indexes}
    declared_names = {name for name, _ in declared}
    retired = {str(d["_id"]): float(d["retired_at"]) async for d in retirements.find({})}
    taken_back = sorted(declared_names & set(retired))
    if taken_back:
        await retirements.delete_many({"_id": {"$in": taken_back}})
    existing = await records.index_information()
    wanted_keys = {
        _key_tuple(index_keys(index)): index.keys_name
        for indexes in wanted.values()
        for index in indexes
    }
    now = time.time()
    # Drops first: an index whose only change is a path's value kind has the same
    # keys, and MongoDB refuses a second index on the same keys under another name.
    for document in recorded:
        name, type_name = document["index_name"], document["message_type"]
        if (name, type_name) in declared:
            continue
        still_used = name in declared_names or await catalog.count_documents(
            {"index_name": name, "message_type": {"$nin": sorted(wanted)}}, limit=1
        )
        if still_used or name in changes.dropped:
            await catalog.delete_one({"_id": document["_id"]})
            continue
        keys = _key_tuple(existing.get(name, {}).get("key", ()))
        in_the_way = wanted_keys.get(keys, name) != name
        if in_the_way or type_name in changes.reindexed or _due(retired.get(name), now, drop_delay):
            await _drop(records, name)
            changes.dropped.append(name)
        elif name not in changes.retired:
            if name not in retired:
                await retirements.update_one(
                    {"_id": name}, {"$setOnInsert": {"retired_at": now}}, upsert=True
                )
                retired[name] = now
            changes.retired.append(name)
    existing = await records.index_information()
    for indexes in wanted.values():
        for index in indexes:
            if index.keys_name not in existing and await _create(records, index):
                changes.created.append(index.keys_name)
            await catalog.update_one(
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
    report_changes(changes, drop_delay)
    return changes


async def drop_retired_mongo_indexes(
    records: AsyncCollection[Document], *, drop_delay: float
) -> IndexChanges:
    """Drop the retired indexes whose ``drop_delay`` has passed (the host's periodic
    sweep; see :func:`.indexes.drop_retired_sql_indexes`)."""
    changes = IndexChanges()
    now = time.time()
    async for document in _retirements(records).find({}):
        if _due(float(document["retired_at"]), now, drop_delay):
            await _drop(records, str(document["_id"]))
            changes.dropped.append(str(document["_id"]))
    report_changes(changes, drop_delay)
    return changes


def _catalog(records: AsyncCollection[Document]) -> AsyncCollection[Document]:
    return records.database.get_collection(INDEX_CATALOG_TABLE)


def _retirements(records: AsyncCollection[Document]) -> AsyncCollection[Document]:
    """Retired index name (``_id``) → ``retired_at`` (seconds since the epoch)."""
    return records.database.get_collection(INDEX_RETIRED_TABLE)


def _key_tuple(keys: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(field), int(direction)) for field, direction in keys)


def _due(since: float | None, now: float, drop_delay: float) -> bool:
    """Whether an index retired at ``since`` (None: retired now) may be dropped."""
    if drop_delay <= 0:
        return True
    return since is not None and now - since >= drop_delay


async def _drop(records: AsyncCollection[Document], name: str) -> None:
    """Drop ``name`` and forget it: its catalog rows (every type's) and its retirement."""
    # Another process starting at the same time may have dropped it already.
    with contextlib.suppress(OperationFailure):
        await records.drop_index(name)
    await _catalog(records).delete_many({"index_name": name})
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
