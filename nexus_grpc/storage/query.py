"""List queries: validating filter and order_by, and the opaque keyset page tokens.

Everything here is plain Python (no SQL): a :class:`ListQuery` is the validated,
normalised form of a ``Repository.list`` call, which :mod:`.sql` turns into a statement.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor

from .errors import InvalidQueryError
from .index import (
    IndexedField,
    UnindexedPathError,
    ValueKind,
    delta_nanos,
    resolve_path,
    timestamp_nanos,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Condition",
    "ListQuery",
    "Scalar",
    "SortKey",
    "Target",
    "build_query",
    "check_page_size",
]

#: A normalised query value: what index documents hold and tokens carry.
Scalar = int | float | bool | str

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_TOKEN_VERSION = 1


@dataclass(frozen=True)
class Target:
    """What a filter or sort key refers to: an indexed field, or (field None) the id."""

    path: str
    field: IndexedField | None

    @property
    def kind(self) -> ValueKind:
        """The value kind; ids are strings."""
        return ValueKind.STRING if self.field is None else self.field.kind


@dataclass(frozen=True)
class Condition:
    """``target = value`` (one value, ``many`` False) or ``target IN values``."""

    target: Target
    values: tuple[Scalar, ...]
    many: bool


@dataclass(frozen=True)
class SortKey:
    """One ORDER BY term."""

    target: Target
    descending: bool


@dataclass(frozen=True)
class ListQuery:
    """A validated list query; ``sort`` always ends with the id as the tie-breaker."""

    conditions: tuple[Condition, ...]
    sort: tuple[SortKey, ...]
    #: Identifies (namespace, collection, filter, order_by), so a page token can only
    #: continue the query it was made for.
    fingerprint: str

    def encode_token(self, last_row: Sequence[Scalar]) -> str:
        """The page token continuing after a row whose sort values are ``last_row``."""
        body = {"v": _TOKEN_VERSION, "q": self.fingerprint, "k": list(last_row)}
        raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode_token(self, token: str) -> tuple[Scalar, ...]:
        """The sort values of the row a token continues after; InvalidQueryError if bad."""
        try:
            padded = token + "=" * (-len(token) % 4)
            body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (binascii.Error, ValueError, UnicodeError) as exc:
            raise _bad_token("is malformed") from exc
        if not isinstance(body, dict) or body.get("v") != _TOKEN_VERSION:
            raise _bad_token("is malformed")
        if body.get("q") != self.fingerprint:
            raise _bad_token(
                "was issued for a different query; filter and order_by must stay the same "
                "while paging"
            )
        values = body.get("k")
        if not isinstance(values, list) or len(values) != len(self.sort):
            raise _bad_token("is malformed")
        return tuple(
            _token_value(key.target.kind, v) for key, v in zip(self.sort, values, strict=True)
        )


def _bad_token(problem: str) -> InvalidQueryError:
    return InvalidQueryError(f"page_token {problem}", argument="page_token")


def _token_value(kind: ValueKind, value: object) -> Scalar:
    if kind is ValueKind.FLOAT:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is ValueKind.BOOL:
        if isinstance(value, bool):
            return value
    elif kind is ValueKind.STRING:
        # No NUL: no stored value has one on PostgreSQL, whose text refuses it.
        if isinstance(value, str) and "\x00" not in value:
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _bad_token("is malformed")


def check_page_size(page_size: int) -> int:
    """``page_size`` if it is 1..MAX_PAGE_SIZE, else InvalidQueryError."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise InvalidQueryError(
            f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}",
            argument="page_size",
        )
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidQueryError(
            f"page_size must be from 1 to {MAX_PAGE_SIZE}, got {page_size}",
            argument="page_size",
        )
    return page_size


def build_query(
    descriptor: Descriptor,
    *,
    id_field: str,
    namespace: str,
    collection: str,
    filter: Mapping[str, object] | None,
    order_by: str,
) -> ListQuery:
    """Validate and normalise a list query over messages of type ``descriptor``."""
    conditions = _parse_filter(descriptor, id_field, filter or {})
    sort = _parse_order_by(descriptor, id_field, order_by)
    shape = [
        namespace,
        collection,
        [[c.target.path, c.many, list(c.values)] for c in conditions],
        [[k.target.path, k.descending] for k in sort],
    ]
    digest = hashlib.sha256(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()
    return ListQuery(conditions, sort, digest[:24])


def _resolve(descriptor: Descriptor, id_field: str, path: object, argument: str) -> Target:
    if not isinstance(path, str):
        raise InvalidQueryError(
            f"{argument} field names must be strings, got {path!r}", argument=argument
        )
    if path == id_field:
        # The id lives in its own (primary key) column: faster and always exact.
        return Target(path, None)
    try:
        return Target(path, resolve_path(descriptor, path))
    except UnindexedPathError as exc:
        raise InvalidQueryError(
            f"{argument} field {path!r}: {exc.reason}", argument=argument, field_path=path
        ) from exc


def _parse_filter(
    descriptor: Descriptor, id_field: str, filter: Mapping[str, object]
) -> tuple[Condition, ...]:
    if not isinstance(filter, Mapping):
        raise InvalidQueryError(
            f"filter must be a mapping of field path to value, got {type(filter).__name__}",
            argument="filter",
        )
    conditions: list[Condition] = []
    for path in sorted(filter, key=str):
        target = _resolve(descriptor, id_field, path, "filter")
        raw = filter[path]
        if isinstance(raw, list | tuple):
            coerced = {_coerce(target, item, many=True) for item in raw}
            # Sorted so that equal filters give equal fingerprints (and equal SQL).
            values = tuple(sorted(coerced, key=_sort_key))
            conditions.append(Condition(target, values, many=True))
        else:
            conditions.append(Condition(target, (_coerce(target, raw, many=False),), many=False))
    return tuple(conditions)


def _sort_key(value: Scalar) -> tuple[str, Scalar]:
    # Values of one field share a kind; the type name only keeps mypy's sorted() happy.
    return (type(value).__name__, value)


def _coerce(target: Target, value: object, *, many: bool) -> Scalar:
    coerced = _coerce_value(target, value)
    if coerced is None:
        if target.kind is ValueKind.STRING and isinstance(value, str) and "\x00" in value:
            raise InvalidQueryError(
                f"filter field {target.path!r}: must not contain NUL characters",
                argument="filter",
                field_path=target.path,
            )
        expected = _expectation(target)
        if not many:
            expected += ", or a list/tuple of them"
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidQueryError(
            f"filter field {target.path!r}: expected {expected}, got {shown}",
            argument="filter",
            field_path=target.path,
        )
    return coerced


def _coerce_value(target: Target, value: object) -> Scalar | None:
    """The normalised value, or None if ``value`` does not fit the field."""
    kind, field = target.kind, target.field
    if kind is ValueKind.STRING:
        # PostgreSQL's text refuses NUL: the same error on every backend.
        return value if isinstance(value, str) and "\x00" not in value else None
    if kind is ValueKind.BOOL:
        return value if isinstance(value, bool) else None
    if kind is ValueKind.FLOAT:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            return number if math.isfinite(number) else None
        return None
    if kind is ValueKind.TIMESTAMP:
        return timestamp_nanos(value)
    if kind is ValueKind.DURATION:
        return delta_nanos(value)
    if kind is ValueKind.ENUM and isinstance(value, str) and field is not None:
        enum_type = field.descriptor.enum_type
        named = enum_type.values_by_name.get(value) if enum_type is not None else None
        return named.number if named is not None else None
    if isinstance(value, int) and not isinstance(value, bool) and field is not None:
        return value if field.minimum <= value <= field.maximum else None
    return None


def _expectation(target: Target) -> str:
    kind, field = target.kind, target.field
    if kind is ValueKind.STRING:
        return "a string"
    if kind is ValueKind.BOOL:
        return "a bool"
    if kind is ValueKind.FLOAT:
        return "a finite number"
    if kind is ValueKind.TIMESTAMP:
        return "a timezone-aware datetime or a google.protobuf.Timestamp"
    if kind is ValueKind.DURATION:
        return "a timedelta or a google.protobuf.Duration"
    assert field is not None  # only strings (the id) have no field
    if kind is ValueKind.ENUM:
        enum_type = field.descriptor.enum_type
        names = [v.name for v in enum_type.values[:3]] if enum_type is not None else []
        example = f" such as {', '.join(names)}" if names else ""
        return f"a {field.type_name} value name{example}, or its number"
    return f"an integer from {field.minimum} to {field.maximum} ({field.type_name})"


def _parse_order_by(descriptor: Descriptor, id_field: str, order_by: str) -> tuple[SortKey, ...]:
    if not isinstance(order_by, str):
        raise InvalidQueryError(
            f"order_by must be a string, got {type(order_by).__name__}", argument="order_by"
        )
    keys: list[SortKey] = []
    if order_by.strip():
        for item in order_by.split(","):
            words = item.split()
            direction = words[1].lower() if len(words) == 2 else "asc"
            if len(words) not in (1, 2) or direction not in ("asc", "desc"):
                raise InvalidQueryError(
                    f"order_by item {item.strip()!r}: expected 'field', 'field asc' or "
                    "'field desc', separated by commas",
                    argument="order_by",
                )
            target = _resolve(descriptor, id_field, words[0], "order_by")
            if any(key.target.path == target.path for key in keys):
                raise InvalidQueryError(
                    f"order_by field {target.path!r} appears more than once",
                    argument="order_by",
                    field_path=target.path,
                )
            keys.append(SortKey(target, descending=direction == "desc"))
    if not any(key.target.field is None for key in keys):
        # Ids are unique, so ending with the id makes the order total: keyset pagination
        # needs that to never skip or repeat rows with equal sort values.
        keys.append(SortKey(Target(id_field, None), descending=False))
    return tuple(keys)
