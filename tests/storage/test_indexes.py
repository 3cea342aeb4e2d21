"""Declared indexes: real database indexes that the list statements use, and their
evolution at start (added, dropped, a field's type changed), on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from nexus.options.v1 import options_pb2
from nexus.orders.v1 import orders_pb2
from pymongo import MongoClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from benchmarks.storage_scale import NAMESPACE, load_orders
from nexus_grpc.storage import Storage, mongo_query
from nexus_grpc.storage.declared import INDEX_PREFIX, IndexDeclarationError, declared_indexes
from nexus_grpc.storage.query import build_query

from . import backend_url, connected

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "int64": _F.TYPE_INT64}
_versions = iter(range(1, 1000))


def item_type(
    fields: dict[str, str],
    indexes: list[list[str]],
    name: str = "Item",
    collections: list[str] | None = None,
) -> type[Message]:
    """A version of the message ``nexus.storage.evo.<name>``: ``id`` plus ``fields`` (name
    -> "string" / "int64", numbered in order), declaring ``indexes`` (over
    ``collections``, when given). Each version lives in a pool of its own, as a new
    contract deployed to a restarted host would."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"evo/item_v{next(_versions)}.proto", package="nexus.storage.evo", syntax="proto3"
    )
    message = fdp.message_type.add(name=name)
    message.field.add(name="id", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    for number, (field, kind) in enumerate(fields.items(), start=2):
        message.field.add(name=field, number=number, type=_TYPES[kind], label=_F.LABEL_OPTIONAL)
    declared = message.options.Extensions[options_pb2.storage]
    for paths in indexes:
        declared.indexes.add(fields=paths, collections=collections or [])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"nexus.storage.evo.{name}"))


@pytest.fixture(params=["sqlite", "postgresql", "mongodb"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


def _pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def nexus_indexes(url: str) -> set[str]:
    """The names of the indexes nexus built, read from the database itself."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            names = {row[0] for row in rows}
    elif url.startswith("postgresql"):
        connection = await asyncpg.connect(_pg(url))
        try:
            names = {row[0] for row in await connection.fetch("SELECT indexname FROM pg_indexes")}
        finally:
            await connection.close()
    else:
        with _mongo(url) as collection:
            names = set(collection.index_information())
    return {name for name in names if name.startswith(INDEX_PREFIX)}


def _sqlite_path(url: str) -> str:
    return url.split("///", 1)[1]


@contextmanager
def _mongo(url: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    try:
        yield client.get_default_database().get_collection("nexus_records")
    finally:
        client.close()


@contextmanager
def captured_statements() -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and parameters) every engine sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", grab)


async def query_plan(url: str, statement: str, parameters: Any) -> str:
    """The database's plan of ``statement``: EXPLAIN QUERY PLAN / EXPLAIN."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            rows = connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        return "\n".join(str(row[-1]) for row in rows)
    connection = await asyncpg.connect(_pg(url))
    try:
        rows = await connection.fetch("EXPLAIN " + statement, *parameters)
    finally:
        await connection.close()
    return "\n".join(row[0] for row in rows)


# --- the list statements use the declared indexes ------------------------------------


async def test_a_filtered_page_of_50_is_served_by_the_declared_index(sql_url: str) -> None:
    async with connected(sql_url) as storage:
        await load_orders(storage.dialect, sql_url, 0, 20_000)  # 100 customers, 200 each
        changes = await storage.apply_indexes([orders_pb2.Order])
        declared = {index.name for index in declared_indexes(orders_pb2.Order.DESCRIPTOR)}
        assert set(changes.created) == declared == await nexus_indexes(sql_url)
        orders = storage.namespace(NAMESPACE).repository(orders_pb2.Order)
        with captured_statements() as seen:
            first = await orders.list(
                filter={"customer_id": "c000042"}, order_by="create_time desc", page_size=50
            )
            second = await orders.list(
                filter={"customer_id": "c000042"},
                order_by="create_time desc",
                page_size=50,
                page_token=first.next_page_token,
            )
            by_status = await orders.list(
                filter={"status": "ORDER_STATUS_PENDING"}, order_by="create_time desc"
            )
        selects = [(sql, parameters) for sql, parameters in seen if sql.startswith("SELECT")]
        assert len(selects) == 3
        # What the index must give: the customer's newest orders, in order, page after page.
        newest = [f"o{n:08d}" for n in range(8599, 8499, -1)]
        assert [o.id for o in first.items] + [o.id for o in second.items] == newest
        assert [o.id for o in by_status.items][:2] == ["o00019999", "o00019998"]
        by_path = {
            index.keys[0].path: index.name
            for index in declared_indexes(orders_pb2.Order.DESCRIPTOR)
        }
        expected = [("customer_id", by_path["customer_id"])] * 2 + [("status", by_path["status"])]
        for (sql, parameters), (path, name) in zip(selects, expected, strict=True):
            plan = await query_plan(sql_url, sql, parameters)
            # The index declared for the filter, and the filter's value in its search
            # key: an index whose expression differs from the query's is no match.
            # The collection is a literal, which implies the partial index's WHERE.
            assert "collection = 'nexus.orders.v1.Order'" in sql, sql
            if storage.dialect == "sqlite":
                key = "(namespace=? AND <expr>=?"
                assert f"SEARCH nexus_records USING INDEX {name} {key}" in plan, plan
                assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
            else:
                assert f"Index Scan using {name} on nexus_records" in plan, plan
                (condition,) = [line for line in plan.splitlines() if "Index Cond:" in line]
                assert f"(index_doc ->> '{path}'::text)" in condition, plan
                assert "Seq Scan" not in plan and "Sort" not in plan, plan


async def index_definitions(url: str) -> dict[str, str]:
    """The CREATE INDEX of each index nexus built, as the database keeps it."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            rows = connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
            found = {str(name): str(sql) for name, sql in rows}
    else:
        connection = await asyncpg.connect(_pg(url))
        try:
            rows = await connection.fetch("SELECT indexname, indexdef FROM pg_indexes")
        finally:
            await connection.close()
        found = {str(row[0]): str(row[1]) for row in rows}
    return {name: sql for name, sql in found.items() if name.startswith(INDEX_PREFIX)}


async def test_each_index_covers_only_its_collection_and_other_lists_stay_right(
    sql_url: str,
) -> None:
    item = item_type({"owner": "string", "rank": "int64"}, [["owner", "rank desc"]])
    (index,) = declared_indexes(item.DESCRIPTOR)
    async with connected(sql_url) as storage:
        await storage.apply_indexes([item])
        definition = (await index_definitions(sql_url))[index.name]
        # Partial: the other collections' writes never evaluate its expressions.
        assert "WHERE" in definition and "nexus.storage.evo.Item" in definition, definition
        namespace = storage.namespace("tests/evo")
        items = namespace.repository(item)
        archive = namespace.repository(item, collection="archive")
        for number, owner, rank in ((1, "ann", 5), (2, "bob", 7), (3, "ann", 9)):
            await items.create(item(id=f"i{number}", owner=owner, rank=rank))
            await archive.create(item(id=f"a{number}", owner=owner, rank=rank * 10))
        with captured_statements() as seen:
            covered = await items.list(filter={"owner": "ann"}, order_by="rank desc")
            other = await archive.list(filter={"owner": "ann"}, order_by="rank desc")
        assert [i.id for i in covered.items] == ["i3", "i1"]
        # The archive is not covered: still the right rows, in order, from another plan.
        assert [i.id for i in other.items] == ["a3", "a1"]
        (item_sql, item_parameters), (archive_sql, archive_parameters) = [
            (sql, parameters) for sql, parameters in seen if sql.startswith("SELECT")
        ]
        assert index.name in await query_plan(sql_url, item_sql, item_parameters)
        plan = await query_plan(sql_url, archive_sql, archive_parameters)
        assert index.name not in plan, plan


async def test_lists_in_collections_no_index_covers_share_one_statement(sql_url: str) -> None:
    """A literal collection makes a statement of its own per collection, each prepared
    anew (asyncpg and sqlite3 cache 100 and 128 statements per connection): lists over
    more collections than that would prepare on every call. Only a collection one of
    the type's indexes covers gains from it; any other is bound."""
    item = item_type({"owner": "string"}, [["owner"]])
    async with connected(sql_url) as storage:
        await storage.apply_indexes([item])
        namespace = storage.namespace("tests/evo")
        with captured_statements() as seen:
            for collection in ("tenant-1", "tenant-2", "nexus.storage.evo.Item"):
                await namespace.repository(item, collection=collection).list(
                    filter={"owner": "ann"}
                )
        first, second, covered = [sql for sql, _ in seen if sql.startswith("SELECT")]
        assert first == second and "tenant" not in first, first
        assert "collection = 'nexus.storage.evo.Item'" in covered, covered


async def index_covers(url: str, name: str, collection: str) -> bool:
    """Whether the WHERE of index ``name``, as the database keeps it, holds for the
    records of ``collection``: evaluated by the database, the name bound as a value."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            (sql,) = connection.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
            ).fetchone()
            predicate = str(sql).split(" WHERE ", 1)[1]
            row = connection.execute(
                f"SELECT {predicate} FROM (SELECT ? AS collection)", (collection,)
            ).fetchone()
        return bool(row[0])
    connection = await asyncpg.connect(_pg(url))
    try:
        predicate = await connection.fetchval(
            "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
            "WHERE indexrelid = to_regclass($1)",
            name,
        )
        return bool(
            await connection.fetchval(
                f"SELECT {predicate} FROM (SELECT $1::varchar AS collection) AS r", collection
            )
        )
    finally:
        await connection.close()


async def assert_list_served(
    url: str, storage: Storage, item: type[Message], collection: str, index_name: str
) -> None:
    """A record of ``item`` created in ``collection`` is listed back by a filter on its
    owner, and the database plans that list with the index ``index_name``."""
    items = storage.namespace("tests/evo").repository(item, collection=collection)
    await items.create(item(id="i1", owner="ann"))
    with captured_statements() as seen:
        page = await items.list(filter={"owner": "ann"})
    assert [i.id for i in page.items] == ["i1"]
    ((sql, parameters),) = [(s, p) for s, p in seen if s.startswith("SELECT")]
    assert index_name in await query_plan(url, sql, parameters)


@pytest.mark.parametrize(
    "collection",
    [
        "it's; DROP TABLE nexus_records; --",
        "100% done",  # a percent sign, which a pyformat dialect doubles
        "tenant :id",  # what SQLAlchemy's text() reads as a bound parameter
        "back\\slash \\:x '' \"q\" é ☃",
    ],
)
async def test_a_collection_name_is_quoted_in_the_index_and_the_statement(
    sql_url: str, collection: str
) -> None:
    item = item_type({"owner": "string"}, [["owner"]], collections=[collection])
    (index,) = declared_indexes(item.DESCRIPTOR)
    async with connected(sql_url) as storage:
        changes = await storage.apply_indexes([item])
        assert changes.created == [index.name]
        assert await nexus_indexes(sql_url) == {index.name}
        # The index covers the collection named, no other one.
        assert await index_covers(sql_url, index.name, collection)
        assert not await index_covers(sql_url, index.name, collection + "x")
        # The statement's literal names the same collection: the index serves the list.
        await assert_list_served(sql_url, storage, item, collection, index.name)


async def _previous_release_index(url: str, name: str, types: list[str]) -> None:
    """What the previous release built for an ``owner`` index declared by ``types``: one
    index over every collection, under the name of its keys alone (shared by every type
    declaring those keys), and a catalog row per type."""
    async with connected(url) as storage:
        await storage.apply_indexes([])  # the tables
    columns = "namespace, collection, (index_doc ->> 'owner'), id"
    if url.startswith("sqlite"):
        columns = (
            "namespace, collection, (coalesce(json_extract(index_doc, '$.\"owner\"'), '')), id"
        )
    statements = [f"CREATE INDEX {name} ON nexus_records ({columns})"]
    for type_name in types:
        statements.append(
            "INSERT INTO nexus_index_catalog (index_name, message_type, definition, "
            f"created_at) VALUES ('{name}', '{type_name}', 'owner:string', "
            "'2026-01-01 00:00:00')"
        )
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            for statement in statements:
                connection.execute(statement)
            connection.commit()
    else:
        connection = await asyncpg.connect(_pg(url))
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()


async def test_a_collection_name_is_quoted_for_a_postgresql_reading_backslash_escapes(
    postgres_url: str,
) -> None:
    """A server with standard_conforming_strings off (before PostgreSQL 9.1's default)
    reads a backslash in a string literal as an escape: the WHERE of an index must be
    written for the server it is built on, as the list statements are."""
    connection = await asyncpg.connect(_pg(postgres_url))
    try:
        database = await connection.fetchval("SELECT current_database()")
        await connection.execute(
            f'ALTER DATABASE "{database}" SET standard_conforming_strings = off'
        )
        await connection.execute(f'ALTER DATABASE "{database}" SET escape_string_warning = off')
    finally:
        await connection.close()
    collection = "back\\slash\\"
    item = item_type({"owner": "string"}, [["owner"]], collections=[collection])
    (index,) = declared_indexes(item.DESCRIPTOR)
    async with connected(postgres_url) as storage:
        assert (await storage.apply_indexes([item])).created == [index.name]
        assert await index_covers(postgres_url, index.name, collection)
        await assert_list_served(postgres_url, storage, item, collection, index.name)


async def test_a_collection_no_index_can_cover_is_still_listed(tmp_path: Path) -> None:
    """A repository takes any collection name; one no declaration may name (not
    printable: a NUL here, which a SQLite statement's text cannot hold) lists as before."""
    async with connected(f"sqlite:///{tmp_path}/nexus.db") as storage:
        items = storage.namespace("tests/evo").repository(
            orders_pb2.Order, collection="odd\x00name"
        )
        await items.create(orders_pb2.Order(id="o1", customer_id="c1"))
        assert [o.id for o in (await items.list(filter={"customer_id": "c1"})).items] == ["o1"]


async def test_a_full_index_of_the_previous_release_is_replaced_by_partial_ones(
    sql_url: str,
) -> None:
    """Before indexes were partial, one index over every collection was built under the
    name of its keys alone; the first start of this release drops and replaces it."""
    item = item_type({"owner": "string"}, [["owner"]])
    (index,) = declared_indexes(item.DESCRIPTOR)
    old = index.keys_name
    await _previous_release_index(sql_url, old, ["nexus.storage.evo.Item"])
    async with connected(sql_url) as storage:
        changes = await storage.apply_indexes([item])
    assert changes.dropped == [old] and changes.created == [index.name]
    assert set(await index_definitions(sql_url)) == {index.name}


async def test_a_full_index_two_types_shared_in_the_previous_release_is_replaced(
    sql_url: str,
) -> None:
    """Two types declaring the same keys shared one full index before; the first start
    of this release (both types loaded) builds each its partial index and drops the
    shared one, which would otherwise stay, out of the catalog, slowing every write."""
    item = item_type({"owner": "string"}, [["owner"]])
    other = item_type({"owner": "string"}, [["owner"]], name="Other")
    (index,), (other_index,) = declared_indexes(item.DESCRIPTOR), declared_indexes(other.DESCRIPTOR)
    old = index.keys_name
    assert other_index.keys_name == old
    await _previous_release_index(
        sql_url, old, ["nexus.storage.evo.Item", "nexus.storage.evo.Other"]
    )
    async with connected(sql_url) as storage:
        changes = await storage.apply_indexes([item, other])
    assert changes.dropped == [old]
    assert (
        set(changes.created)
        == set(await index_definitions(sql_url))
        == {
            index.name,
            other_index.name,
        }
    )


def test_an_index_covers_the_collections_it_names_each_with_an_index_of_its_own() -> None:
    from nexus.events.v1 import events_pb2

    from nexus_grpc.events.outbox import INBOX_COLLECTION, OUTBOX_COLLECTION
    from nexus_grpc.storage.declared import index_collections

    assert index_collections(events_pb2.Envelope.DESCRIPTOR) == sorted(
        [INBOX_COLLECTION, OUTBOX_COLLECTION]
    )
    two = item_type({"owner": "string"}, [["owner"]], collections=["a", "b"])
    indexes = declared_indexes(two.DESCRIPTOR)
    assert [i.collection for i in indexes] == ["a", "b"]
    assert len({i.name for i in indexes}) == 2 and len({i.keys_name for i in indexes}) == 1
    # The default: the type's own collection, the repositories' default.
    (own,) = declared_indexes(item_type({"owner": "string"}, [["owner"]]).DESCRIPTOR)
    assert own.collection == "nexus.storage.evo.Item"


async def test_mongodb_serves_a_filtered_page_from_the_declared_index(mongo_url: str) -> None:
    async with connected(mongo_url) as storage:
        await load_orders("mongodb", mongo_url, 0, 2_000)
        changes = await storage.apply_indexes([orders_pb2.Order])
        assert set(changes.created) == await nexus_indexes(mongo_url)
        orders = storage.namespace(NAMESPACE).repository(orders_pb2.Order)
        page = await orders.list(
            filter={"customer_id": "c000004"}, order_by="create_time desc", page_size=50
        )
        assert [o.id for o in page.items][:2] == ["o00000999", "o00000998"]
    # The find the repository sends for that page, built by the same functions.
    query = build_query(
        orders_pb2.Order.DESCRIPTOR,
        id_field="id",
        namespace=NAMESPACE,
        collection="nexus.orders.v1.Order",
        filter={"customer_id": "c000004"},
        order_by="create_time desc",
    )
    # Only the first page: SecantusDB's planner scans for any top-level $or, which the
    # keyset bound of the next pages needs (mongod bounds the index scan with it).
    found = mongo_query.find_filter(query, namespace=NAMESPACE, collection=orders.collection)
    with _mongo(mongo_url) as collection:
        cursor = collection.find(found, sort=mongo_query.sort_spec(query), limit=51)
        plan = str(cursor.explain())
    assert "IXSCAN" in plan and INDEX_PREFIX in plan, plan
    assert "COLLSCAN" not in plan, plan


# --- evolution at start ----------------------------------------------------------------


async def _foreign_index(url: str) -> None:
    """An index of the operator's own on the records: nexus must never drop it."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            connection.execute("CREATE INDEX operators_own ON nexus_records (version)")
    elif url.startswith("postgresql"):
        connection = await asyncpg.connect(_pg(url))
        try:
            await connection.execute("CREATE INDEX operators_own ON nexus_records (version)")
        finally:
            await connection.close()
    else:
        with _mongo(url) as collection:
            collection.create_index([("version", 1)], name="operators_own")


async def _has_foreign_index(url: str) -> bool:
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as connection:
            row = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'operators_own'"
            ).fetchone()
        return row is not None
    if url.startswith("postgresql"):
        connection = await asyncpg.connect(_pg(url))
        try:
            return bool(
                await connection.fetchval("SELECT to_regclass('operators_own') IS NOT NULL")
            )
        finally:
            await connection.close()
    with _mongo(url) as collection:
        return "operators_own" in collection.index_information()


def _names(message_type: type[Message], url: str = "") -> set[str]:
    """The names of the indexes ``message_type`` declares, as built on ``url``'s backend
    (MongoDB: one per set of keys, whatever the collections)."""
    indexes = declared_indexes(message_type.DESCRIPTOR)
    if url.startswith("mongodb"):
        return {index.keys_name for index in indexes}
    return {index.name for index in indexes}


async def test_indexes_follow_the_contract_from_one_start_to_the_next(any_url: str) -> None:
    v1 = item_type({"owner": "string", "rank": "int64"}, [["owner", "rank desc"]])
    async with connected(any_url) as storage:
        first = await storage.apply_indexes([v1])
        items = storage.namespace("tests/evo").repository(v1)
        for number, owner, rank in ((1, "ann", 5), (2, "bob", 7), (3, "ann", 9)):
            await items.create(v1(id=f"i{number}", owner=owner, rank=rank))
    assert first.created == sorted(_names(v1, any_url)) and not first.dropped
    assert await nexus_indexes(any_url) == _names(v1, any_url)
    await _foreign_index(any_url)

    # Version 2 adds a field and indexes it instead: built at start, the old one dropped.
    v2 = item_type({"owner": "string", "rank": "int64", "region": "string"}, [["region"]])
    async with connected(any_url) as storage:
        second = await storage.apply_indexes([v2])
        assert second.created == sorted(_names(v2, any_url)) and second.dropped == sorted(
            _names(v1, any_url)
        )
        assert await nexus_indexes(any_url) == _names(v2, any_url)
        assert await _has_foreign_index(any_url)
        items = storage.namespace("tests/evo").repository(v2)
        # Records written by version 1 read fine, and lack the new field: a filter on it
        # finds them under its default, as reading them shows.
        old = await items.get("i1")
        assert old is not None and old.owner == "ann" and old.region == ""
        await items.create(v2(id="i4", owner="cy", rank=1, region="eu"))
        unset = await items.list(filter={"region": ""})
        assert [item.id for item in unset.items] == ["i1", "i2", "i3"]
        assert [item.id for item in (await items.list(filter={"region": "eu"})).items] == ["i4"]
        # Starting again with the same contract changes nothing.
        again = await storage.apply_indexes([v2])
        assert not again.created and not again.dropped and not again.reindexed


async def test_an_index_two_types_declare_is_dropped_when_neither_does(any_url: str) -> None:
    # Two types kept in one collection (say, an old and a new message for the same
    # records), declaring the same index over it.
    shelf = ["shelf"]
    item = item_type({"owner": "string"}, [["owner"]], collections=shelf)
    other = item_type({"owner": "string"}, [["owner"]], name="Other", collections=shelf)
    (shared,) = _names(item, any_url)
    assert _names(other, any_url) == {shared}  # the same declaration is the same index
    async with connected(any_url) as storage:
        await storage.apply_indexes([item, other])
    # A later start loads only Item, which stopped declaring it: Other still does.
    async with connected(any_url) as storage:
        kept = await storage.apply_indexes([item_type({"owner": "string"}, [])])
        assert not kept.dropped and await nexus_indexes(any_url) == {shared}
        gone = await storage.apply_indexes([item_type({"owner": "string"}, [], name="Other")])
        assert gone.dropped == [shared] and await nexus_indexes(any_url) == set()


async def test_an_index_two_types_stop_declaring_in_one_start_is_dropped(any_url: str) -> None:
    shelf = ["shelf"]
    item = item_type({"owner": "string"}, [["owner"]], collections=shelf)
    other = item_type({"owner": "string"}, [["owner"]], name="Other", collections=shelf)
    (shared,) = _names(item, any_url)
    async with connected(any_url) as storage:
        await storage.apply_indexes([item, other])
    # Both loaded, neither declaring it any more: neither keeps it for the other.
    async with connected(any_url) as storage:
        gone = await storage.apply_indexes(
            [item_type({"owner": "string"}, []), item_type({"owner": "string"}, [], name="Other")]
        )
        assert gone.dropped == [shared] and await nexus_indexes(any_url) == set()
        again = await storage.apply_indexes([item_type({"owner": "string"}, [])])
        assert not again.dropped and not again.created


async def test_a_field_type_change_reindexes_so_filters_agree_with_the_payloads(
    any_url: str,
) -> None:
    v1 = item_type({"owner": "string", "rank": "int64"}, [["rank"]])
    async with connected(any_url) as storage:
        await storage.apply_indexes([v1])
        items = storage.namespace("tests/evo").repository(v1)
        for number, rank in ((1, 5), (2, 0), (3, 9)):
            await items.create(v1(id=f"i{number}", owner="ann", rank=rank))
    # rank becomes a string (buf breaking would refuse this). The old payloads carry a
    # varint where a string is now expected: parsed with the new type, their rank is
    # empty (the old value stays in the unknown fields). Filters must say the same.
    v2 = item_type({"owner": "string", "rank": "string"}, [["rank"]])
    async with connected(any_url) as storage:
        changes = await storage.apply_indexes([v2])
        assert changes.reindexed == ["nexus.storage.evo.Item"]
        assert changes.created == sorted(_names(v2, any_url)) and changes.dropped == sorted(
            _names(v1, any_url)
        )
        items = storage.namespace("tests/evo").repository(v2)
        read = [await items.get(f"i{number}") for number in (1, 2, 3)]
        assert [item.rank for item in read if item is not None] == ["", "", ""]
        empty = await items.list(filter={"rank": ""})
        assert [item.id for item in empty.items] == ["i1", "i2", "i3"]
        assert (await items.list(filter={"rank": "5"})).items == []
        await items.create(v2(id="i4", rank="5"))
        assert [item.id for item in (await items.list(filter={"rank": "5"})).items] == ["i4"]


async def test_processes_starting_together_build_each_index_once(any_url: str) -> None:
    v1 = item_type({"owner": "string", "rank": "int64"}, [["owner"], ["rank desc", "owner"]])
    storages = [await Storage.connect(any_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(s.apply_indexes([v1]) for s in storages))
    finally:
        for storage in storages:
            await storage.close()
    built = [name for result in results for name in result.created]
    assert await nexus_indexes(any_url) == _names(v1, any_url)
    assert set(built) == _names(v1, any_url)


_START_SCRIPT = """
import asyncio, json, sys
from nexus.events.v1 import events_pb2
from nexus.orders.v1 import orders_pb2
from nexus_grpc.storage import Storage

async def main():
    async with await Storage.connect(sys.argv[1]) as storage:
        changes = await storage.apply_indexes([orders_pb2.Order, events_pb2.Envelope])
    print(json.dumps({"created": changes.created, "dropped": changes.dropped}))

asyncio.run(main())
"""


async def test_processes_of_their_own_starting_together_replace_an_index_once(
    sql_url: str,
) -> None:
    """Three interpreters (workers or replicas of a new release) start at once on a
    database holding a previous release's full index: each index is built once, the old
    one dropped once, and none of them fails."""
    from nexus.events.v1 import events_pb2

    old = declared_indexes(orders_pb2.Order.DESCRIPTOR)[0].keys_name
    await _previous_release_index(sql_url, old, ["nexus.orders.v1.Order"])
    starts = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _START_SCRIPT,
            sql_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await start.communicate() for start in starts]
    for start, (_, err) in zip(starts, outputs, strict=True):
        assert start.returncode == 0, err.decode()
    changes = [json.loads(out) for out, _ in outputs]
    built = [name for change in changes for name in change["created"]]
    dropped = [name for change in changes for name in change["dropped"]]
    wanted = _names(orders_pb2.Order) | _names(events_pb2.Envelope)
    assert sorted(built) == sorted(wanted)  # each once
    assert dropped == [old]
    assert set(await index_definitions(sql_url)) == wanted


async def test_postgresql_rebuilds_an_index_an_interrupted_build_left_invalid(
    postgres_url: str,
) -> None:
    v1 = item_type({"owner": "string"}, [["owner"]])
    (name,) = _names(v1)
    async with connected(postgres_url) as storage:
        await storage.apply_indexes([v1])
    connection = await asyncpg.connect(_pg(postgres_url))
    try:
        # What a failed CREATE INDEX CONCURRENTLY leaves behind: the index, not valid.
        await connection.execute(
            f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{name}'::regclass"
        )
        async with connected(postgres_url) as storage:
            changes = await storage.apply_indexes([v1])
        valid = await connection.fetchval(
            f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{name}'::regclass"
        )
    finally:
        await connection.close()
    assert changes.created == [name] and valid is True


async def test_a_declaration_the_storage_cannot_index_is_refused_before_any_change(
    tmp_path: Path,
) -> None:
    async with connected(f"sqlite:///{tmp_path}/nexus.db") as storage:
        for indexes, expected in (
            ([["nobody"]], "has no field 'nobody'"),
            ([["owner sideways"]], "expected 'path' or 'path desc'"),
            ([["owner", "owner"]], "names a field twice"),
            ([[]], "names no fields"),
        ):
            broken = item_type({"owner": "string"}, indexes)
            with pytest.raises(IndexDeclarationError, match=expected) as raised:
                await storage.apply_indexes([broken])
            assert "nexus.storage.evo.Item" in str(raised.value)
        for collections, expected in (
            (["a", "a"], "names a collection twice"),
            ([""], "expected 1 to 255 printable characters"),
            (["x" * 256], "expected 1 to 255 printable characters"),
            (["line\nbreak"], "expected 1 to 255 printable characters"),
            ([f"c{n}" for n in range(9)], "names 9 collections; at most 8"),
        ):
            broken = item_type({"owner": "string"}, [["owner"]], collections=collections)
            with pytest.raises(IndexDeclarationError, match=expected) as raised:
                await storage.apply_indexes([broken])
            assert "nexus.storage.evo.Item" in str(raised.value)
        assert await nexus_indexes(f"sqlite:///{tmp_path}/nexus.db") == set()


async def test_the_host_builds_the_indexes_its_contracts_declare_at_start(
    tmp_path: Path,
) -> None:
    from nexus.events.v1 import events_pb2

    from nexus_grpc.testing import running_host

    url = f"sqlite:///{tmp_path}/host.db"
    async with running_host(plugins=["orders"], data_dir=tmp_path, storage_url=url):
        built = await nexus_indexes(url)
    # The orders plugin's lists, and the outbox relay's (every host runs it).
    assert _names(orders_pb2.Order) | _names(events_pb2.Envelope) <= built
