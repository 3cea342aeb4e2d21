"""Declared indexes: real database indexes that the list statements use, and their
evolution at start (added, dropped, a field's type changed), on every backend."""

from __future__ import annotations

import contextlib
import sqlite3
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
from nexus_grpc.storage import mongo_query
from nexus_grpc.storage.declared import INDEX_PREFIX, declared_indexes
from nexus_grpc.storage.query import build_query

from . import backend_url, connected

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "int64": _F.TYPE_INT64}
_versions = iter(range(1, 1000))


def item_type(fields: dict[str, str], indexes: list[list[str]]) -> type[Message]:
    """A version of the message ``nexus.storage.evo.Item``: ``id`` plus ``fields`` (name
    -> "string" / "int64", numbered in order), declaring ``indexes``. Each version lives
    in a pool of its own, as a new contract deployed to a restarted host would."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"evo/item_v{next(_versions)}.proto", package="nexus.storage.evo", syntax="proto3"
    )
    message = fdp.message_type.add(name="Item")
    message.field.add(name="id", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    for number, (name, kind) in enumerate(fields.items(), start=2):
        message.field.add(name=name, number=number, type=_TYPES[kind], label=_F.LABEL_OPTIONAL)
    declared = message.options.Extensions[options_pb2.storage]
    for paths in indexes:
        declared.indexes.add(fields=paths)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("nexus.storage.evo.Item"))


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
        for sql, parameters in selects:
            plan = await query_plan(sql_url, sql, parameters)
            assert INDEX_PREFIX in plan, plan
            if storage.dialect == "sqlite":
                assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
            else:
                assert "Seq Scan" not in plan and "Sort" not in plan, plan


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


