"""The compiled proto3 JSON codec agrees with json_format, the reference, on every case."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from nexus.admin.v1 import admin_pb2
from nexus.orders.v1 import orders_pb2
from transcode.v1 import transcode_pb2 as pb

from nexus_grpc.gateway import fastjson
from nexus_grpc.gateway.timestamps import timestamp_to_json


def full_echo() -> pb.EchoRequest:
    message = pb.EchoRequest(
        id="x",
        nested=pb.Nested(name="n", level=-3, deep=pb.Deep(on=True)),
        tags=["a", "", "c"],
        color=pb.COLOR_GREEN,
        colors=[pb.COLOR_RED, 7],
        big=-(2**63),
        small=2**31 - 1,
        flag=True,
        ratio=-0.5,
        blob=b"\x00\xffbytes",
        labels={"k": "v", "": "empty"},
        huge=2**64 - 1,
        numbered={-1: "minus", 5: "five"},
    )
    message.when.FromJsonString("1970-01-01T00:00:00.000001Z")
    message.wait.FromJsonString("-1.5s")
    message.mask.FromJsonString("a.b,c")
    message.maybe.value = 0
    return message


MESSAGES: list[Message] = [
    pb.EchoRequest(),
    full_echo(),
    pb.EchoRequest(ratio=math.inf),
    pb.EchoRequest(ratio=math.nan),
    pb.EchoRequest(nested=pb.Nested()),
    orders_pb2.Order(id="o", items=[orders_pb2.LineItem(sku="s", quantity=1, unit_price_cents=5)]),
    admin_pb2.Plugin(
        name="p", state=admin_pb2.PLUGIN_STATE_FAILED, services=[admin_pb2.ServiceStatus(name="s")]
    ),
    pb.ListItemsResponse(items=[pb.Item(), pb.Item(number=1)]),
]


def same(a: Any, b: Any) -> bool:
    # NaN != NaN, but both codecs write it as the string "NaN".
    return a == b


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("proto_names", [False, True])
def test_writing_matches_json_format(message: Message, proto_names: bool) -> None:
    expected = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
    assert same(fastjson.to_dict(message, proto_names), expected)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_reading_round_trips(message: Message) -> None:
    for proto_names in (False, True):
        document = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
        parsed = type(message)()
        fastjson.parse_dict(document, parsed)
        reference = type(message)()
        json_format.ParseDict(document, reference)
        assert parsed.SerializeToString(deterministic=True) == reference.SerializeToString(
            deterministic=True
        )


@pytest.mark.parametrize(
    "document",
    [
        {"small": "12"},
        {"small": 1.0},
        {"big": 5},
        {"big": "-5"},
        {"big": "1e3"},
        {"huge": "18446744073709551615"},
        {"ratio": "NaN"},
        {"ratio": "-Infinity"},
        {"ratio": 3},
        {"color": 2},
        {"color": "COLOR_RED"},
        {"blob": "AP8="},
        {"blob": "AP8"},
        {"maybe": None},
        {"tags": None},
        {"when": "2020-01-02T03:04:05+01:00"},
        {"nested": {}},
        {"nested": []},
        {"nested": {"deep": {}}},
        {"numbered": {"3": "x"}},
        {"labels": {"a": "b"}},
        {"mask": "aB.c"},
    ],
)
def test_unusual_valid_input_matches_json_format(document: dict[str, Any]) -> None:
    parsed = pb.EchoRequest()
    fastjson.parse_dict(document, parsed)
    reference = pb.EchoRequest()
    json_format.ParseDict(document, reference)
    assert parsed == reference


@pytest.mark.parametrize(
    "document",
    [
        {"small": 2**31},
        {"small": "x"},
        {"flag": "true"},
        {"color": "COLOR_BLUE"},
        {"nope": 1},
        {"tags": "notalist"},
        {"when": "yesterday"},
        {"id": 5},
        {"huge": -1},
    ],
)
def test_invalid_input_raises_what_json_format_raises(document: dict[str, Any]) -> None:
    with pytest.raises(json_format.ParseError) as reference:
        json_format.ParseDict(document, pb.EchoRequest())
    with pytest.raises(json_format.ParseError) as ours:
        fastjson.parse_dict(document, pb.EchoRequest())
    assert str(ours.value) == str(reference.value)


def test_unknown_fields_can_be_ignored() -> None:
    parsed = pb.EchoRequest()
    fastjson.parse_dict({"id": "a", "zzz": [1]}, parsed, ignore_unknown_fields=True)
    assert parsed == pb.EchoRequest(id="a")


_scalars = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=5),
        "small": st.integers(-(2**31), 2**31 - 1),
        "big": st.integers(-(2**63), 2**63 - 1).map(str),
        "huge": st.integers(0, 2**64 - 1),
        "flag": st.booleans(),
        "ratio": st.floats(allow_nan=False, allow_infinity=False),
        "tags": st.lists(st.text(max_size=3), max_size=3),
        "color": st.sampled_from(["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"]),
        "labels": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
        "nested": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=3), "level": st.integers(-5, 5)}
        ),
    },
)


@settings(max_examples=200, deadline=None)
@given(_scalars)
def test_property_parse_then_write_matches_json_format(document: dict[str, Any]) -> None:
    parsed = pb.EchoRequest()
    fastjson.parse_dict(document, parsed)
    reference = pb.EchoRequest()
    json_format.ParseDict(document, reference)
    assert parsed == reference
    assert fastjson.to_dict(parsed, False) == json_format.MessageToDict(reference)


def _recursive_node() -> type[Message]:
    """``message Node { Node child = 1; int32 v = 2; }`` in a pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="node.proto", package="node", syntax="proto3")
    node = proto.message_type.add(name="Node")
    node.field.add(name="child", number=1, type=11, type_name=".node.Node", label=1)
    node.field.add(name="v", number=2, type=5, label=1)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("node.Node"))


@pytest.mark.parametrize("depth", [101, 900])
def test_deep_nesting_of_a_recursive_message_is_a_client_error(depth: int) -> None:
    # Deeper than Python's stack allows the fast path: the reference parser's depth
    # limit answers (a ParseError, i.e. 400), not a RecursionError (500 and a traceback).
    from nexus_grpc.errors import InvalidArgumentError
    from nexus_grpc.gateway.codec import JsonOptions, loads, parse_json_into

    node = _recursive_node()
    value: Any = {"v": 1}
    for _ in range(depth):
        value = {"child": value}
    with pytest.raises(InvalidArgumentError) as caught:
        parse_json_into(value, node(), JsonOptions(), "body")
    assert "too deep" in caught.value.message
    shallow = node()
    parse_json_into(
        loads(b'{"child": {"child": {"v": 2}}}', "body"), shallow, JsonOptions(), "body"
    )
    assert shallow.child.child.v == 2


_SECONDS = st.integers(-62_135_596_800, 253_402_300_799)
_NANOS = st.one_of(
    st.integers(0, 999_999_999),
    st.integers(0, 999).map(lambda n: n * 1_000_000),
    st.integers(0, 999_999).map(lambda n: n * 1_000),
)


@settings(max_examples=500, deadline=None)
@given(_SECONDS, _NANOS, _SECONDS)
def test_timestamps_are_written_as_to_json_string_writes_them(
    seconds: int, nanos: int, other: int
) -> None:
    # ``other`` comes between two writes of the same second: the kept second is replaced.
    for value in (seconds, seconds, other, seconds):
        stamp = timestamp_pb2.Timestamp(seconds=value, nanos=nanos)
        assert timestamp_to_json(stamp) == stamp.ToJsonString()


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-62_135_596_801, 0), (253_402_300_800, 0), (0, -1), (0, 1_000_000_000), (-1, -5)],
)
def test_a_timestamp_out_of_range_raises_what_to_json_string_raises(
    seconds: int, nanos: int
) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(ValueError, match="Timestamp is not valid") as expected:
        stamp.ToJsonString()
    # Also right after a valid value of the same second (bad nanos): the kept second
    # must not skip the check. (A second out of range is never kept.)
    timestamp_to_json(timestamp_pb2.Timestamp(seconds=seconds if nanos else 0))
    with pytest.raises(ValueError, match="Timestamp is not valid") as raised:
        timestamp_to_json(stamp)
    assert str(raised.value) == str(expected.value)


def test_a_message_with_timestamps_is_written_as_json_format_writes_it() -> None:
    order = orders_pb2.Order(id="o")
    order.create_time.FromJsonString("2026-12-07T10:00:00.5Z")
    order.update_time.FromJsonString("2026-12-07T10:00:00.000000001Z")
    for proto_names in (False, True):
        expected = json_format.MessageToDict(order, preserving_proto_field_name=proto_names)
        assert fastjson.to_dict(order, proto_names) == expected
