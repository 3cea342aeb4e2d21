"""Request validation from the nexus.options.v1.rules field options (nexus_grpc.access.validation)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import nexus
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_tools import protoc
from nexus.orders.v1 import orders_pb2

from nexus_grpc.access.validation import ValidationStage, compile_validator
from nexus_grpc.codegen import include_paths
from nexus_grpc.errors import InvalidArgumentError, to_status_proto
from nexus_grpc.pipeline import ErrorStage, chain
from nexus_grpc.routing import Arity, CallHandler, InFlight, MethodInfo

HERE = Path(__file__).parent
REPO_PROTO = Path(__file__).parents[2] / "proto"

COLORS = "must be one of COLOR_UNSPECIFIED, COLOR_RED, COLOR_GREEN"


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """valtest.v1 compiled on the fly; options.proto is only imported, not generated."""
    out = tmp_path_factory.mktemp("valtest_gen")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE / 'proto'}",
            f"-I{REPO_PROTO}",
            *(f"-I{path}" for path in include_paths()),
            f"--python_out={out}",
            "valtest/v1/valtest.proto",
        ]
    )
    assert code == 0, "protoc failed on valtest.proto"
    assert not (out / "nexus").exists()
    for package in (out / "valtest", out / "valtest" / "v1"):
        (package / "__init__.py").write_text("")
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("valtest.v1.valtest_pb2")
    finally:
        sys.path.remove(str(out))


def check(message: Any) -> list[tuple[str, str]]:
    validate = compile_validator(message.DESCRIPTOR)
    assert validate is not None
    return [(v.field, v.description) for v in validate(message)]


Mutation = Callable[[Any, Any], None]


def setting(**values: Any) -> Mutation:
    def mutate(message: Any, pb: Any) -> None:
        for name, value in values.items():
            field = message.DESCRIPTOR.fields_by_name[name]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(message, name).clear()
                for key, item in value(pb).items() if callable(value) else value.items():
                    if isinstance(item, int | str | bytes):
                        getattr(message, name)[key] = item
                    else:
                        getattr(message, name)[key].CopyFrom(item)
            elif field.is_repeated:
                del getattr(message, name)[:]
                getattr(message, name).extend(value(pb) if callable(value) else value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value(pb))
            else:
                setattr(message, name, value)

    return mutate


def clearing(*names: str) -> Mutation:
    def mutate(message: Any, pb: Any) -> None:
        for name in names:
            message.ClearField(name)

    return mutate


# ---------------------------------------------------------------------------- scalars


def valid_scalars(pb: Any) -> Any:
    return pb.Scalars(
        name="n",
        code="abc",
        slug="abc",
        maybe="",
        blob=b"x",
        digest=b"d",
        i32=0,
        i64=1,
        u32=10,
        u64=1,
        s32=0,
        s64=-1,
        f32=2,
        f64=9,
        sf32=0,
        sf64=-10,
        ratio=0.5,
        weight=1.5,
        agreed=True,
        color=1,
        tint=0,
        count=2,
        nick="abc",
        opt=1,
        required_number=-7,
    )


SCALAR_CASES: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    ("valid", setting(), []),
    ("free field is unchecked", setting(free=""), []),
    ("required string", setting(name=""), [("name", "required")]),
    ("min_len", setting(code="a"), [("code", "at least 2 characters")]),
    ("min_len applies to empty", setting(code=""), [("code", "at least 2 characters")]),
    ("max_len", setting(code="abcde"), [("code", "at most 4 characters")]),
    ("lengths count characters", setting(code="éèàü"), []),
    ("pattern", setting(slug="ab1"), [("slug", "must match [a-z]+")]),
    ("pattern is a full match", setting(slug="abc\n"), [("slug", "must match [a-z]+")]),
    ("pattern checks empty", setting(slug=""), [("slug", "must match [a-z]+")]),
    ("pattern allowing empty", setting(maybe=""), []),
    ("pattern allowing empty, bad", setting(maybe="A"), [("maybe", "must match ([a-z]+)?")]),
    ("required bytes", setting(blob=b""), [("blob", "required")]),
    ("max_len counts bytes", setting(blob="éé".encode()), [("blob", "at most 3 bytes")]),
    ("min_len of one byte", setting(digest=b""), [("digest", "at least 1 byte")]),
    ("int32 below min", setting(i32=-6), [("i32", "must be at least -5")]),
    ("int32 above max", setting(i32=6), [("i32", "must be at most 5")]),
    ("int32 bounds inclusive", setting(i32=-5), []),
    ("int32 bounds inclusive, max", setting(i32=5), []),
    ("int64 min applies to zero", setting(i64=0), [("i64", "must be at least 1")]),
    ("uint32 max", setting(u32=11), [("u32", "must be at most 10")]),
    ("uint64 min", setting(u64=0), [("u64", "must be at least 1")]),
    ("uint64 huge", setting(u64=2**64 - 1), [("u64", "must be at most 100")]),
    ("sint32 min", setting(s32=-2), [("s32", "must be at least -1")]),
    ("sint32 max", setting(s32=2), [("s32", "must be at most 1")]),
    ("sint64 negative max", setting(s64=0), [("s64", "must be at most -1")]),
    ("fixed32 min", setting(f32=1), [("f32", "must be at least 2")]),
    ("fixed64 max", setting(f64=10), [("f64", "must be at most 9")]),
    ("sfixed32 max", setting(sf32=1), [("sf32", "must be at most 0")]),
    ("sfixed32 min", setting(sf32=-1), [("sf32", "must be at least 0")]),
    ("sfixed64 min", setting(sf64=-11), [("sf64", "must be at least -10")]),
    ("required double", setting(ratio=0.0), [("ratio", "required")]),
    ("required float", setting(weight=0.0), [("weight", "required")]),
    ("required negative double is set", setting(ratio=-1.0), []),
    ("required bool", setting(agreed=False), [("agreed", "required")]),
    ("required enum", setting(color=0), [("color", "required")]),
    ("defined_only", setting(color=7), [("color", COLORS)]),
    ("defined_only without required", setting(tint=9), [("tint", COLORS)]),
    ("defined_only accepts zero", setting(tint=0), []),
    ("required int", setting(required_number=0), [("required_number", "required")]),
    ("required replaces range", setting(count=0), [("count", "required")]),
    ("range beside required", setting(count=4), [("count", "must be at most 3")]),
    ("required replaces the rest", setting(nick=""), [("nick", "required")]),
    (
        "every rule of a field",
        setting(nick="AB"),
        [("nick", "at least 3 characters"), ("nick", "must match [a-z]+")],
    ),
    ("presence is not consulted", clearing("opt"), [("opt", "must be at least 1")]),
    (
        "every violation, in field order",
        setting(nick="", i32=9, name="", tint=5),
        [
            ("name", "required"),
            ("i32", "must be at most 5"),
            ("tint", COLORS),
            ("nick", "required"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in SCALAR_CASES],
)
def test_scalar_rules(pb: Any, mutate: Mutation, expected: list[tuple[str, str]]) -> None:
    message = valid_scalars(pb)
    mutate(message, pb)
    assert check(message) == expected


# ------------------------------------------------------------------------------ lists


def valid_lists(pb: Any) -> Any:
    return pb.Lists(tags=["a"], scores=[1, 2], opaques=[pb.Opaque()])


def children(*specs: tuple[str, int]) -> Callable[[Any], list[Any]]:
    return lambda pb: [pb.Child(id=i, size=s) for i, s in specs]


LIST_CASES: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    ("valid", setting(), []),
    ("required list", setting(tags=[]), [("tags", "required")]),
    ("max_items", setting(tags=["a", "b", "c", "d"]), [("tags", "at most 3 items")]),
    (
        "element rules",
        setting(tags=["ok", "Bad", "toolong"]),
        [("tags[1]", "must match [a-z]+"), ("tags[2]", "at most 5 characters")],
    ),
    ("empty element checked", setting(tags=["a", ""]), [("tags[1]", "must match [a-z]+")]),
    (
        "count and elements together",
        setting(tags=["a", "b", "c", "D"]),
        [("tags", "at most 3 items"), ("tags[3]", "must match [a-z]+")],
    ),
    ("min_items", setting(scores=[1]), [("scores", "at least 2 items")]),
    ("min_items on empty", setting(scores=[]), [("scores", "at least 2 items")]),
    (
        "element range",
        setting(scores=[-1, 50, 101]),
        [("scores[0]", "must be at least 0"), ("scores[2]", "must be at most 100")],
    ),
    ("element defined_only", setting(colors=[1, 5, 2]), [("colors[1]", COLORS)]),
    (
        "message elements",
        setting(children=children(("a", 1), ("", 0))),
        [("children[1].id", "required"), ("children[1].size", "must be at least 1")],
    ),
    (
        "message list max_items",
        setting(children=children(("a", 1), ("b", 1), ("", 1))),
        [("children", "at most 2 items"), ("children[2].id", "required")],
    ),
    ("bytes elements", setting(chunks=[b"ab", b"abc"]), [("chunks[1]", "at most 2 bytes")]),
    ("min_items of one", setting(opaques=[]), [("opaques", "at least 1 item")]),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in LIST_CASES],
)
def test_repeated_rules(pb: Any, mutate: Mutation, expected: list[tuple[str, str]]) -> None:
    message = valid_lists(pb)
    mutate(message, pb)
    assert check(message) == expected


# ------------------------------------------------------------------------------- maps


def valid_maps(pb: Any) -> Any:
    message = pb.Maps()
    message.by_number[1].CopyFrom(pb.Child(id="a", size=1))
    return message


MAP_CASES: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    ("valid", setting(), []),
    (
        "max_items",
        setting(labels={"a": "x", "b": "y", "c": "z"}),
        [("labels", "at most 2 items")],
    ),
    (
        "value rules, in key order",
        setting(labels={"k": "ABC", "j": "abcd"}),
        [('labels["j"]', "at most 3 characters"), ('labels["k"]', "must match [a-z]*")],
    ),
    (
        "keys are quoted",
        setting(labels={'say "hi"': "A"}),
        [('labels["say \\"hi\\""]', "must match [a-z]*")],
    ),
    ("required map", setting(by_number={}), [("by_number", "required")]),
    (
        "message values, integer keys in numeric order",
        setting(by_number=lambda pb: {10: pb.Child(id="x"), 2: pb.Child(size=1)}),
        [
            ("by_number[2].id", "required"),
            ("by_number[10].size", "must be at least 1"),
        ],
    ),
    (
        "message values without map rules",
        setting(by_number={}, by_name=lambda pb: {"x": pb.Child(size=3)}),
        [("by_number", "required"), ('by_name["x"].id', "required")],
    ),
    (
        "bool keys",
        setting(flags={True: -1, False: 0}),
        [("flags[true]", "must be at least 0")],
    ),
    ("enum values", setting(paints={"a": 9, "b": 1}), [('paints["a"]', COLORS)]),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in MAP_CASES],
)
def test_map_rules(pb: Any, mutate: Mutation, expected: list[tuple[str, str]]) -> None:
    message = valid_maps(pb)
    mutate(message, pb)
    assert check(message) == expected


# ----------------------------------------------------------------------------- nested


def valid_nested(pb: Any) -> Any:
    message = pb.Nested(child=pb.Child(id="a", size=1))
    message.when.SetInParent()
    message.opaque.SetInParent()
    return message


def deep_wrapper(pb: Any) -> Any:
    return pb.Wrapper(
        inner=pb.Child(id="a", size=1),
        wrappers=[
            pb.Wrapper(inner=pb.Child(id="b", size=1)),
            pb.Wrapper(inner=pb.Child(id="c", size=0)),
        ],
    )


NESTED_CASES: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    ("valid", setting(), []),
    ("required message", clearing("child"), [("child", "required")]),
    (
        "present empty message",
        setting(child=lambda pb: pb.Child()),
        [
            ("child.id", "required"),
            ("child.size", "must be at least 1"),
        ],
    ),
    ("nested field", setting(child=lambda pb: pb.Child(id="", size=1)), [("child.id", "required")]),
    ("unset optional message is not descended", clearing("spare"), []),
    (
        "set optional message is checked",
        setting(spare=lambda pb: pb.Child(id="x")),
        [("spare.size", "must be at least 1")],
    ),
    (
        "set wrapper without its required field",
        setting(wrapper=lambda pb: pb.Wrapper()),
        [("wrapper.inner", "required")],
    ),
    (
        "recursive list deep inside",
        setting(wrapper=deep_wrapper),
        [("wrapper.wrappers[1].inner.size", "must be at least 1")],
    ),
    ("required well-known type", clearing("when"), [("when", "required")]),
    ("required message without rules", clearing("opaque"), [("opaque", "required")]),
    (
        "well-known types are not descended",
        setting(data=lambda pb: struct_pb2.Struct(fields={"x": struct_pb2.Value()})),
        [],
    ),
    (
        "in field order",
        lambda message, pb: (message.ClearField("opaque"), message.child.ClearField("id")),
        [("child.id", "required"), ("opaque", "required")],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in NESTED_CASES],
)
def test_nested_rules(pb: Any, mutate: Mutation, expected: list[tuple[str, str]]) -> None:
    message = valid_nested(pb)
    mutate(message, pb)
    assert check(message) == expected


RECURSIVE_CASES: list[tuple[str, Callable[[Any], Any], list[tuple[str, str]]]] = [
    ("valid", lambda pb: pb.Node(name="root", parent=pb.Node(name="p")), []),
    ("own field", lambda pb: pb.Node(), [("name", "required")]),
    (
        "through singular self-reference",
        lambda pb: pb.Node(name="r", parent=pb.Node(name="p", parent=pb.Node())),
        [("parent.parent.name", "required")],
    ),
    (
        "through lists",
        lambda pb: pb.Node(name="r", children=[pb.Node(name="a", children=[pb.Node()])]),
        [("children[0].children[0].name", "required")],
    ),
    (
        "list count at depth",
        lambda pb: pb.Node(
            name="r", children=[pb.Node(name="a", children=[pb.Node(name=n) for n in "xyz"])]
        ),
        [("children[0].children", "at most 2 items")],
    ),
    (
        "through map values",
        lambda pb: pb.Node(name="r", links={"x": pb.Node(name="x", links={"y": pb.Node()})}),
        [('links["x"].links["y"].name', "required")],
    ),
    (
        "mutual recursion",
        lambda pb: pb.Ping(
            label="long", pong=pb.Pong(ping=pb.Ping(pong=pb.Pong(ping=pb.Ping(label="toolong"))))
        ),
        [("pong.ping.pong.ping.label", "at most 3 characters"), ("label", "at most 3 characters")],
    ),
    (
        "type without rules of its own reaching rules",
        lambda pb: pb.Pong(ping=pb.Ping(label="long")),
        [("ping.label", "at most 3 characters")],
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [pytest.param(b, e, id=name) for name, b, e in RECURSIVE_CASES],
)
def test_recursive_types(
    pb: Any, build: Callable[[Any], Any], expected: list[tuple[str, str]]
) -> None:
    assert check(build(pb)) == expected


# -------------------------------------------------------------------- compile and cache


@pytest.mark.parametrize("name", ["Opaque", "Loop", "EmptyRules"])
def test_types_reaching_no_rules_get_no_validator(pb: Any, name: str) -> None:
    assert compile_validator(getattr(pb, name).DESCRIPTOR) is None


def test_a_type_without_rules_still_checks_the_timestamps_it_holds(pb: Any) -> None:
    # Plain has no rules, but a Timestamp field: its range is a rule of its own.
    plain = pb.Plain(text="x", lookup={"k": pb.Opaque(text="y")})
    assert check(plain) == []
    plain.when.seconds = 253_402_300_800
    assert [field for field, _ in check(plain)] == ["when.seconds"]


def test_well_known_types_without_a_range_get_no_validator() -> None:
    assert compile_validator(struct_pb2.Struct.DESCRIPTOR) is None
    assert compile_validator(timestamp_pb2.Timestamp.DESCRIPTOR) is not None


def test_validators_are_compiled_once_per_type(pb: Any) -> None:
    first = compile_validator(pb.Node.DESCRIPTOR)
    assert first is not None
    assert compile_validator(pb.Node.DESCRIPTOR) is first
    assert compile_validator(pb.Lists.DESCRIPTOR) is compile_validator(pb.Lists.DESCRIPTOR)


LOAD_ERRORS = [
    ("BadPattern", "valtest.v1.BadPattern.value", "does not compile"),
    ("MinOnString", "valtest.v1.MinOnString.value", "min/max apply to integer fields only"),
    ("MaxOnDouble", "valtest.v1.MaxOnDouble.value", "min/max apply to integer fields only"),
    ("MinOnEnum", "valtest.v1.MinOnEnum.value", "min/max apply to integer fields only"),
    ("MaxOnBool", "valtest.v1.MaxOnBool.value", "min/max apply to integer fields only"),
    ("MinOnMessage", "valtest.v1.MinOnMessage.value", "min/max apply to integer fields only"),
    ("LenOnInt", "valtest.v1.LenOnInt.value", "min_len/max_len apply to string and bytes"),
    ("PatternOnBytes", "valtest.v1.PatternOnBytes.value", "pattern applies to string fields only"),
    ("DefinedOnString", "valtest.v1.DefinedOnString.value", "defined_only applies to enum"),
    ("ItemsOnScalar", "valtest.v1.ItemsOnScalar.value", "apply to repeated and map fields only"),
    ("LenOnMessage", "valtest.v1.LenOnMessage.value", "min_len/max_len apply to string"),
    ("PatternOnMessageList", "valtest.v1.PatternOnMessageList.values", "pattern applies"),
    ("MinAboveMax", "valtest.v1.MinAboveMax.value", "min 5 is greater than max 1"),
    ("MinLenAboveMaxLen", "valtest.v1.MinLenAboveMaxLen.value", "min_len 5 is greater"),
    ("MinItemsAboveMaxItems", "valtest.v1.MinItemsAboveMaxItems.values", "min_items 5"),
    ("BadPatternInList", "valtest.v1.BadPatternInList.values", "does not compile"),
    ("MinOnStringMapValue", "valtest.v1.MinOnStringMapValue.values", "integer fields only"),
    ("BadNested", "valtest.v1.BadPattern.value", "does not compile"),
]


@pytest.mark.parametrize(("name", "field", "reason"), LOAD_ERRORS, ids=[e[0] for e in LOAD_ERRORS])
def test_unenforceable_rules_fail_at_load_time(pb: Any, name: str, field: str, reason: str) -> None:
    descriptor = getattr(pb, name).DESCRIPTOR
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: ") as caught:
        compile_validator(descriptor)
    assert reason in str(caught.value)
    # Nothing half-built is cached: asking again fails the same way.
    with pytest.raises(ValueError, match=re.escape(field)):
        compile_validator(descriptor)


def test_a_failed_compilation_leaves_valid_types_usable(pb: Any) -> None:
    with pytest.raises(ValueError, match=r"^valtest\.v1\.BadPattern\.value: "):
        compile_validator(pb.BadNested.DESCRIPTOR)
    assert check(pb.Child(id="", size=1)) == [("id", "required")]


def every_message_type(descriptors: Any) -> Iterator[Descriptor]:
    for descriptor in descriptors:
        yield descriptor
        yield from every_message_type(descriptor.nested_types)


def test_every_rule_in_the_repository_contracts_compiles() -> None:
    compiled = 0
    for module in pkgutil.walk_packages(nexus.__path__, "nexus."):
        if module.name.endswith("_pb2"):
            file = importlib.import_module(module.name).DESCRIPTOR
            for descriptor in every_message_type(file.message_types_by_name.values()):
                if compile_validator(descriptor) is not None:
                    compiled += 1
    assert compiled >= 10


# ------------------------------------------------------------------------------ stage


def method_info(service: Any, name: str, plugin: str = "test") -> MethodInfo:
    descriptor = service.methods_by_name[name]
    return MethodInfo(
        f"/{service.full_name}/{name}", plugin, descriptor, Arity.of(descriptor), InFlight()
    )


def valtest_method(pb: Any, name: str) -> MethodInfo:
    return method_info(pb.DESCRIPTOR.services_by_name["ValTest"], name)


class Recorder:
    """A handler recording what it was called with."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def __call__(self, request: Any, context: Any) -> str:
        self.requests.append(request)
        return "handled"


@pytest.mark.parametrize("name", ["NoRules", "UploadPlain"])
async def test_stage_binds_checks_for_a_request_holding_a_timestamp(pb: Any, name: str) -> None:
    handler = Recorder()
    bound = ValidationStage().bind(valtest_method(pb, name), handler)
    assert bound is not handler
    if name == "NoRules":
        assert await bound(pb.Plain(), object()) == "handled"
        with pytest.raises(InvalidArgumentError):
            await bound(pb.Plain(when={"nanos": -1}), object())


def test_stage_returns_next_itself_for_orders_methods_without_rules() -> None:
    service = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"]
    handler = Recorder()
    assert ValidationStage().bind(method_info(service, "WatchOrders"), handler) is handler
    assert ValidationStage().bind(method_info(service, "CreateOrder"), handler) is not handler


def test_unenforceable_rules_fail_when_the_method_is_bound(pb: Any) -> None:
    with pytest.raises(ValueError, match=r"^valtest\.v1\.BadPattern\.value: "):
        ValidationStage().bind(valtest_method(pb, "Broken"), Recorder())


@pytest.mark.parametrize("name", ["Unary", "ServerStream"])
async def test_valid_request_reaches_the_handler(pb: Any, name: str) -> None:
    handler = Recorder()
    bound = ValidationStage().bind(valtest_method(pb, name), handler)
    request = pb.Child(id="a", size=1)
    assert await bound(request, object()) == "handled"
    assert handler.requests == [request]


@pytest.mark.parametrize("name", ["Unary", "ServerStream"])
async def test_invalid_request_never_reaches_the_handler(pb: Any, name: str) -> None:
    handler = Recorder()
    bound = ValidationStage().bind(valtest_method(pb, name), handler)
    with pytest.raises(InvalidArgumentError) as caught:
        await bound(pb.Child(id="", size=0), object())
    assert handler.requests == []
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in error.violations] == [
        ("id", "required"),
        ("size", "must be at least 1"),
    ]
    (bad_request,) = error.details
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("id", "required"),
        ("size", "must be at least 1"),
    ]
    assert error.message == "id: required; size: must be at least 1"


class Aborted(Exception):
    pass


class FakeContext:
    """The parts of a grpc.aio servicer context the error stage uses."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str, Any] | None = None

    def trailing_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str, metadata: Any) -> None:
        self.aborted = (code, details, metadata)
        raise Aborted


async def test_behind_the_error_stage_the_call_ends_invalid_argument_with_bad_request(
    pb: Any,
) -> None:
    handler = Recorder()
    bound = chain([ErrorStage(), ValidationStage()], valtest_method(pb, "Unary"), handler)
    context = FakeContext()
    with pytest.raises(Aborted):
        await bound(pb.Child(size=1), context)
    assert handler.requests == []
    assert context.aborted is not None
    code, details, metadata = context.aborted
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "id: required")
    status = status_pb2.Status.FromString(dict(metadata)["grpc-status-details-bin"])
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert [(v.field, v.description) for v in bad.field_violations] == [("id", "required")]


async def stream_of(*messages: Any) -> AsyncIterator[Any]:
    for message in messages:
        yield message


@pytest.mark.parametrize("name", ["Upload", "Chat"])
async def test_client_streams_are_validated_message_by_message(pb: Any, name: str) -> None:
    seen: list[Any] = []
    errors: list[InvalidArgumentError] = []

    async def handler(requests: AsyncIterator[Any], context: Any) -> None:
        try:
            async for request in requests:
                seen.append(request)
        except InvalidArgumentError as error:
            errors.append(error)
        # A handler that swallows the error cannot read past the bad message.
        with pytest.raises(InvalidArgumentError) as again:
            await requests.__anext__()
        errors.append(again.value)
        raise errors[0]

    good = [pb.Child(id="a", size=1), pb.Child(id="b", size=2)]
    bad = pb.Child(id="c", size=0)
    bound = ValidationStage().bind(valtest_method(pb, name), handler)
    with pytest.raises(InvalidArgumentError) as caught:
        await bound(stream_of(*good, bad, pb.Child(id="d", size=1)), object())
    assert seen == good
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("size", "must be at least 1")
    ]
    assert errors[0] is errors[1]


async def test_a_valid_client_stream_passes_through(pb: Any) -> None:
    received: list[Any] = []

    async def handler(requests: AsyncIterator[Any], context: Any) -> str:
        received.extend([request async for request in requests])
        return "done"

    messages = [pb.Child(id=str(i), size=i + 1) for i in range(3)]
    bound = ValidationStage().bind(valtest_method(pb, "Upload"), handler)
    assert await bound(stream_of(*messages), object()) == "done"
    assert received == messages


# ---------------------------------------------------------------------------- orders


def orders_method(name: str) -> MethodInfo:
    return method_info(orders_pb2.DESCRIPTOR.services_by_name["OrdersService"], name, "orders")


async def test_orders_contract_rejects_bad_line_items() -> None:
    handler: CallHandler = Recorder()
    bound = ValidationStage().bind(orders_method("CreateOrder"), handler)
    request = orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id="c1",
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku="not a sku!", quantity=0, unit_price_cents=5)],
        )
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await bound(request, object())
    assert [v.field for v in caught.value.violations] == [
        "order.items[0].sku",
        "order.items[0].quantity",
    ]
    assert to_status_proto(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


ORDER_CASES: list[tuple[str, Any, list[tuple[str, str]]]] = [
    (
        "CreateOrder",
        orders_pb2.CreateOrderRequest(
            order_id="order-1",
            order=orders_pb2.Order(
                items=[orders_pb2.LineItem(sku="SKU-1", quantity=10_000, unit_price_cents=0)]
            ),
        ),
        [],
    ),
    ("CreateOrder", orders_pb2.CreateOrderRequest(), [("order", "required")]),
    (
        "CreateOrder",
        orders_pb2.CreateOrderRequest(
            order_id="Bad_Id",
            order=orders_pb2.Order(
                note="x" * 501,
                items=[orders_pb2.LineItem(sku="", quantity=10_001, unit_price_cents=-1)] * 101,
            ),
        ),
        [
            ("order.items", "at most 100 items"),
            *[
                violation
                for i in range(101)
                for violation in (
                    (f"order.items[{i}].sku", "required"),
                    (f"order.items[{i}].quantity", "must be at most 10000"),
                    (f"order.items[{i}].unit_price_cents", "must be at least 0"),
                )
            ],
            ("order.note", "at most 500 characters"),
            ("order_id", "must match ^([a-z0-9][a-z0-9-]{0,62})?$"),
        ],
    ),
    ("GetOrder", orders_pb2.GetOrderRequest(), [("id", "required")]),
    (
        "GetOrder",
        orders_pb2.GetOrderRequest(id="Nope"),
        [("id", "must match ^[a-z0-9][a-z0-9-]{0,62}$")],
    ),
    (
        "ListOrders",
        orders_pb2.ListOrdersRequest(page_size=-1, status=42),
        [
            ("page_size", "must be at least 0"),
            (
                "status",
                "must be one of ORDER_STATUS_UNSPECIFIED, ORDER_STATUS_PENDING, "
                "ORDER_STATUS_CONFIRMED, ORDER_STATUS_REJECTED, ORDER_STATUS_CANCELLED",
            ),
        ],
    ),
    (
        "ListOrders",
        orders_pb2.ListOrdersRequest(page_size=1001),
        [("page_size", "must be at most 1000")],
    ),
    ("UpdateOrder", orders_pb2.UpdateOrderRequest(), [("order", "required")]),
    (
        "UpdateOrder",
        orders_pb2.UpdateOrderRequest(order=orders_pb2.Order(items=[orders_pb2.LineItem()])),
        [("order.items[0].sku", "required"), ("order.items[0].quantity", "must be at least 1")],
    ),
    (
        "CancelOrder",
        orders_pb2.CancelOrderRequest(id="o-1", reason="r" * 501),
        [("reason", "at most 500 characters")],
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "expected"),
    ORDER_CASES,
    ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(ORDER_CASES)],
)
def test_orders_contract_rules(
    method: str, request_message: Any, expected: list[tuple[str, str]]
) -> None:
    validate = compile_validator(orders_method(method).descriptor.input_type)
    assert validate is not None
    assert [(v.field, v.description) for v in validate(request_message)] == expected
