"""Checks of the well-known types a request carries, whatever the contract's rules.

The wire lets a client send a ``google.protobuf.Timestamp`` of year 10000 or with
negative nanos, a ``Duration`` past its ±10,000-year range or with nanos of the wrong
sign, a ``FieldMask`` path that names no field syntax, an ``Any`` whose type URL is not
one; the protobuf runtime accepts them all and the first ``ToDatetime()`` in a handler
raises. JSON (REST) already refuses them when parsing. :data:`CHECKS` gives, per type,
the field checks the validation stage runs on every such field of a request, so no
transport hands a handler one (field paths name the part: ``since_time.seconds``).
Struct, Value, ListValue, Empty and the wrappers hold nothing out of range.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from nexus_grpc.errors import FieldViolation

__all__ = ["CHECKS", "WellKnownCheck"]

#: Appends the violations of one well-known message (paths relative to it).
WellKnownCheck = Callable[[Any, list[FieldViolation]], None]

# RFC 3339's range, which Timestamp's contract (timestamp.proto) adopts.
_MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
# duration.proto: "approximately +-10,000 years".
_MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
# A field path: proto field names joined by dots (field_mask.proto).
_FIELD_PATH = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
# The last segment of a type URL is the type's full name (any.proto).
_TYPE_URL = re.compile(rf"[^\s]*/({_IDENTIFIER}(?:\.{_IDENTIFIER})*)")

_TIMESTAMP_RANGE = "must be within 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
_NANOS_RANGE = f"must be between 0 and {_MAX_NANOS:,}"
_DURATION_RANGE = f"must be between -{_MAX_DURATION_SECONDS:,} and {_MAX_DURATION_SECONDS:,}"
_DURATION_NANOS_RANGE = f"must be between -{_MAX_NANOS:,} and {_MAX_NANOS:,}"
_DURATION_SIGN = "must have the sign of seconds"
_FIELD_PATH_SYNTAX = "must be field names joined by dots, such as items.quantity"
_TYPE_URL_SYNTAX = "must end in /<full type name>, such as type.googleapis.com/pkg.Message"


def _timestamp(message: Any, found: list[FieldViolation]) -> None:
    seconds = message.seconds
    if seconds < _MIN_TIMESTAMP_SECONDS or seconds > _MAX_TIMESTAMP_SECONDS:
        found.append(FieldViolation("seconds", _TIMESTAMP_RANGE))
    nanos = message.nanos
    if nanos < 0 or nanos > _MAX_NANOS:
        found.append(FieldViolation("nanos", _NANOS_RANGE))


def _duration(message: Any, found: list[FieldViolation]) -> None:
    seconds, nanos = message.seconds, message.nanos
    if seconds < -_MAX_DURATION_SECONDS or seconds > _MAX_DURATION_SECONDS:
        found.append(FieldViolation("seconds", _DURATION_RANGE))
    if nanos < -_MAX_NANOS or nanos > _MAX_NANOS:
        found.append(FieldViolation("nanos", _DURATION_NANOS_RANGE))
    elif (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        found.append(FieldViolation("nanos", _DURATION_SIGN))


def _field_mask(message: Any, found: list[FieldViolation]) -> None:
    fullmatch = _FIELD_PATH.fullmatch
    for index, path in enumerate(message.paths):
        if not fullmatch(path):
            found.append(FieldViolation(f"paths[{index}]", _FIELD_PATH_SYNTAX))


def _any(message: Any, found: list[FieldViolation]) -> None:
    type_url = message.type_url
    if (type_url or message.value) and not _TYPE_URL.fullmatch(type_url):
        found.append(FieldViolation("type_url", _TYPE_URL_SYNTAX))


#: The checks of each well-known type that can hold a value out of its contract.
CHECKS: dict[str, WellKnownCheck] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
    "google.protobuf.FieldMask": _field_mask,
    "google.protobuf.Any": _any,
}
