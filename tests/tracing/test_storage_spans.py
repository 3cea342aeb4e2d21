"""Storage statements as CLIENT spans: SQLite, PostgreSQL, MongoDB and the Redis cache."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nexus.orders.v1 import orders_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from nexus_grpc import tracing
from nexus_grpc.cache import CacheManager
from nexus_grpc.storage import RECORDS_TABLE, Storage
from nexus_grpc.storage.engine import Database
from tests.fixtures.redis import OwnRedis
from tests.tracing._memory import of_kind, parent_id
from tests.tracing.conftest import Spans

SECRET = "customer-7f3a"  # a value that must never appear in a span


@pytest.fixture
def memory(spans: Spans) -> InMemorySpanExporter:
    """The in-memory exporter of the ``spans`` fixture (tracing on for the test)."""
    return spans.exporter


async def _store_and_read(storage: Storage) -> int:
    """Create, read and list an order inside a span "call"; the call's span id."""
    orders = storage.namespace("plugins/business/orders").repository(orders_pb2.Order)
    with tracing.tracer().start_as_current_span("call") as call:
        created = await orders.create(orders_pb2.Order(customer_id=SECRET))
        assert await orders.get(created.id) is not None
        await orders.list(filter={"customer_id": SECRET})
    return call.get_span_context().span_id


def _no_values(exporter: InMemorySpanExporter) -> None:
    """No span holds SECRET: not in its attributes, status or events."""
    for span in exporter.get_finished_spans():
        assert SECRET not in repr(dict(span.attributes or {})), span.name
        assert SECRET not in (span.status.description or ""), span.name
        for event in span.events:
            assert SECRET not in f"{event.name} {dict(event.attributes or {})}", span.name


async def test_sqlite_statements_are_client_spans_of_the_calling_span(
    memory: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with await Storage.connect(f"sqlite:///{tmp_path}/nexus.db") as storage:
        memory.clear()  # the schema creation
        call = await _store_and_read(storage)

    statements = [s for s in of_kind(memory, SpanKind.CLIENT) if parent_id(s) == call]
    operations = [s.attributes["db.operation.name"] for s in statements if s.attributes]
    # Run on the driver's threads: the caller's context went with each statement.
    assert {"INSERT", "SELECT"} <= set(operations)
    insert = next(s for s in statements if s.name == f"INSERT {RECORDS_TABLE}")
    attributes = dict(insert.attributes or {})
    assert attributes["db.system.name"] == "sqlite"
    assert attributes["db.collection.name"] == RECORDS_TABLE
    assert attributes["db.namespace"] == "nexus.db"
    assert "?" in str(attributes["db.query.text"])  # placeholders, not values
    assert "server.address" not in attributes
    _no_values(memory)


async def test_postgresql_statements_carry_the_server_and_placeholders(
    memory: InMemorySpanExporter, postgres_url: str
) -> None:
    async with await Storage.connect(postgres_url) as storage:
        call = await _store_and_read(storage)

    statements = [s for s in of_kind(memory, SpanKind.CLIENT) if parent_id(s) == call]
    select = next(s for s in statements if s.name == f"SELECT {RECORDS_TABLE}")
    attributes = dict(select.attributes or {})
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["server.address"] and isinstance(attributes["server.port"], int)
    assert "$1" in str(attributes["db.query.text"])
    _no_values(memory)


async def test_a_failing_statement_is_an_error_span_without_the_driver_message(
    memory: InMemorySpanExporter, postgres_url: str
) -> None:
    database = await Database.open(postgres_url)
    try:
        with pytest.raises(ProgrammingError), tracing.tracer().start_as_current_span("call"):
            async with database.transaction(write=False) as conn:
                await conn.execute(text(f"SELECT '{SECRET}' FROM does_not_exist"))
    finally:
        await database.close()
    failed = [
        s for s in of_kind(memory, SpanKind.CLIENT) if s.status.status_code is StatusCode.ERROR
    ]
    assert len(failed) == 1
    assert failed[0].attributes is not None
    assert failed[0].attributes["error.type"] == "ProgrammingError"
    assert failed[0].attributes["db.response.status_code"] == "42P01"  # undefined table
    assert SECRET not in (failed[0].status.description or "")


async def test_mongodb_commands_are_client_spans_without_their_documents(
    memory: InMemorySpanExporter, mongo_url: str
) -> None:
    async with await Storage.connect(mongo_url) as storage:
        call = await _store_and_read(storage)

    commands = [s for s in of_kind(memory, SpanKind.CLIENT) if parent_id(s) == call]
    names = {s.attributes["db.operation.name"] for s in commands if s.attributes}
    assert {"insert", "find"} <= names
    find = next(s for s in commands if s.attributes and s.attributes["db.operation.name"] == "find")
    attributes = dict(find.attributes or {})
    assert attributes["db.system.name"] == "mongodb"
    assert attributes["db.collection.name"]
    assert attributes["server.address"] and "db.query.text" not in attributes
    _no_values(memory)


async def test_each_redis_cache_operation_is_one_client_span(
    memory: InMemorySpanExporter, redis_url: str
) -> None:
    manager = CacheManager(redis_url)
    try:
        cache = manager.for_namespace("plugins/business/orders")  # not started: no L1
        with tracing.tracer().start_as_current_span("call") as call:
            await cache.set(SECRET, b"value", ttl=30)
            await cache.get(SECRET)
    finally:
        await manager.close()
    call_id = call.get_span_context().span_id
    redis = [s for s in of_kind(memory, SpanKind.CLIENT) if parent_id(s) == call_id]
    assert [s.name for s in redis] == ["SET PUBLISH", "GET PTTL"]  # one per pipeline
    attributes = dict(redis[0].attributes or {})
    assert attributes["db.system.name"] == "redis" and attributes["server.port"]
    _no_values(memory)


async def test_a_failing_redis_command_puts_neither_key_nor_value_in_span_or_log(
    memory: InMemorySpanExporter, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # redis-py's pipeline errors quote the failed command: "SET <key> <value> PX ...".
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("maxmemory", "1")  # every write now fails with OOM
    manager = CacheManager(own_redis.url)
    try:
        cache = manager.for_namespace("plugins/business/orders")
        with (
            caplog.at_level(logging.WARNING, "nexus.cache"),
            tracing.tracer().start_as_current_span("call"),
        ):
            await cache.set(f"user:{SECRET}", f"card of {SECRET}".encode(), ttl=30)
    finally:
        await manager.close()
        await admin.aclose()
    failed = [
        s for s in of_kind(memory, SpanKind.CLIENT) if s.status.status_code is StatusCode.ERROR
    ]
    assert [s.name for s in failed] == ["SET PUBLISH"]
    assert failed[0].status.description == "OutOfMemoryError"
    assert not failed[0].events  # no exception event: its message is the command
    _no_values(memory)
    logged = [r.getMessage() for r in caplog.records if r.name == "nexus.cache"]
    assert logged and not any(SECRET in line for line in logged), logged


async def test_statement_listeners_exist_only_with_tracing_on(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def listeners() -> tuple[bool, int]:
        database = await Database.open(f"sqlite:///{tmp_path}/nexus.db")
        try:
            driver = database._sqlite
            assert driver is not None
            return driver.carry_context, len(driver.engine.dispatch.before_cursor_execute)
        finally:
            await database.close()

    assert not tracing.enabled()
    assert await listeners() == (False, 0)
    request.getfixturevalue("spans")  # tracing on from here
    assert await listeners() == (True, 1)


async def test_statements_outside_traced_work_make_no_spans(
    memory: InMemorySpanExporter, tmp_path: Path
) -> None:
    # The outbox relay, inbox pruning and health probes run outside any call: a trace
    # of their own for each sweep would bury the requests' traces.
    async with await Storage.connect(f"sqlite:///{tmp_path}/nexus.db") as storage:
        orders = storage.namespace("plugins/business/orders").repository(orders_pb2.Order)
        await orders.create(orders_pb2.Order(customer_id=SECRET))
        await orders.list()
    assert of_kind(memory, SpanKind.CLIENT) == []
