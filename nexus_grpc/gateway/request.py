"""Building a request message from an HTTP request: path, query string and body.

The rules are those of ``google/api/http.proto``: fields bound by the path win over
body and query; the body fills the whole message (``body: "*"``) or one top-level
field; query parameters fill every field bound by neither (none at all when the body
is ``*``). Parameters name fields by proto or lowerCamel name, dotted for nested
messages, ``m[key]`` for maps; repeated fields repeat the parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from nexus_grpc.errors import FieldViolation, InvalidArgumentError
from nexus_grpc.gateway.bindings import HttpBinding, resolve_field_path
from nexus_grpc.gateway.codec import JsonOptions, loads, parse_json_into

__all__ = ["HTTP_BODY", "RequestBuilder", "parse_scalar"]

HTTP_BODY = "google.api.HttpBody"

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_TRUE = frozenset({"true", "1", "t", "True", "TRUE"})
_FALSE = frozenset({"false", "0", "f", "False", "FALSE"})
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Well-known types whose JSON form is a string, so a query parameter can carry them.
_STRING_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)


def message_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field (descriptors type it as optional)."""
    assert field.message_type is not None, field.full_name
    return field.message_type


def enum_type(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum field."""
    assert field.enum_type is not None, field.full_name
    return field.enum_type


def parse_scalar(field: FieldDescriptor, text: str, name: str) -> Any:
    """``text`` converted to ``field``'s type; INVALID_ARGUMENT naming ``name`` if it can't be."""
    cpp = field.cpp_type
    try:
        if cpp == FieldDescriptor.CPPTYPE_STRING:
            if field.type == FieldDescriptor.TYPE_BYTES:
                return _bytes(text)
            return text
        if cpp in _INT_RANGES:
            number = int(text, 10)
            low, high = _INT_RANGES[cpp]
            if not low <= number <= high:
                raise ValueError("out of range")
            return number
        if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            real = float({"Infinity": "inf", "-Infinity": "-inf"}.get(text, text))
            if math.isnan(real) and text != "NaN":
                raise ValueError(text)
            return real
        if cpp == FieldDescriptor.CPPTYPE_BOOL:
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(text)
        if cpp == FieldDescriptor.CPPTYPE_ENUM:
            value = enum_type(field).values_by_name.get(text)
            if value is not None:
                return value.number
            number = int(text, 10)
            if not -(2**31) <= number < 2**31:
                raise ValueError(text)
            return number
    except ValueError:
        raise InvalidArgumentError(
            [FieldViolation(name, f"{text!r} is not a valid {_type_name(field)}")]
        ) from None
    raise InvalidArgumentError(
        [FieldViolation(name, f"a {_type_name(field)} cannot be given as a string")]
    )


def _bytes(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except binascii.Error:
        raise ValueError(text) from None


def _type_name(field: FieldDescriptor) -> str:
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        values = ", ".join(v.name for v in enum_type(field).values)
        return f"{enum_type(field).full_name} (one of {values}, or a number)"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return str(message_type(field).full_name)
    return _TYPE_NAMES.get(field.type, "integer")


_TYPE_NAMES: dict[int, str] = {
    FieldDescriptor.TYPE_BYTES: "base64 bytes value",
    FieldDescriptor.TYPE_BOOL: "boolean (true or false)",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_DOUBLE: "number",
    FieldDescriptor.TYPE_FLOAT: "number",
}


@dataclass(frozen=True)
class _Target:
    fields: list[FieldDescriptor]
    map_key: str | None
    name: str

    @property
    def field_key(self) -> str:
        """The field this parameter sets, whatever spelling (proto or JSON names) it used."""
        path = ".".join(field.name for field in self.fields)
        return path if self.map_key is None else f"{path}[{self.map_key}]"


class RequestBuilder:
    """Turns path variables, query parameters and a body into one request message.

    Built once per binding, so per-request work is only the parsing itself.
    """

    def __init__(self, binding: HttpBinding, options: JsonOptions, *, strict_query: bool) -> None:
        self._binding = binding
        self._options = options
        self._strict_query = strict_query
        self._message_class = _message_class(binding.method.input_type)
        request = binding.method.input_type
        self._path_targets = [
            (".".join(path), resolve_field_path(request, path) or [])
            for path in binding.path_fields
        ]
        self._bound_roots = {path[0] for path in binding.path_fields}
        self._body_field = (
            request.fields_by_name[binding.body] if binding.body not in ("", "*") else None
        )
        self.raw_body = request.full_name == HTTP_BODY or (
            self._body_field is not None
            and self._body_field.type == FieldDescriptor.TYPE_MESSAGE
            and message_type(self._body_field).full_name == HTTP_BODY
        )

    def new_message(self) -> Message:
        """An empty request message."""
        return self._message_class()

    def build(
        self,
        variables: Mapping[str, str],
        query: Iterable[tuple[str, str]],
        body: bytes | None,
        content_type: str = "",
    ) -> Message:
        """The request message; INVALID_ARGUMENT names whatever does not fit it."""
        message = self._message_class()
        if body is not None and self._binding.body:
            self.merge_body(message, body, content_type)
        if self._binding.body != "*":
            self._apply_query(message, query)
        for name, fields in self._path_targets:
            _set_path(message, fields, parse_scalar(fields[-1], variables[name], name))
        return message

    def merge_body(self, message: Message, body: bytes, content_type: str) -> None:
        """Fill the body part of ``message`` from raw request bytes."""
        if self.raw_body:
            target: Any = (
                message if self._body_field is None else getattr(message, self._body_field.name)
            )
            target.content_type = content_type
            target.data = body
            return
        if not body.strip():
            value: Any = {}
        else:
            value = loads(body, "body")
        if self._body_field is None:
            if not isinstance(value, dict):
                raise InvalidArgumentError([FieldViolation("body", "must be a JSON object")])
            parse_json_into(value, message, self._options, "body")
            return
        field = self._body_field
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            sub = getattr(message, field.name)
            parse_json_into(value, sub, self._options, field.name)
            sub.SetInParent()
        else:
            parse_json_into({field.json_name: value}, message, self._options, field.name)

    def _apply_query(self, message: Message, query: Iterable[tuple[str, str]]) -> None:
        seen: set[str] = set()
        request = self._binding.method.input_type
        for key, value in query:
            target = _query_target(request, key)
            if target is None:
                if self._strict_query:
                    raise InvalidArgumentError(
                        [FieldViolation(key, f"unknown query parameter for {request.full_name}")]
                    )
                continue
            root = target.fields[0].name
            if root in self._bound_roots or (
                self._body_field is not None and root == self._body_field.name
            ):
                if self._strict_query:
                    raise InvalidArgumentError(
                        [
                            FieldViolation(
                                key, "bound by the path or the body; not a query parameter"
                            )
                        ]
                    )
                continue
            _set_query(message, target, value, seen)


def _message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def _query_target(request: Descriptor, key: str) -> _Target | None:
    map_key = None
    path_text = key
    if key.endswith("]") and "[" in key:
        path_text, _, rest = key.partition("[")
        map_key = rest[:-1]
    path = tuple(path_text.split("."))
    if not all(path):
        return None
    fields = resolve_field_path(request, path)
    if fields is None:
        return None
    last = fields[-1]
    if (map_key is not None) != _is_map(last):
        return None
    return _Target(fields, map_key, key)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and message_type(field).GetOptions().map_entry


def _parent(message: Message, fields: list[FieldDescriptor]) -> Message:
    for field in fields[:-1]:
        message = getattr(message, field.name)
        message.SetInParent()
    return message


def _set_path(message: Message, fields: list[FieldDescriptor], value: Any) -> None:
    setattr(_parent(message, fields), fields[-1].name, value)


def _set_query(message: Message, target: _Target, text: str, seen: set[str]) -> None:
    field = target.fields[-1]
    parent = _parent(message, target.fields)
    if target.map_key is not None:
        entry = message_type(field)
        key = parse_scalar(entry.fields_by_name["key"], target.map_key, target.name)
        value_field = entry.fields_by_name["value"]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            raise InvalidArgumentError(
                [
                    FieldViolation(
                        target.name, "map values that are messages cannot be query parameters"
                    )
                ]
            )
        _once(target, seen)
        getattr(parent, field.name)[key] = parse_scalar(value_field, text, target.name)
        return
    repeated = field.is_repeated
    if not repeated:
        _once(target, seen)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        value = _message_from_text(field, text, target.name)
        if repeated:
            getattr(parent, field.name).add().CopyFrom(value)
        else:
            getattr(parent, field.name).CopyFrom(value)
        return
    value = parse_scalar(field, text, target.name)
    if repeated:
        getattr(parent, field.name).append(value)
    else:
        setattr(parent, field.name, value)


def _once(target: _Target, seen: set[str]) -> None:
    if target.field_key in seen:
        raise InvalidArgumentError(
            [FieldViolation(target.name, "given more than once but the field is not repeated")]
        )
    seen.add(target.field_key)


def _message_from_text(field: FieldDescriptor, text: str, name: str) -> Message:
    kind = message_type(field).full_name
    message = _message_class(message_type(field))()
    if kind in _WRAPPERS:
        wrapper: Any = message
        wrapper.value = parse_scalar(message_type(field).fields_by_name["value"], text, name)
        return message
    if kind in _STRING_WKT:
        try:
            json_format.Parse(json.dumps(text), message)
        except json_format.ParseError as error:
            raise InvalidArgumentError([FieldViolation(name, str(error))]) from None
        return message
    raise InvalidArgumentError(
        [FieldViolation(name, f"a {kind} cannot be given as a query parameter")]
    )
