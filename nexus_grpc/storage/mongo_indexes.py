"""Declared indexes on MongoDB: what :mod:`.indexes` is for SQL.

Each declared index (:mod:`.declared`) becomes the compound index ``(ns, coll,
doc.<path> ±1 ..., id)`` on the records collection. Unlike SQL's partial indexes, one
such index serves every collection (``coll`` leads it), so declarations that differ only
in their collections are one index, named after its keys: a write's upkeep of an index
here costs no parsing of the record, which is what the SQL predicate saves. MongoDB builds
indexes without blocking reads and writes (since 4.2), and ``createIndex`` with the same
name and keys is a no-op, so processes starting together do not fail on it. What was
built for which type is recorded in the ``nexus_index_catalog`` collection, so an index
a type stops declaring is dropped at start (once no other type declares it) and no
index nexus did not build is ever dropped. A path whose value kind changed re-derives
the index documents of the collections the type's indexes cover from the payloads, in
batches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

from .declared import DeclaredIndex, IndexChanges, declared_indexes, index_collections
from .index import indexed_fields
from .mongo_query import ID_FIELD, INDEX_FIELD, index_subdocument
from .schema import INDEX_CATALOG_TABLE

__all__ = ["apply_mongo_indexes", "index_keys", "reindex_collection"]

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
    records: AsyncCollection[Document], types: Sequence[Descriptor]
) -> IndexChanges:
    """Build the indexes ``types`` declare and drop those they no longer declare."""
    changes = IndexChanges()
    wanted = {descriptor.full_name: _by_keys(descriptor) for descriptor in types}
    if not wanted:
        return changes
    catalog: AsyncCollection[Document] = records.database.get_collection(INDEX_CATALOG_TABLE)
    recorded = [
        document async for document in catalog.find({"message_type": {"$in": sorted(wanted)}})
    ]
    for descriptor in types:
        if _kind_changed(descriptor, recorded):
            for collection in index_collections(descriptor) or [descriptor.full_name]:
                await reindex_collection(records, descriptor, collection)
            changes.reindexed.append(descriptor.full_name)
    # Drops first: an index whose only change is a path's value kind has the same
    # keys, and MongoDB refuses a second index on the same keys under another name.
    declared = {(i.keys_name, type_name) for type_name, indexes in wanted.items() for i in indexes}
    for document in recorded:
        name, type_name = document["index_name"], document["message_type"]
        if (name, type_name) in declared:
            continue
        await catalog.delete_one({"_id": document["_id"]})
        if await catalog.count_documents({"index_name": name}, limit=1) == 0:
            # Another process starting at the same time may have dropped it already.
            with contextlib.suppress(OperationFailure):
                await records.drop_index(name)
            changes.dropped.append(name)
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
    for name in changes.created:
        _log.info("built the declared index %s", name)
    for name in changes.dropped:
        _log.info("dropped the index %s, which no contract declares any more", name)
    return changes


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
