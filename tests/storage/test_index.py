"""The index document walker (no database)."""

from __future__ import annotations

import json
import math

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.storage import index_document
from nexus_grpc.storage.index import (
    UnindexedPathError,
    ValueKind,
    descriptor_of,
    document_reader,
    indexed_fields,
    resolve_path,
)

from . import Widget, widget


def test_order_document_has_every_scalar_with_numbers_for_ints_enums_and_times() -> None:
    order = orders_pb2.Order(
        id="o1",
        customer_id="c1",
        status=orders_pb2.ORDER_STATUS_CONFIRMED,
        total_cents=2**62 + 1,
        currency_code="EUR",
    )
    order.items.add(sku="s", quantity=1, unit_price_cents=5)
    order.create_time.seconds, order.create_time.nanos = 1_700_000_000, 123

    document = index_document(order)

    assert document == {
        "id": "o1",
        "customer_id": "c1",
        "status": 2,
        "total_cents": 2**62 + 1,  # a JSON number, not a string, even beyond 2**53
        "currency_code": "EUR",
        "note": "",
        "cancel_reason": "",
        "create_time": 1_700_000_000 * 10**9 + 123,
        "update_time": 0,
    }
    assert json.loads(json.dumps(document)) == document


def test_nested_singular_messages_are_indexed_by_dotted_path() -> None:
    message = widget(dims={"width": 3, "inner": {"ratio": 0.5, "flag": True}})

    document = index_document(message)

    assert document["dims.width"] == 3
    assert document["dims.unit"] == ""
    assert document["dims.inner.ratio"] == 0.5
    assert document["dims.inner.flag"] is True


def test_unset_nested_messages_index_their_defaults_without_being_set() -> None:
    message = widget(name="plain")

    document = index_document(message)

    assert document["dims.width"] == 0
    assert document["dims.inner.flag"] is False
    assert document["seen"] == 0
    assert not message.HasField("dims")  # reading the defaults did not set the field


def test_repeated_map_bytes_and_recursive_fields_are_not_indexed() -> None:
    paths = set(indexed_fields(descriptor_of(Widget)))

    assert paths == {
        "id", "name", "kind", "weight", "active", "serial", "count", "dims.width",
        "dims.unit", "dims.inner.flag", "dims.inner.ratio", "ttl", "seen", "key", "small",
    }  # fmt: skip


def test_timestamp_and_duration_are_integer_nanoseconds() -> None:
    message = widget(seen={"seconds": -5, "nanos": 250}, ttl={"seconds": 90, "nanos": 1})

    document = index_document(message)

    assert document["seen"] == -5 * 10**9 + 250
    assert document["ttl"] == 90 * 10**9 + 1
    assert resolve_path(descriptor_of(Widget), "seen").kind is ValueKind.TIMESTAMP


def test_uint64_and_non_finite_floats() -> None:
    message = widget(serial=2**64 - 1, weight=math.inf)

    document = index_document(message)

    assert document["serial"] == 2**64 - 1
    assert document["weight"] is None  # JSON has no infinity; it sorts as the default


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("nope", "nexus.storage.test.Widget has no field 'nope'"),
        ("tags", "'tags' is a repeated field; repeated fields are not indexed"),
        ("labels", "'labels' is a map field; map fields are not indexed"),
        ("blob", "'blob' is a bytes field; bytes fields are not indexed"),
        ("dims", "'dims' is a message; name one of its scalar fields, e.g. 'dims.width'"),
        ("dims.depth", "nexus.storage.test.Dimensions has no field 'depth'"),
        ("name.first", "'name' is a scalar field and has no field 'first'"),
        ("seen.seconds", "'seen' is a google.protobuf.Timestamp and is indexed as a whole"),
        ("parent.name", "nested too deep or inside a recursive message"),
    ],
)
def test_unindexed_paths_explain_why(path: str, reason: str) -> None:
    with pytest.raises(UnindexedPathError) as caught:
        resolve_path(descriptor_of(Widget), path)

    assert reason in caught.value.reason


def test_generated_reader_matches_reading_each_field() -> None:
    # The per-type reader (one attrgetter, one generated dict display) against the
    # field-by-field definition, on every kind: nested, times, uint64, floats, enums.
    message = widget(
        serial=2**64 - 1,
        weight=-2.5,
        seen={"seconds": -5, "nanos": 250},
        ttl={"seconds": 90, "nanos": 1},
    )
    fields = indexed_fields(descriptor_of(message))
    expected = {path: field.read(message) for path, field in fields.items()}

    assert index_document(message) == expected
    assert list(index_document(message)) == list(fields)  # field order kept
    empty = Widget()
    assert index_document(empty) == {p: f.read(empty) for p, f in fields.items()}


def test_reader_of_types_with_one_or_no_indexed_field() -> None:
    from google.protobuf import duration_pb2, empty_pb2, wrappers_pb2

    assert index_document(empty_pb2.Empty()) == {}
    assert index_document(wrappers_pb2.StringValue(value="x")) == {"value": "x"}
    assert index_document(duration_pb2.Duration(seconds=3)) == {"seconds": 3, "nanos": 0}
    assert document_reader(descriptor_of(empty_pb2.Empty))(empty_pb2.Empty()) == {}
