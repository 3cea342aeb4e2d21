"""Connecting, schema creation and closing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nexus.orders.v1 import orders_pb2
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from nexus_grpc.storage import RECORDS_TABLE, Storage
from nexus_grpc.storage.schema import INDEX_CATALOG_TABLE, INDEX_RETIRED_TABLE

from . import connected

Order = orders_pb2.Order


async def test_connect_is_idempotent_and_keeps_data(storage_url: str) -> None:
    async with connected(storage_url) as storage:
        await storage.namespace("ns").repository(Order).create(Order(id="kept"))

    async with connected(storage_url) as again:
        assert await again.namespace("ns").repository(Order).get("kept") == Order(id="kept")


async def test_concurrent_first_connects_create_the_schema_once(storage_url: str) -> None:
    # Like several processes starting at once on an empty database.
    storages = await asyncio.gather(*(Storage.connect(storage_url) for _ in range(4)))
    try:
        for number, storage in enumerate(storages):
            await storage.namespace("ns").repository(Order).create(Order(id=str(number)))
        assert len((await storages[0].namespace("ns").repository(Order).list()).items) == 4
    finally:
        await asyncio.gather(*(storage.close() for storage in storages))


async def test_the_schema_has_the_records_table_and_the_index_tables(storage_url: str) -> None:
    if storage_url.startswith("mongodb"):
        pytest.skip("inspects the SQL table; test_mongo.py checks the MongoDB collection")
    async with connected(storage_url):
        pass

    def describe(sync_conn: object) -> tuple[list[str], dict[str, object], list[str]]:
        inspector = inspect(sync_conn)
        columns = {c["name"]: c["type"] for c in inspector.get_columns(RECORDS_TABLE)}
        key = inspector.get_pk_constraint(RECORDS_TABLE)["constrained_columns"]
        return inspector.get_table_names(), columns, key

    if storage_url.startswith("sqlite"):  # SQLite is driven by the synchronous engine
        engine = create_engine(make_url(storage_url).set(drivername="sqlite"))
        try:
            with engine.connect() as conn:
                tables, columns, key = describe(conn)
        finally:
            engine.dispose()
    else:
        async_engine = create_async_engine(storage_url)
        try:
            async with async_engine.connect() as conn:
                tables, columns, key = await conn.run_sync(describe)
        finally:
            await async_engine.dispose()

    assert sorted(tables) == sorted([INDEX_CATALOG_TABLE, INDEX_RETIRED_TABLE, RECORDS_TABLE])
    assert list(columns) == [
        "namespace", "collection", "id", "payload", "index_doc", "version", "created_at",
        "updated_at",
    ]  # fmt: skip
    assert key == ["namespace", "collection", "id"]
    if storage_url.startswith("postgresql"):
        assert type(columns["index_doc"]).__name__ == "JSONB"
        assert getattr(columns["created_at"], "timezone", False) is True


async def test_sqlite_gets_its_directory_and_wal_journal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "nexus.db"

    async with connected(f"sqlite+aiosqlite:///{path}") as storage:
        assert storage.dialect == "sqlite"

    def journal_mode() -> str:
        with sqlite3.connect(path) as conn:
            mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        return mode

    assert await asyncio.to_thread(journal_mode) == "wal"


async def test_a_database_that_cannot_use_wal_is_refused_at_connect(tmp_path: Path) -> None:
    # A VFS without shared memory (as on some network file systems): SQLite answers the
    # WAL pragma with the journal mode it keeps. Nothing is written in that mode.
    path = tmp_path / "no-wal.db"
    with pytest.raises(Exception, match="kept the journal mode 'delete': nexus needs WAL"):
        await Storage.connect(f"sqlite:///file:{path}?vfs=unix-dotfile&uri=true")

    def tables() -> list[Any]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return db.execute("SELECT name FROM sqlite_master").fetchall()

    assert await asyncio.to_thread(tables) == []


async def test_urls_without_a_driver_get_the_async_one(tmp_path: Path) -> None:
    async with connected(f"sqlite:///{tmp_path}/plain.db") as storage:
        await storage.namespace("ns").repository(Order).create(Order(id="x"))
        assert storage.dialect == "sqlite"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+aiomysql://u@localhost/db", "unsupported database 'mysql'"),
        ("sqlite+aiosqlite://", "in-memory SQLite is not supported"),
        ("sqlite+aiosqlite:///:memory:", "in-memory SQLite is not supported"),
        ("not a url", "not a database URL"),
    ],
)
async def test_unsupported_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await Storage.connect(url)


async def test_a_closed_storage_refuses_work(tmp_path: Path) -> None:
    storage = await Storage.connect(f"sqlite+aiosqlite:///{tmp_path}/closed.db")
    repo = storage.namespace("ns").repository(Order)
    await storage.close()
    await storage.close()  # idempotent

    assert storage.closed
    with pytest.raises(RuntimeError, match="storage is closed"):
        await repo.get("x")


async def test_postgres_dialect_and_server_side_types(postgres_url: str) -> None:
    async with connected(postgres_url) as storage:
        assert storage.dialect == "postgresql"
        await storage.namespace("ns").repository(Order).create(Order(id="x", total_cents=2**62))
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(f"SELECT jsonb_typeof(index_doc -> 'total_cents') FROM {RECORDS_TABLE}")
                )
            ).one()
    finally:
        await engine.dispose()

    assert row[0] == "number"
