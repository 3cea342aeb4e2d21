"""What only the MongoDB backend has: its documents, indexes, locks and transaction limits.

The behaviour shared with SQL runs on MongoDB through the parametrized storage suite;
these tests look at the stored documents with a raw PyMongo client.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import ConflictError
from nexus_grpc.storage import Repository, Storage

from . import connected, widget

try:
    import pymongo
    from bson.decimal128 import Decimal128

    from nexus_grpc.storage.mongo import (
        RECORDS_COLLECTION,
        MongoBackend,
        MongoRepository,
        TransactionsUnsupportedError,
    )
except ImportError:  # like the server fixture: skipped locally, a failure on CI
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("PyMongo is not installed", allow_module_level=True)

Order = orders_pb2.Order
ORDERS = "nexus.orders.v1.Order"


@pytest.fixture
async def storage(mongo_url: str) -> AsyncIterator[Storage]:
    async with connected(mongo_url) as storage:
        yield storage


@pytest.fixture
async def records(mongo_url: str) -> AsyncIterator[Any]:
    """The raw records collection, through a client of its own."""
    client: Any = pymongo.AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        yield client.get_default_database()[RECORDS_COLLECTION]
    finally:
        await client.close()


async def index_keys(records: Any) -> dict[str, list[tuple[str, int]]]:
    return {name: info["key"] for name, info in (await records.index_information()).items()}


async def test_connect_creates_the_unique_key_index(storage: Storage, records: Any) -> None:
    info = await records.index_information()

    assert storage.dialect == "mongodb"
    assert info["nexus_key"]["key"] == [("ns", 1), ("coll", 1), ("id", 1)]
    assert info["nexus_key"]["unique"] is True
    assert set(info) == {"_id_", "nexus_key"}


async def test_a_record_is_stored_as_the_documented_document(
    storage: Storage, records: Any
) -> None:
    order = Order(
        id="o-1", customer_id="c1", status=orders_pb2.ORDER_STATUS_CONFIRMED, total_cents=2**40
    )
    order.create_time.FromSeconds(1_700_000_000)
    await storage.namespace("plugins/orders").repository(Order).create(order)

    stored = await records.find_one({})

    assert stored["_id"] == f"plugins/orders|{ORDERS}|o-1"
    assert (stored["ns"], stored["coll"], stored["id"]) == ("plugins/orders", ORDERS, "o-1")
    assert Order.FromString(stored["payload"]) == order
    assert stored["doc"]["customer_id"] == "c1"
    assert stored["doc"]["status"] == 2
    assert stored["doc"]["create_time"] == 1_700_000_000 * 10**9
    assert stored["version"] == 1
    assert stored["created_at"] == stored["updated_at"]
    assert stored["created_at"].tzinfo is not None
    assert "lock" not in stored


async def test_nested_paths_are_nested_and_big_numbers_are_decimal128(
    storage: Storage, records: Any
) -> None:
    widgets = storage.namespace("tests").repository(type(widget()))
    await widgets.create(widget(id="big", serial=2**64 - 1, dims={"inner": {"flag": True}}))
    await widgets.create(widget(id="small", serial=7))

    big = await records.find_one({"id": "big"})
    small = await records.find_one({"id": "small"})

    assert big["doc"]["serial"] == Decimal128(str(2**64 - 1))
    assert big["doc"]["dims"]["inner"]["flag"] is True
    assert small["doc"]["serial"] == 7  # the smallest exact type: compares by value
    assert big["doc"]["weight"] == 0.0


async def test_keys_of_collections_containing_the_separator_never_collide(
    storage: Storage, records: Any
) -> None:
    namespace = storage.namespace("ns")
    first = namespace.repository(Order, collection="a|b")
    second = namespace.repository(Order, collection="a")
    await first.create(Order(id="c", note="first"))
    await second.create(Order(id="b|c", note="second"))  # same "ns|a|b|c" unescaped

    assert (await first.get("c")).note == "first"  # type: ignore[union-attr]
    assert (await second.get("b|c")).note == "second"  # type: ignore[union-attr]
    assert sorted(await records.distinct("_id")) == ["ns|a%7Cb|c", "ns|a|b|c"]


async def test_orderings_get_an_index_once_and_the_reverse_order_shares_it(
    storage: Storage, records: Any
) -> None:
    orders = storage.namespace("ns").repository(Order)
    await orders.create(Order(id="o", total_cents=5))

    await orders.list()  # by id: the key index serves it
    assert set(await index_keys(records)) == {"_id_", "nexus_key"}

    await orders.list(order_by="total_cents desc, note")
    await orders.list(order_by="total_cents desc, note")
    await orders.list(order_by="total_cents, note desc, id desc")  # the exact reverse
    created = {k: v for k, v in (await index_keys(records)).items() if k.startswith("nexus_sort_")}

    assert list(created.values()) == [
        [("ns", 1), ("coll", 1), ("doc.total_cents", 1), ("doc.note", -1), ("id", -1)]
    ]


async def test_lists_inside_transactions_create_no_index(storage: Storage, records: Any) -> None:
    async with storage.namespace("ns").transaction() as unit:
        await unit.repository(Order).list(order_by="total_cents")

    assert set(await index_keys(records)) == {"_id_", "nexus_key"}


async def test_documents_lacking_a_field_read_it_as_its_default(
    storage: Storage, records: Any
) -> None:
    orders = storage.namespace("ns").repository(Order)
    await orders.create(Order(id="new", total_cents=5))
    old = Order(id="old")
    # Written when Order had only an id: no other index field.
    await records.insert_one(
        {
            "_id": f"ns|{ORDERS}|old",
            "ns": "ns",
            "coll": ORDERS,
            "id": "old",
            "payload": old.SerializeToString(),
            "doc": {"id": "old"},
            "version": 1,
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
        }
    )

    by_total = await orders.list(order_by="total_cents desc", page_size=1)
    rest = await orders.list(order_by="total_cents desc", page_token=by_total.next_page_token)

    assert [o.id for o in by_total.items + rest.items] == ["new", "old"]
    assert [o.id for o in (await orders.list(filter={"total_cents": 0})).items] == ["old"]
    assert [o.id for o in (await orders.list(filter={"note": ""})).items] == ["new", "old"]


async def test_for_update_takes_the_lock_without_changing_the_record(
    storage: Storage, records: Any
) -> None:
    namespace = storage.namespace("ns")
    created = await namespace.repository(Order).create(Order(id="o", note="kept"))
    before = await namespace.repository(Order).get_record("o")

    async with namespace.transaction() as unit:
        assert await unit.repository(Order).get("o", for_update=True) == created

    after = await namespace.repository(Order).get_record("o")
    assert (await records.find_one({"id": "o"}))["lock"] == 1
    assert after == before  # same message, version and times


async def test_a_conflict_after_the_first_write_aborts_the_transaction(
    storage: Storage,
) -> None:
    namespace = storage.namespace("ns")
    outside = namespace.repository(Order)
    await outside.create(Order(id="held"))
    await outside.create(Order(id="mine", note="before"))

    async def write_mine_then_held() -> None:
        async with namespace.transaction() as unit:
            repo = unit.repository(Order)
            await repo.update(Order(id="mine", note="after"))  # its first write
            try:
                await repo.update(Order(id="held", note="lost"))
            finally:
                with pytest.raises(ConflictError, match="aborted by a conflict"):
                    await repo.get("mine")

    async with namespace.transaction() as holder:
        await holder.repository(Order).get("held", for_update=True)
        with pytest.raises(ConflictError, match="collided with a concurrent change"):
            await write_mine_then_held()

    assert (await outside.get("mine")).note == "before"  # type: ignore[union-attr]
    assert (await outside.get("held")).note == ""  # type: ignore[union-attr]


async def test_waiting_for_a_lock_ends_with_a_conflict_after_the_lock_timeout(
    mongo_url: str,
) -> None:
    storage = Storage(await MongoBackend.open(mongo_url, lock_timeout=0.2))
    try:
        namespace = storage.namespace("ns")
        await namespace.repository(Order).create(Order(id="o"))
        async with namespace.transaction() as holder:
            await holder.repository(Order).get("o", for_update=True)
            started = asyncio.get_running_loop().time()
            with pytest.raises(ConflictError):
                async with namespace.transaction() as waiter:
                    await waiter.repository(Order).get("o", for_update=True)
            waited = asyncio.get_running_loop().time() - started
        assert 0.2 <= waited < 2
    finally:
        await storage.close()


async def test_a_standalone_server_refuses_transactions_but_not_the_rest(
    standalone_mongo_server: Any,
) -> None:
    url = standalone_mongo_server.url("standalone")
    async with connected(url) as storage:
        namespace = storage.namespace("ns")
        await namespace.repository(Order).create(Order(id="o"))

        with pytest.raises(TransactionsUnsupportedError, match="replica set") as caught:
            async with namespace.transaction():
                pytest.fail("the body must not run")

        assert "standalone" in str(caught.value)
        assert await namespace.repository(Order).get("o") == Order(id="o")
        assert [o.id for o in (await namespace.repository(Order).list()).items] == ["o"]


@pytest.mark.parametrize(
    "url", ["mongodb://", "mongodb://host:notaport/db", "mongodb://localhost/bad$name"]
)
async def test_bad_mongodb_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a MongoDB URL"):
        await Storage.connect(url)


async def test_a_closed_storage_refuses_work(mongo_url: str) -> None:
    storage = await Storage.connect(mongo_url)
    repo = storage.namespace("ns").repository(Order)
    await storage.close()
    await storage.close()  # idempotent

    assert storage.closed
    with pytest.raises(RuntimeError, match="storage is closed"):
        await repo.get("x")


def test_the_mongo_repository_overrides_every_public_repository_method() -> None:
    # Inheriting one would run the SQL code on a scope without a SQL connection.
    public = {name for name, _ in inspect.getmembers(Repository) if not name.startswith("_")}

    inherited = {name for name in public if name not in vars(MongoRepository)}

    assert public >= {"create", "get", "get_record", "update", "delete", "list", "collection"}
    assert inherited == set()


async def test_repositories_are_the_shared_repository_class(storage: Storage) -> None:
    repo = storage.namespace("ns").repository(Order)

    assert isinstance(repo, Repository)
    assert isinstance(repo, MongoRepository)
