"""Proto3 JSON in and out of the gateway.

Parsing goes through ``json_format`` (it is the mapping's reference and reports the
offending field); output goes through ``MessageToDict`` and orjson, which is cheaper
than ``MessageToJson``'s pure-Python encoder. Both follow the proto3 JSON mapping:
int64 as strings, enums by name, well-known types in their JSON forms, lowerCamel
names on output (proto names when configured), either accepted on input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from nexus_grpc.errors import FieldViolation, InvalidArgumentError
from nexus_grpc.gateway import fastjson

__all__ = ["JsonOptions", "dumps", "message_to_json", "message_to_value", "parse_json_into"]


@dataclass(frozen=True)
class JsonOptions:
    """How messages are written as JSON."""

    #: Write fields holding their default value (0, "", false, []) too.
    emit_defaults: bool = False
    #: Write proto field names (customer_id) instead of lowerCamel (customerId).
    proto_names: bool = False
    #: Reject request bodies with fields the message does not have.
    reject_unknown_fields: bool = True


def message_to_value(message: Message, options: JsonOptions) -> Any:
    """``message`` as a JSON-ready Python value (a dict, or a scalar for some WKTs)."""
    if not options.emit_defaults:
        return fastjson.to_dict(message, options.proto_names)
    return fastjson.message_to_dict(
        message,
        preserving_proto_field_name=options.proto_names,
        always_print_fields_with_no_presence=options.emit_defaults,
    )


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return orjson.dumps(value)


def message_to_json(message: Message, options: JsonOptions) -> bytes:
    """``message`` as proto3 JSON bytes."""
    return orjson.dumps(message_to_value(message, options))


def loads(data: bytes, what: str) -> Any:
    """Parse JSON bytes; INVALID_ARGUMENT naming ``what`` when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidArgumentError([FieldViolation(what, f"not valid JSON: {error}")]) from None


def parse_json_into(value: Any, message: Message, options: JsonOptions, what: str) -> None:
    """Merge a decoded JSON value into ``message``; INVALID_ARGUMENT names the bad field."""
    try:
        fastjson.parse_dict(value, message, ignore_unknown_fields=not options.reject_unknown_fields)
    except json_format.ParseError as error:
        text = str(error)
        if "too deep" in text:
            # json_format says so after one "Failed to parse child field: " per level:
            # a hundred repetitions that say nothing.
            text = "nested too deep (protobuf allows 100 levels)"
        raise InvalidArgumentError([FieldViolation(what, text)]) from None
    except (TypeError, AttributeError, ValueError):
        # json_format lets these through for values of the wrong JSON type (null where
        # an object belongs, say); they are the client's mistake all the same.
        expected = message.DESCRIPTOR.full_name
        raise InvalidArgumentError(
            [FieldViolation(what, f"not a valid JSON value for {expected}")]
        ) from None
