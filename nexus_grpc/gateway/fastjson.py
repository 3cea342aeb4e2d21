"""Proto3 JSON mapping, compiled per message type.

``json_format`` is pure Python and walks descriptors on every call (~13 µs to write
and ~31 µs to read a small order). Here the walk happens once per message type: each
field gets a converter bound ahead of time, and ``ListFields`` (implemented in C)
yields only the fields that are set, which is exactly what proto3 JSON writes.

Writing covers every case itself except well-known types and extensions, which go to
``json_format`` (they are rare and their JSON forms are special). Reading takes the
fast path for ordinary input only: any value it does not recognise — a numeric
string for an int32, base64, special floats, a repeated oneof — makes it hand the
whole document to ``json_format``, so results and error messages stay exactly those
of the reference implementation.

What is compiled for a message type is kept on its class (the ``_nexus_json``
attribute), not in a table keyed by the type's name: a plugin upgraded to a changed
contract has classes of the same names in a descriptor pool of its own (a contract
generation), which must get their own readers and writers, and which are freed with
the generation (the class and its compiled converters refer to each other only).

``Any`` fields resolve their type URL in the pool of the message being converted, so
a type that only a generation holds converts too.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any, cast

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from nexus_grpc.gateway.timestamps import timestamp_to_json

__all__ = ["message_to_dict", "parse_dict", "to_dict"]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT64,
    }
)
_INT32_RANGE = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}
_INT64_RANGE = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _is_wkt(descriptor: Descriptor) -> bool:
    return str(descriptor.full_name).startswith("google.protobuf.")


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and bool(message.GetOptions().map_entry)


_Writer = Callable[[Any], Any]
_Reader = Callable[[Message, str, Any], None]
_CACHE = "_nexus_json"


@dataclass
class _TypeCache:
    """What is compiled for one message class."""

    #: proto_names → writer.
    writers: dict[bool, _Writer] = _field(default_factory=dict)
    #: JSON or proto field name → (field, reader); None until compiled.
    readers: dict[str, tuple[FieldDescriptor, _Reader]] | None = None
    #: Whether the type can nest without bound; None until worked out.
    recursive: bool | None = None


def _cache_of(cls: type) -> _TypeCache:
    # getattr hits the type's attribute cache; a subclass shares its base's
    # DESCRIPTOR, so sharing its converters is right too.
    cache = getattr(cls, _CACHE, None)
    if cache is None:
        cache = _TypeCache()
        # A class that takes no attribute (none of protobuf's do so today) is
        # compiled on each use: slower, never wrong.
        with suppress(AttributeError, TypeError):
            setattr(cls, _CACHE, cache)
    return cast(_TypeCache, cache)


def _own_pool(message: Message) -> Any:
    """The pool of ``message``'s type when it is not the default pool (a generation's)."""
    pool = cast(Descriptor, message.DESCRIPTOR).file.pool
    return None if pool is descriptor_pool.Default() else pool


def message_to_dict(message: Message, **options: Any) -> Any:
    """``json_format.MessageToDict`` resolving ``Any`` type URLs in the pool of
    ``message``'s type first (a generation's), then in the default pool."""
    pool = _own_pool(message)
    if pool is not None:
        try:
            return json_format.MessageToDict(message, descriptor_pool=pool, **options)
        except (TypeError, KeyError):
            pass  # an Any holding a type that only the host's default pool has
    return json_format.MessageToDict(message, **options)


def _parse_with_json_format(value: Any, message: Message, ignore_unknown_fields: bool) -> None:
    """``json_format.ParseDict``, resolving ``Any`` types as :func:`message_to_dict` does."""
    pool = _own_pool(message)
    if pool is not None:
        try:
            json_format.ParseDict(
                value, message, ignore_unknown_fields=ignore_unknown_fields, descriptor_pool=pool
            )
            return
        except json_format.ParseError:
            message.Clear()  # tried again with the default pool, which reports the error
    json_format.ParseDict(value, message, ignore_unknown_fields=ignore_unknown_fields)


# ---------------------------------------------------------------------------- writing

# Well-known types whose JSON form is their ToJsonString(): a bound call, no walk.
_STRING_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_TIMESTAMP = "google.protobuf.Timestamp"
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


def to_dict(message: Message, proto_names: bool) -> Any:
    """``message`` as a JSON-ready value, equal to ``MessageToDict`` with default options."""
    return _message_writer(type(message), proto_names)(message)


def _message_writer(cls: type[Message], proto_names: bool) -> _Writer:
    cache = _cache_of(cls)
    writer = cache.writers.get(proto_names)
    if writer is None:
        writer = _compile_message_writer(cast(Descriptor, cls.DESCRIPTOR), proto_names, cache)
    return writer


def _compile_message_writer(
    descriptor: Descriptor, proto_names: bool, cache: _TypeCache
) -> _Writer:
    full_name = str(descriptor.full_name)
    if full_name == _TIMESTAMP:
        writer: _Writer = timestamp_to_json
    elif full_name in _STRING_WKT:
        writer = _to_json_string
    elif full_name in _WRAPPERS:
        inner = _value_writer(descriptor.fields_by_name["value"], proto_names)
        writer = lambda message: inner(message.value)  # noqa: E731
    elif _is_wkt(descriptor):
        writer = lambda message: message_to_dict(  # noqa: E731
            message, preserving_proto_field_name=proto_names
        )
    else:
        fields: dict[FieldDescriptor, tuple[str, _Writer]] = {}

        def write_fields(message: Message) -> Any:
            out: dict[str, Any] = {}
            for field, value in message.ListFields():
                entry = fields.get(field)
                if entry is None:  # an extension: json_format knows their bracketed names
                    return message_to_dict(message, preserving_proto_field_name=proto_names)
                out[entry[0]] = entry[1](value)
            return out

        # Registered before the fields are compiled, so recursive types terminate.
        cache.writers[proto_names] = write_fields
        for field in descriptor.fields:
            name = field.name if proto_names else field.json_name
            fields[field] = (name, _field_writer(field, proto_names))
        return write_fields
    cache.writers[proto_names] = writer
    return writer


def _to_json_string(message: Any) -> Any:
    return message.ToJsonString()


def _field_writer(field: FieldDescriptor, proto_names: bool) -> _Writer:
    if _is_map(field):
        entry = field.message_type
        assert entry is not None
        key_field = entry.fields_by_name["key"]
        write_value = _value_writer(entry.fields_by_name["value"], proto_names)
        bool_keys = key_field.type == FieldDescriptor.TYPE_BOOL

        def write_map(value: Any) -> Any:
            if bool_keys:
                return {("true" if k else "false"): write_value(v) for k, v in value.items()}
            return {str(k): write_value(v) for k, v in value.items()}

        return write_map
    write = _value_writer(field, proto_names)
    if field.is_repeated:
        return lambda value: [write(item) for item in value]
    return write


def _value_writer(field: FieldDescriptor, proto_names: bool) -> _Writer:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE or kind == FieldDescriptor.TYPE_GROUP:
        bound: list[_Writer] = []

        def write_message(value: Any) -> Any:
            # Bound on first use: the sub-type may be this very message (recursion).
            # A field's message type has one class, the one of the field's own pool.
            if not bound:
                bound.append(_message_writer(type(value), proto_names))
            return bound[0](value)

        return write_message
    if kind in _INT64_TYPES:
        return str
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        if enum.full_name == "google.protobuf.NullValue":
            return lambda value: None
        names = {value.number: value.name for value in enum.values}
        return lambda value: names.get(value, value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode("ascii")
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _write_float if kind == FieldDescriptor.TYPE_DOUBLE else _write_float32
    return _identity


def _identity(value: Any) -> Any:
    return value


def _write_float(value: float) -> Any:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _write_float32(value: float) -> Any:
    if not math.isfinite(value):
        return _write_float(value)
    # float fields hold 32-bit values; json_format prints the shortest repr that
    # round-trips through float32, e.g. 0.1 rather than 0.10000000149011612.
    return float(type_checkers.ToShortestFloat(value))


# ---------------------------------------------------------------------------- reading


class _Fallback(Exception):
    """The input needs the reference parser (unusual form, or an error to report)."""


def parse_dict(value: Any, message: Message, *, ignore_unknown_fields: bool = False) -> None:
    """Merge the JSON value into ``message``, like ``json_format.ParseDict``."""
    try:
        if _is_recursive(message):
            # Only the reference parser bounds nesting (at protobuf's depth limit, 100,
            # as the binary parser does): a recursive type nested deeper would be a
            # message no gRPC peer can read back, or blow Python's stack.
            raise _Fallback
        _read_message(value, message, ignore_unknown_fields)
    except _Fallback:
        message.Clear()
        _parse_with_json_format(value, message, ignore_unknown_fields)


def _is_recursive(message: Message) -> bool:
    """Whether a message of this type can nest without bound: some message type it
    holds, at any depth (itself included), can contain itself."""
    cache = _cache_of(type(message))
    if cache.recursive is None:
        cache.recursive = _has_cycle(cast(Descriptor, message.DESCRIPTOR), set(), set())
    return cache.recursive


def _has_cycle(descriptor: Descriptor, path: set[str], done: set[str]) -> bool:
    name = str(descriptor.full_name)
    if name in path:
        return True
    if name in done:
        return False
    path.add(name)
    for field in descriptor.fields:
        sub = field.message_type
        if sub is not None and not _is_wkt(sub) and _has_cycle(sub, path, done):
            return True
    path.discard(name)
    done.add(name)
    return False


def _read_message(value: Any, message: Message, ignore_unknown: bool) -> None:
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    if _is_wkt(descriptor) or not isinstance(value, dict):
        raise _Fallback
    cache = _cache_of(type(message))
    fields = cache.readers
    if fields is None:
        fields = cache.readers = _compile_readers(descriptor)
    seen_oneofs: set[str] = set()
    for key, item in value.items():
        entry = fields.get(key)
        if entry is None:
            if ignore_unknown:
                continue
            raise _Fallback
        field, read = entry
        if item is None:
            raise _Fallback  # null: json_format decides what it means for this field
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in seen_oneofs:
                raise _Fallback
            seen_oneofs.add(oneof.name)
        read(message, field.name, item)


def _compile_readers(descriptor: Descriptor) -> dict[str, tuple[FieldDescriptor, _Reader]]:
    compiled: dict[str, tuple[FieldDescriptor, _Reader]] = {}
    for field in descriptor.fields:
        reader = _field_reader(field)
        compiled[field.json_name] = (field, reader)
        compiled[field.name] = (field, reader)
    return compiled


def _field_reader(field: FieldDescriptor) -> _Reader:
    if _is_map(field):
        entry = field.message_type
        assert entry is not None
        convert_key = _key_converter(entry.fields_by_name["key"])
        value_field = entry.fields_by_name["value"]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            raise_always: _Reader = _fallback_reader
            return raise_always
        convert_value = _scalar_converter(value_field)

        def read_map(message: Message, name: str, value: Any) -> None:
            if not isinstance(value, dict):
                raise _Fallback
            target = getattr(message, name)
            for key, item in value.items():
                target[convert_key(key)] = convert_value(item)

        return read_map
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        sub_type = field.message_type
        assert sub_type is not None
        if _is_wkt(sub_type):
            return _wkt_reader(field)
        if field.is_repeated:

            def read_messages(message: Message, name: str, value: Any) -> None:
                if not isinstance(value, list):
                    raise _Fallback
                target = getattr(message, name)
                for item in value:
                    _read_message(item, target.add(), False)

            return read_messages

        def read_sub(message: Message, name: str, value: Any) -> None:
            sub = getattr(message, name)
            sub.SetInParent()
            _read_message(value, sub, False)

        return read_sub
    convert = _scalar_converter(field)
    if field.is_repeated:

        def read_list(message: Message, name: str, value: Any) -> None:
            if not isinstance(value, list):
                raise _Fallback
            getattr(message, name).extend([convert(item) for item in value])

        return read_list

    def read_scalar(message: Message, name: str, value: Any) -> None:
        setattr(message, name, convert(value))

    return read_scalar


def _fallback_reader(message: Message, name: str, value: Any) -> None:
    raise _Fallback


def _wkt_reader(field: FieldDescriptor) -> _Reader:
    # Well-known types have special JSON forms: the string ones parse themselves,
    # wrappers hold one scalar, the rest go to json_format for this field alone.
    sub_type = field.message_type
    assert sub_type is not None
    full_name = str(sub_type.full_name)
    if field.is_repeated:
        return _fallback_reader
    if full_name in _STRING_WKT:

        def read_string_wkt(message: Message, name: str, value: Any) -> None:
            if type(value) is not str:
                raise _Fallback
            sub = getattr(message, name)
            try:
                sub.FromJsonString(value)
            except ValueError:
                raise _Fallback from None
            sub.SetInParent()

        return read_string_wkt
    if full_name in _WRAPPERS:
        convert = _scalar_converter(sub_type.fields_by_name["value"])

        def read_wrapper(message: Message, name: str, value: Any) -> None:
            sub = getattr(message, name)
            sub.value = convert(value)
            sub.SetInParent()

        return read_wrapper

    def read_wkt(message: Message, name: str, value: Any) -> None:
        sub = getattr(message, name)
        try:
            _parse_with_json_format(value, sub, False)
        except json_format.ParseError:
            raise _Fallback from None
        sub.SetInParent()

    return read_wkt


def _scalar_converter(field: FieldDescriptor) -> Callable[[Any], Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _expect(str)
    if kind == FieldDescriptor.TYPE_BOOL:
        return _expect(bool)
    if kind in _INT32_RANGE:
        low, high = _INT32_RANGE[kind]
        return _integer(low, high, strings=False)
    if kind in _INT64_RANGE:
        low, high = _INT64_RANGE[kind]
        return _integer(low, high, strings=True)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):

        def convert_float(value: Any) -> Any:
            if isinstance(value, float | int) and not isinstance(value, bool):
                if kind == FieldDescriptor.TYPE_FLOAT and abs(value) > 3.4028234663852886e38:
                    raise _Fallback
                return float(value)
            raise _Fallback

        return convert_float
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        numbers = {value.name: value.number for value in enum.values}

        def convert_enum(value: Any) -> Any:
            if isinstance(value, str) and value in numbers:
                return numbers[value]
            raise _Fallback

        return convert_enum
    return _fallback_converter  # bytes: base64 has several accepted forms


def _fallback_converter(value: Any) -> Any:
    raise _Fallback


def _expect(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise _Fallback

    return convert


def _integer(low: int, high: int, *, strings: bool) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is int and low <= value <= high:
            return value
        if strings and type(value) is str and value.isdigit() and low <= int(value) <= high:
            return int(value)
        raise _Fallback

    return convert


def _key_converter(field: FieldDescriptor) -> Callable[[Any], Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _expect(str)

    def convert(key: Any) -> Any:
        raise _Fallback

    return convert
