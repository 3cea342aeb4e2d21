"""Repository CRUD, filters, ordering and keyset pagination on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import functools
import json
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
)
from nexus_grpc.storage import InvalidQueryError, Page, Repository, Storage

from . import Widget, widget

Order = orders_pb2.Order
BASE_SECONDS = 1_700_000_000


@pytest.fixture
def orders(storage: Storage) -> Repository[Order]:
    return storage.namespace("plugins/business/orders").repository(Order)


@pytest.fixture
def widgets(storage: Storage) -> Repository[Message]:
    return storage.namespace("tests/widgets").repository(Widget)


def make_order(
    customer_id: str = "c1",
    status: Any = orders_pb2.ORDER_STATUS_PENDING,
    total_cents: int = 0,
    created: int = 0,
    **fields: Any,
) -> Order:
    order = Order(customer_id=customer_id, status=status, total_cents=total_cents, **fields)
    order.create_time.FromSeconds(BASE_SECONDS + created)
    order.items.add(sku="sku-1", quantity=2, unit_price_cents=150)
    return order


async def create_all(repo: Repository[Any], messages: Sequence[Message]) -> list[Any]:
    return [await repo.create(message) for message in messages]


async def list_all(repo: Repository[Any], page_size: int = 1000, **query: Any) -> list[Any]:
    """Every item of a list query, following page tokens."""
    items: list[Any] = []
    token = ""
    while True:
        page = await repo.list(page_size=page_size, page_token=token, **query)
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items


def ids(messages: Sequence[Any], field: str = "id") -> list[str]:
    return [getattr(message, field) for message in messages]


# --- CRUD ---------------------------------------------------------------------------------


async def test_create_then_get_round_trips_the_message(orders: Repository[Order]) -> None:
    original = make_order(id="o-1", note="ring twice", total_cents=2**40)
    original.update_time.FromNanoseconds(123_456_789)

    created = await orders.create(original)
    fetched = await orders.get("o-1")

    assert created == original
    assert fetched == original
    assert fetched is not created


async def test_create_generates_a_uuid7_hex_id_without_touching_the_input(
    orders: Repository[Order],
) -> None:
    original = make_order()

    created = await orders.create(original)

    assert uuid.UUID(hex=created.id).version == 7
    assert created.id == uuid.UUID(created.id).hex
    assert original.id == ""
    assert await orders.get(created.id) == created


async def test_records_given_new_ids_list_in_the_order_they_were_created(
    orders: Repository[Order],
) -> None:
    created = [await orders.create(make_order()) for _ in range(12)]

    page = await orders.list(page_size=50)

    assert [order.id for order in page.items] == [order.id for order in created]


async def test_create_of_an_existing_id_raises_already_exists(orders: Repository[Order]) -> None:
    await orders.create(make_order(id="dup"))

    with pytest.raises(AlreadyExistsError) as caught:
        await orders.create(make_order(id="dup", note="second"))

    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.message == "nexus.orders.v1.Order 'dup' already exists"
    assert (await orders.get("dup")).note == ""  # type: ignore[union-attr]


async def test_get_of_a_missing_id_returns_none(orders: Repository[Order]) -> None:
    assert await orders.get("missing") is None
    assert await orders.get("") is None
    assert await orders.get("x" * 1000) is None


async def test_update_replaces_the_message_and_bumps_the_version(
    orders: Repository[Order],
) -> None:
    created = await orders.create(make_order(id="o-1", note="before"))
    before = await orders.get_record("o-1")
    created.note = "after"
    del created.items[:]

    updated = await orders.update(created)
    after = await orders.get_record("o-1")

    assert updated == created
    assert before is not None
    assert after is not None
    assert after.message == created
    assert (before.version, after.version) == (1, 2)
    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    assert after.updated_at.tzinfo is not None


async def test_update_of_a_missing_id_raises_not_found(orders: Repository[Order]) -> None:
    with pytest.raises(NotFoundError) as caught:
        await orders.update(make_order(id="ghost"))

    assert caught.value.message == "nexus.orders.v1.Order 'ghost' not found"
    assert await orders.get("ghost") is None


async def test_update_with_a_stale_expected_version_raises_conflict(
    orders: Repository[Order],
) -> None:
    created = await orders.create(make_order(id="o-1"))
    await orders.update(created, expected_version=1)

    with pytest.raises(ConflictError, match="version 2, expected 1"):
        await orders.update(created, expected_version=1)
    with pytest.raises(NotFoundError):
        await orders.update(make_order(id="ghost"), expected_version=1)
    assert (await orders.get_record("o-1")).version == 2  # type: ignore[union-attr]


async def test_delete_returns_whether_a_record_was_deleted(orders: Repository[Order]) -> None:
    await orders.create(make_order(id="o-1"))

    assert await orders.delete("o-1") is True
    assert await orders.delete("o-1") is False
    assert await orders.delete("never") is False
    assert await orders.get("o-1") is None


async def test_delete_many_deletes_only_those_ids_of_its_collection(storage: Storage) -> None:
    namespace = storage.namespace("plugins/business/orders")
    orders = namespace.repository(Order)
    notes = namespace.repository(Order, collection="notes")
    other = storage.namespace("plugins/business/other").repository(Order)
    for repository in (orders, notes, other):
        for number in range(5):
            await repository.create(make_order(id=f"o-{number}"))

    gone = ["o-0", "o-2", "o-2", "o-4", "never", "x" * 10_000]
    assert await orders.delete_many(gone) == 3
    assert await orders.delete_many(gone) == 0
    assert await orders.delete_many([]) == 0
    assert [o.id for o in (await orders.list()).items] == ["o-1", "o-3"]
    assert len((await notes.list()).items) == 5  # same ids, another collection
    assert len((await other.list()).items) == 5  # same ids, another namespace

    async def delete_then_fail() -> None:
        async with namespace.transaction() as unit:
            assert await unit.repository(Order).delete_many(["o-1", "o-3"]) == 2
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await delete_then_fail()
    assert [o.id for o in (await orders.list()).items] == ["o-1", "o-3"]
    async with namespace.transaction() as unit:
        assert await unit.repository(Order).delete_many(["o-1"]) == 1
    assert [o.id for o in (await orders.list()).items] == ["o-3"]


@pytest.mark.parametrize("count", [1, 3, 128, 256, 257, 300])
async def test_delete_many_deletes_every_id_asked_whatever_their_count(
    storage: Storage, count: int
) -> None:
    """Up to MAX_DELETE_IDS ids go as one point statement, its id list padded to a
    power of two with repeats (which must not be counted twice); more go as one
    statement built per call."""
    namespace = storage.namespace("plugins/business/orders")
    orders = namespace.repository(Order)
    keep = namespace.repository(Order, collection="kept")
    async with namespace.transaction() as unit:
        for number in range(count + 2):
            await unit.repository(Order).create(make_order(id=f"o-{number:04d}"))
        await unit.repository(Order, collection="kept").create(make_order(id="o-0000"))
    asked = [f"o-{number:04d}" for number in range(count)] + ["missing"]
    assert await orders.delete_many(reversed(asked)) == count
    left = (await orders.list(page_size=100)).items
    assert [o.id for o in left] == [f"o-{count:04d}", f"o-{count + 1:04d}"]
    assert await keep.get("o-0000") is not None


@pytest.mark.parametrize("in_unit", [False, True])
@pytest.mark.parametrize("count", [256, 300])
async def test_delete_many_at_and_past_the_point_statement_limit(
    storage: Storage, count: int, in_unit: bool
) -> None:
    """Exactly MAX_DELETE_IDS distinct ids (repeats do not count) still go as one point
    statement; more go as a statement built per call; both inside a unit of work too."""
    namespace = storage.namespace("plugins/business/orders")
    async with namespace.transaction() as unit:
        for number in range(count + 1):
            await unit.repository(Order).create(make_order(id=f"o-{number:04d}"))
    ids = [f"o-{number:04d}" for number in range(count)]
    if in_unit:
        async with namespace.transaction() as unit:
            assert await unit.repository(Order).delete_many(ids + ids[:5]) == count
    else:
        assert await namespace.repository(Order).delete_many(ids + ids[:5]) == count
    left = (await namespace.repository(Order).list()).items
    assert [o.id for o in left] == [f"o-{count:04d}"]


async def test_custom_collection_and_id_field(storage: Storage) -> None:
    namespace = storage.namespace("tests/widgets")
    by_key = namespace.repository(Widget, collection="widgets-by-key", id_field="key")
    by_id = namespace.repository(Widget)

    created = await by_key.create(widget(key="k1", id="not-the-id", name="w"))
    generated = await by_key.create(widget(name="auto"))

    assert await by_key.get("k1") == created
    assert len(generated.key) == 32  # type: ignore[attr-defined]
    assert await by_id.get("not-the-id") is None  # another collection
    assert by_key.collection == "widgets-by-key"
    assert by_id.collection == "nexus.storage.test.Widget"
    with pytest.raises(AlreadyExistsError, match="widgets-by-key 'k1' already exists"):
        await by_key.create(widget(key="k1"))


@pytest.mark.parametrize(
    ("id_field", "problem"),
    [("nope", "has no field 'nope'"), ("count", "singular string"), ("tags", "singular string")],
)
def test_repository_rejects_an_unusable_id_field(
    storage: Storage, id_field: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        storage.namespace("tests").repository(Widget, id_field=id_field)


async def test_messages_of_another_type_are_refused(orders: Repository[Order]) -> None:
    with pytest.raises(TypeError, match=r"expected a nexus\.orders\.v1\.Order"):
        await orders.create(widget(id="w"))  # type: ignore[arg-type]


async def test_an_overlong_id_is_an_invalid_argument(orders: Repository[Order]) -> None:
    with pytest.raises(InvalidArgumentError, match="at most 255 characters"):
        await orders.create(make_order(id="x" * 256))
    with pytest.raises(NotFoundError):
        await orders.update(make_order(id="x" * 256))
    assert await orders.delete("x" * 256) is False


async def test_a_nul_in_an_indexed_string_is_refused_where_the_database_cannot_index_it(
    storage: Storage, orders: Repository[Order]
) -> None:
    order = make_order(id="n1")
    order.customer_id = "a\x00b"
    if storage.dialect != "postgresql":
        assert (await orders.create(order)).customer_id == "a\x00b"
        return
    with pytest.raises(InvalidArgumentError, match="customer_id") as refused:
        await orders.create(order)
    assert "must not contain NUL characters" in str(refused.value)
    await orders.create(make_order(id="n1"))
    with pytest.raises(InvalidArgumentError, match="customer_id"):
        await orders.update(order)


async def test_an_id_with_nul_is_an_invalid_argument_and_no_record_has_one(
    orders: Repository[Order],
) -> None:
    with pytest.raises(InvalidArgumentError, match="must not contain NUL characters"):
        await orders.create(make_order(id="a\x00b"))
    assert await orders.get("a\x00b") is None
    assert await orders.get_record("a\x00b") is None
    with pytest.raises(NotFoundError):
        await orders.update(make_order(id="a\x00b"))
    assert await orders.delete("a\x00b") is False
    assert await orders.delete_many(["a\x00b"]) == 0
    for nul_filter in ({"id": "a\x00b"}, {"customer_id": ["ok", "a\x00b"]}):
        with pytest.raises(InvalidQueryError, match="must not contain NUL characters"):
            await orders.list(filter=nul_filter)


# --- filters ------------------------------------------------------------------------------


@pytest.fixture
async def seeded(orders: Repository[Order]) -> list[Order]:
    """Six orders of two customers in all kinds of states."""
    pending, confirmed = orders_pb2.ORDER_STATUS_PENDING, orders_pb2.ORDER_STATUS_CONFIRMED
    rejected, cancelled = orders_pb2.ORDER_STATUS_REJECTED, orders_pb2.ORDER_STATUS_CANCELLED
    return await create_all(
        orders,
        [
            make_order("c1", pending, 100, created=1, id="a"),
            make_order("c1", confirmed, 2**40, created=2, id="b"),
            make_order("c2", pending, 5, created=3, id="c"),
            make_order("c2", rejected, 10, created=4, id="d"),
            make_order("c1", cancelled, 9, created=5, id="e"),
            make_order("c2", confirmed, 100, created=6, id="f"),
        ],
    )


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({}, "abcdef"),
        ({"customer_id": "c1"}, "abe"),
        ({"customer_id": "nobody"}, ""),
        ({"total_cents": 100}, "af"),
        ({"total_cents": 2**40}, "b"),
        ({"customer_id": "c2", "total_cents": 100}, "f"),
        ({"status": [1, 2]}, "abcf"),
        ({"status": ("ORDER_STATUS_REJECTED", "ORDER_STATUS_CANCELLED")}, "de"),
        ({"status": "ORDER_STATUS_CONFIRMED"}, "bf"),
        ({"status": 2}, "bf"),
        ({"status": ["ORDER_STATUS_PENDING", 4]}, "ace"),
        ({"customer_id": ["c1", "c2"], "status": [3]}, "d"),
        ({"id": "c"}, "c"),
        ({"id": ["a", "f", "zzz"]}, "af"),
        ({"status": []}, ""),
        ({"note": ""}, "abcdef"),
    ],
)
async def test_filter_selects_matching_records(
    orders: Repository[Order], seeded: list[Order], filter: dict[str, Any], expected: str
) -> None:
    page = await orders.list(filter=filter)

    assert "".join(ids(page.items)) == expected
    assert page.next_page_token == ""


@pytest.mark.parametrize(
    "value",
    [
        datetime.fromtimestamp(BASE_SECONDS + 3, UTC),
        datetime.fromtimestamp(BASE_SECONDS + 3, UTC).astimezone(timezone(timedelta(hours=5))),
        timestamp_pb2.Timestamp(seconds=BASE_SECONDS + 3),
    ],
)
async def test_filter_by_timestamp_accepts_datetimes_and_timestamps(
    orders: Repository[Order], seeded: list[Order], value: object
) -> None:
    page = await orders.list(filter={"create_time": value})

    assert ids(page.items) == ["c"]


async def test_filter_by_nested_paths_and_other_scalar_types(
    widgets: Repository[Message],
) -> None:
    await create_all(
        widgets,
        [
            widget(id="w1", dims={"width": 3, "unit": "cm", "inner": {"flag": True}}),
            widget(id="w2", dims={"width": 4, "inner": {"ratio": 0.25}}, serial=2**64 - 1),
            widget(id="w3", weight=1.5, active=True, ttl={"seconds": 60}, kind=2),
            widget(id="w4", small=-7, count=-(2**63), seen={"seconds": 10, "nanos": 5}),
        ],
    )

    async def matching(**filter: Any) -> list[str]:
        return ids((await widgets.list(filter=filter)).items)

    assert await matching(**{"dims.width": 3}) == ["w1"]
    assert await matching(**{"dims.width": [3, 4]}) == ["w1", "w2"]
    assert await matching(**{"dims.unit": "cm"}) == ["w1"]
    assert await matching(**{"dims.inner.flag": True}) == ["w1"]
    assert await matching(**{"dims.inner.ratio": 0.25}) == ["w2"]
    assert await matching(serial=2**64 - 1) == ["w2"]
    assert await matching(weight=1.5) == ["w3"]
    assert await matching(weight=0) == ["w1", "w2", "w4"]
    assert await matching(active=True) == ["w3"]
    assert await matching(ttl=timedelta(minutes=1)) == ["w3"]
    assert await matching(kind="KIND_LARGE") == ["w3"]
    assert await matching(small=-7, count=-(2**63)) == ["w4"]
    seen = datetime.fromtimestamp(10, UTC)
    assert await matching(seen=seen) == []  # 5 ns off: compared exactly, not rounded
    assert await matching(seen=timestamp_pb2.Timestamp(seconds=10, nanos=5)) == ["w4"]


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ({"nope": 1}, "filter field 'nope': nexus.orders.v1.Order has no field 'nope'"),
        ({"items": "x"}, "filter field 'items': 'items' is a repeated field"),
        ({"items.sku": "x"}, "filter field 'items.sku': 'items' is a repeated field"),
        ({"create_time.seconds": 1}, "is a google.protobuf.Timestamp and is indexed as a whole"),
        ({"customer_id": 7}, "filter field 'customer_id': expected a string, or a list/tuple"),
        ({"customer_id": None}, "filter field 'customer_id': expected a string"),
        ({"customer_id": {"c1"}}, "filter field 'customer_id': expected a string"),
        ({"total_cents": "100"}, "expected an integer from -9223372036854775808 to"),
        ({"total_cents": 2**63}, "expected an integer from -9223372036854775808 to"),
        ({"total_cents": True}, "filter field 'total_cents': expected an integer"),
        # A string for a number is the type's fault, NUL or not.
        ({"total_cents": "1\x00"}, "filter field 'total_cents': expected an integer"),
        ({"status": ["PENDING\x00"]}, "expected a nexus.orders.v1.OrderStatus value name"),
        ({"total_cents": 1.0}, "filter field 'total_cents': expected an integer"),
        ({"status": "PENDING"}, "expected a nexus.orders.v1.OrderStatus value name such as"),
        ({"status": [1, "BOGUS"]}, "got 'BOGUS'"),
        ({"create_time": datetime(2024, 1, 1)}, "expected a timezone-aware datetime or a"),
        ({"create_time": "2024-01-01"}, "filter field 'create_time': expected a timezone-aware"),
        ({"id": 5}, "filter field 'id': expected a string"),
    ],
)
async def test_invalid_filters_raise_invalid_query_error(
    orders: Repository[Order], filter: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidQueryError) as caught:
        await orders.list(filter=filter)

    assert message in caught.value.message
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.argument == "filter"
    (violation,) = caught.value.violations
    assert violation.field == f"filter.{next(iter(filter))}"


# --- ordering -----------------------------------------------------------------------------


async def test_default_order_is_by_id(orders: Repository[Order]) -> None:
    await create_all(orders, [make_order(id=i) for i in ["m", "b", "z", "a", "B", "10", "9"]])

    page = await orders.list()

    assert ids(page.items) == ["10", "9", "B", "a", "b", "m", "z"]  # code point order


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("total_cents", "cedafb"),  # numerically: 5 < 9 < 10 < 100 = 100 < 2**40
        ("total_cents desc", "bafdec"),  # the id breaks the tie of a and f, ascending
        ("total_cents DESC", "bafdec"),
        ("  total_cents   asc ", "cedafb"),
        ("create_time desc", "fedcba"),
        ("status, create_time desc", "cafbde"),
        ("status desc, customer_id, total_cents desc", "edbfac"),
        ("customer_id desc, status", "cfdabe"),
        ("id desc", "fedcba"),
        ("customer_id, id desc", "ebafdc"),
    ],
)
async def test_order_by(
    orders: Repository[Order], seeded: list[Order], order_by: str, expected: str
) -> None:
    page = await orders.list(order_by=order_by)

    assert "".join(ids(page.items)) == expected


async def test_strings_order_by_code_point_on_every_backend(widgets: Repository[Message]) -> None:
    names = ["b", "B", "a", "é", "A", "Z", "z", "10", "9", "", "ä", "a b", "ab"]
    await create_all(widgets, [widget(id=f"w{i:02}", name=n) for i, n in enumerate(names)])

    listed = await widgets.list(order_by="name")

    assert [w.name for w in listed.items] == sorted(names)  # type: ignore[attr-defined]


async def test_order_by_floats_bools_nested_and_big_unsigned(widgets: Repository[Message]) -> None:
    await create_all(
        widgets,
        [
            widget(id="w1", weight=2.5, active=True, serial=2**63 + 2**20, dims={"width": -1}),
            widget(id="w2", weight=-1.0, active=False, serial=2**64 - 1, dims={"width": 30}),
            widget(id="w3", weight=10.0, active=True, serial=7, dims={"width": 4}),
        ],
    )

    async def ordered(order_by: str) -> list[str]:
        return ids(await list_all(widgets, page_size=1, order_by=order_by))

    assert await ordered("weight") == ["w2", "w1", "w3"]
    assert await ordered("active desc, weight") == ["w1", "w3", "w2"]
    assert await ordered("dims.width desc") == ["w2", "w3", "w1"]
    assert await ordered("serial") == ["w3", "w1", "w2"]
    assert await ordered("serial desc") == ["w2", "w1", "w3"]


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        ("nope", "order_by field 'nope': nexus.orders.v1.Order has no field 'nope'"),
        ("items", "order_by field 'items': 'items' is a repeated field"),
        ("total_cents sideways", "order_by item 'total_cents sideways': expected 'field'"),
        ("total_cents desc extra", "order_by item 'total_cents desc extra': expected"),
        ("status,", "order_by item '': expected 'field'"),
        ("status, status desc", "order_by field 'status' appears more than once"),
    ],
)
async def test_invalid_order_by_raises_invalid_query_error(
    orders: Repository[Order], order_by: str, message: str
) -> None:
    with pytest.raises(InvalidQueryError) as caught:
        await orders.list(order_by=order_by)

    assert message in caught.value.message
    assert caught.value.argument == "order_by"


# --- pagination ---------------------------------------------------------------------------


@pytest.fixture
async def many(storage: Storage, orders: Repository[Order]) -> list[Order]:
    """250 orders with few distinct values per field, so most sort values tie."""
    shuffled = random.Random(7)
    messages = [
        make_order(
            customer_id=f"c{shuffled.randrange(3)}",
            status=shuffled.randrange(5),
            total_cents=shuffled.choice([0, 5, 10, 2**40]),
            created=shuffled.randrange(6),
            id=f"o{number:03}",
        )
        for number in shuffled.sample(range(250), 250)
    ]
    async with storage.namespace("plugins/business/orders").transaction() as unit:
        await create_all(unit.repository(Order), messages)
    return messages


def _python_order(messages: Sequence[Order], keys: list[tuple[str, bool]]) -> list[str]:
    ordered = sorted(messages, key=lambda m: m.id)
    for field, descending in reversed(keys):  # stable sorts, least significant key first
        ordered.sort(key=functools.partial(_sort_value, field=field), reverse=descending)
    return ids(ordered)


def _sort_value(message: Order, field: str) -> Any:
    value = getattr(message, field)
    return value.ToNanoseconds() if isinstance(value, timestamp_pb2.Timestamp) else value


@pytest.mark.parametrize(
    ("order_by", "keys", "page_size"),
    [
        ("", [], 7),
        ("status", [("status", False)], 7),
        ("status desc", [("status", True)], 50),
        ("create_time desc", [("create_time", True)], 1),
        ("customer_id, total_cents desc", [("customer_id", False), ("total_cents", True)], 7),
        (
            "total_cents desc, status, create_time desc",
            [("total_cents", True), ("status", False), ("create_time", True)],
            3,
        ),
    ],
)
async def test_keyset_pagination_returns_every_row_once_in_order(
    orders: Repository[Order],
    many: list[Order],
    order_by: str,
    keys: list[tuple[str, bool]],
    page_size: int,
) -> None:
    pages: list[Page[Order]] = []
    token = ""
    while True:
        page = await orders.list(order_by=order_by, page_size=page_size, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break

    listed = [item for page in pages for item in page.items]
    assert ids(listed) == _python_order(many, keys)
    assert len(pages) == -(-250 // page_size)
    assert all(len(page.items) == page_size for page in pages[:-1])


async def test_pagination_with_a_filter(orders: Repository[Order], many: list[Order]) -> None:
    query = {"filter": {"status": [1, "ORDER_STATUS_CANCELLED"]}, "order_by": "create_time desc"}

    listed = await list_all(orders, page_size=9, **query)

    expected = [m for m in many if m.status in (1, 4)]
    assert ids(listed) == _python_order(expected, [("create_time", True)])


async def test_the_page_that_ends_the_list_has_no_token(orders: Repository[Order]) -> None:
    await create_all(orders, [make_order(id=f"o{n}") for n in range(4)])

    first = await orders.list(page_size=2)
    second = await orders.list(page_size=2, page_token=first.next_page_token)
    whole = await orders.list(page_size=4)

    assert (ids(first.items), ids(second.items)) == (["o0", "o1"], ["o2", "o3"])
    assert first.next_page_token != ""
    assert second.next_page_token == ""
    assert whole.next_page_token == ""


async def test_deleting_seen_rows_does_not_shift_the_next_page(
    orders: Repository[Order],
) -> None:
    await create_all(orders, [make_order(id=f"o{n}") for n in range(6)])
    first = await orders.list(page_size=3)

    for seen in first.items:
        await orders.delete(seen.id)
    second = await orders.list(page_size=3, page_token=first.next_page_token)

    assert ids(second.items) == ["o3", "o4", "o5"]  # OFFSET 3 would have skipped them all


async def test_page_size_may_change_between_pages(orders: Repository[Order]) -> None:
    await create_all(orders, [make_order(id=f"o{n}") for n in range(5)])

    first = await orders.list(page_size=1)
    rest = await orders.list(page_size=10, page_token=first.next_page_token)

    assert ids(first.items + rest.items) == [f"o{n}" for n in range(5)]


@pytest.mark.parametrize("page_size", [0, -1, 1001, True])
async def test_page_size_must_be_1_to_1000(orders: Repository[Order], page_size: int) -> None:
    with pytest.raises(InvalidQueryError, match="page_size must be") as caught:
        await orders.list(page_size=page_size)

    assert caught.value.argument == "page_size"


async def test_page_size_bounds_are_accepted(orders: Repository[Order]) -> None:
    await orders.create(make_order(id="o"))

    assert len((await orders.list(page_size=1)).items) == 1
    assert len((await orders.list(page_size=1000)).items) == 1


async def test_a_token_is_rejected_by_a_query_with_another_filter_or_order(
    orders: Repository[Order], storage: Storage
) -> None:
    await create_all(orders, [make_order(id=f"o{n}", customer_id="c1") for n in range(3)])
    token = (await orders.list(filter={"customer_id": "c1"}, page_size=1)).next_page_token

    changes: list[dict[str, Any]] = [
        {"filter": {"customer_id": "c2"}},
        {"filter": {}},
        {"filter": {"customer_id": "c1"}, "order_by": "create_time"},
    ]
    for changed in changes:
        with pytest.raises(InvalidQueryError, match="page_token was issued for a different query"):
            await orders.list(page_size=1, page_token=token, **changed)
    other = storage.namespace("plugins/business/orders").repository(Order, collection="x")
    with pytest.raises(InvalidQueryError, match="different query"):
        await other.list(filter={"customer_id": "c1"}, page_size=1, page_token=token)
    same = await orders.list(filter={"customer_id": "c1"}, page_size=1, page_token=token)
    assert ids(same.items) == ["o1"]


def _token(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


async def test_enum_names_and_numbers_make_the_same_query(orders: Repository[Order]) -> None:
    await create_all(orders, [make_order(id=f"o{n}", status=1) for n in range(3)])
    first = await orders.list(filter={"status": "ORDER_STATUS_PENDING"}, page_size=1)

    page = await orders.list(filter={"status": 1}, page_size=1, page_token=first.next_page_token)

    assert ids(page.items) == ["o1"]


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        "%%%%",
        _token("just a string"),
        _token({"v": 1}),
        _token({"v": 2, "q": "x", "k": []}),
        "e30",  # {}
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_malformed_page_tokens_are_rejected(orders: Repository[Order], token: str) -> None:
    with pytest.raises(InvalidQueryError) as caught:
        await orders.list(page_token=token)

    assert caught.value.message.startswith("page_token ")
    assert caught.value.argument == "page_token"


async def test_a_token_with_values_of_the_wrong_type_is_malformed(
    orders: Repository[Order],
) -> None:
    await create_all(orders, [make_order(id=f"o{n}") for n in range(3)])
    token = (await orders.list(order_by="total_cents", page_size=1)).next_page_token
    body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    for bad_values in (["text", "o0"], [0], [0, 1], [True, "o0"], [0, "o0", "extra"]):
        forged = _token({**body, "k": bad_values})
        with pytest.raises(InvalidQueryError, match="page_token is malformed"):
            await orders.list(order_by="total_cents", page_size=1, page_token=forged)
