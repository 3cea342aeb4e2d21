"""The index document: the queryable scalar fields of a message, as flat JSON.

Which fields are indexed is decided by walking the message *descriptor* once per type:
every singular scalar of the top-level message and of nested singular messages, keyed by
dotted path (``address.city``). Repeated, map and bytes fields are not indexed. Every
indexed path is always present in a document (unset fields carry their default), so
queries never meet SQL NULLs whose ordering differs between SQLite and PostgreSQL.

Values are JSON scalars chosen to compare correctly in SQL: integers (int64 too) and
enums as numbers, ``Timestamp`` and ``Duration`` as integer nanoseconds.
"""

from __future__ import annotations

import enum
import functools
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "IndexValue",
    "IndexedField",
    "UnindexedPathError",
    "ValueKind",
    "descriptor_of",
    "document_reader",
    "index_document",
    "indexed_fields",
    "resolve_path",
]

#: A value in an index document (None only for a non-finite float).
IndexValue = int | float | bool | str | None

#: Nesting depth beyond which nested messages are not indexed (guards huge documents).
MAX_DEPTH = 8

_NANOS_PER_SECOND = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name
_DURATION = duration_pb2.Duration.DESCRIPTOR.full_name


class ValueKind(enum.Enum):
    """How an indexed value is stored, compared and validated."""

    INTEGER = "integer"  # signed up to 64 bits and uint32: fits a SQL BIGINT
    UINT64 = "uint64"  # may exceed BIGINT
    FLOAT = "float"
    BOOL = "bool"
    STRING = "string"
    ENUM = "enum"
    TIMESTAMP = "timestamp"  # integer nanoseconds since the epoch
    DURATION = "duration"  # integer nanoseconds

    @property
    def is_integral(self) -> bool:
        """Whether values of this kind are Python ints in documents and tokens."""
        return self not in (ValueKind.FLOAT, ValueKind.BOOL, ValueKind.STRING)


_FD = FieldDescriptor
_SCALAR_KINDS: dict[int, tuple[ValueKind, str, int, int]] = {
    # proto type: (kind, type name for messages, min, max)
    _FD.TYPE_INT32: (ValueKind.INTEGER, "int32", -(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: (ValueKind.INTEGER, "sint32", -(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (ValueKind.INTEGER, "sfixed32", -(2**31), 2**31 - 1),
    _FD.TYPE_INT64: (ValueKind.INTEGER, "int64", -(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (ValueKind.INTEGER, "sint64", -(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: (ValueKind.INTEGER, "sfixed64", -(2**63), 2**63 - 1),
    _FD.TYPE_UINT32: (ValueKind.INTEGER, "uint32", 0, 2**32 - 1),
    _FD.TYPE_FIXED32: (ValueKind.INTEGER, "fixed32", 0, 2**32 - 1),
    _FD.TYPE_UINT64: (ValueKind.UINT64, "uint64", 0, 2**64 - 1),
    _FD.TYPE_FIXED64: (ValueKind.UINT64, "fixed64", 0, 2**64 - 1),
    _FD.TYPE_DOUBLE: (ValueKind.FLOAT, "double", 0, 0),
    _FD.TYPE_FLOAT: (ValueKind.FLOAT, "float", 0, 0),
    _FD.TYPE_BOOL: (ValueKind.BOOL, "bool", 0, 0),
    _FD.TYPE_STRING: (ValueKind.STRING, "string", 0, 0),
    _FD.TYPE_ENUM: (ValueKind.ENUM, "enum", -(2**31), 2**31 - 1),
}
_MESSAGE_TYPES = (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP)


@dataclass(frozen=True)
class IndexedField:
    """One indexed path of a message type and how its values look."""

    path: str
    kind: ValueKind
    #: Human-readable type for error messages: "int64", "nexus.orders.v1.OrderStatus".
    type_name: str
    #: The leaf field.
    descriptor: FieldDescriptor = field(repr=False, compare=False)
    minimum: int = 0
    maximum: int = 0

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attribute names to follow from the top-level message to the value."""
        return tuple(self.path.split("."))

    def read(self, message: Message) -> IndexValue:
        """This field's index value in ``message`` (its default when unset)."""
        value: object = message
        for name in self.attributes:
            # Reading an unset sub-message yields its default instance without setting it.
            value = getattr(value, name)
        return _to_index_value(self.kind, value)

    @property
    def default(self) -> IndexValue:
        """The value of this field in an empty message."""
        if self.kind is ValueKind.STRING:
            return ""
        if self.kind is ValueKind.BOOL:
            return False
        if self.kind is ValueKind.FLOAT:
            return 0.0
        return 0


class UnindexedPathError(LookupError):
    """A path that names no indexed field; ``reason`` says why, for the caller's error."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def descriptor_of(message_type: type[Message] | Message) -> Descriptor:
    """The message descriptor of a message class or instance."""
    descriptor = message_type.DESCRIPTOR
    if not isinstance(descriptor, Descriptor):
        raise TypeError(f"{message_type!r} has no message descriptor")
    return descriptor


@functools.cache
def indexed_fields(descriptor: Descriptor) -> Mapping[str, IndexedField]:
    """Every indexed path of the message type ``descriptor``, in field order."""
    found: dict[str, IndexedField] = {}
    _walk(descriptor, "", (descriptor.full_name,), found)
    return found


def _walk(
    descriptor: Descriptor, prefix: str, enclosing: tuple[str, ...], found: dict[str, IndexedField]
) -> None:
    for fd in descriptor.fields:
        path = prefix + fd.name
        if fd.is_repeated:
            continue
        if fd.type in _MESSAGE_TYPES:
            sub = fd.message_type
            if sub is None:
                continue
            if sub.full_name == _TIMESTAMP:
                found[path] = IndexedField(path, ValueKind.TIMESTAMP, _TIMESTAMP, fd)
            elif sub.full_name == _DURATION:
                found[path] = IndexedField(path, ValueKind.DURATION, _DURATION, fd)
            elif sub.full_name not in enclosing and len(enclosing) < MAX_DEPTH:
                # A message type already on the path (recursion) is not indexed again:
                # the walk must end, and nobody filters on parent.parent.name anyway.
                _walk(sub, path + ".", (*enclosing, sub.full_name), found)
            continue
        scalar = _SCALAR_KINDS.get(fd.type)
        if scalar is None:  # bytes: no meaningful order, not indexed
            continue
        kind, type_name, minimum, maximum = scalar
        if kind is ValueKind.ENUM and fd.enum_type is not None:
            type_name = fd.enum_type.full_name
        found[path] = IndexedField(path, kind, type_name, fd, minimum, maximum)


#: Reads the index document of one message type's instances.
DocumentReader = Callable[[Message], dict[str, IndexValue]]

#: The reader of each message class seen (a class lookup is cheaper than the descriptor's).
_READERS: dict[type[Message], DocumentReader] = {}


def index_document(message: Message) -> dict[str, IndexValue]:
    """The index document of ``message``: indexed path -> JSON scalar."""
    reader = _READERS.get(type(message))
    if reader is None:
        reader = _READERS[type(message)] = document_reader(descriptor_of(message))
    return reader(message)


@functools.cache
def document_reader(descriptor: Descriptor) -> DocumentReader:
    """A function building the index document of a ``descriptor`` message, made once.

    Every write builds a document; walking the paths attribute by attribute per call
    costs tens of microseconds. The reader made here fetches every value with one
    ``attrgetter`` (C code; a timestamp's or duration's seconds and nanos as two
    values) and builds the document in one dict display, generated once per type: the
    values of integers, enums, bools and strings already are their JSON scalars, floats
    and time values take one conversion each.
    """
    getters: list[str] = []
    entries: list[str] = []
    for path, indexed in indexed_fields(descriptor).items():
        at = len(getters)
        if indexed.kind in (ValueKind.TIMESTAMP, ValueKind.DURATION):
            getters += [f"{path}.seconds", f"{path}.nanos"]
            value = f"v[{at}] * {_NANOS_PER_SECOND} + v[{at + 1}]"
        else:
            getters.append(path)
            value = f"_finite(v[{at}])" if indexed.kind is ValueKind.FLOAT else f"v[{at}]"
        # The source holds only indexes: the keys come from the tuple, never as text.
        entries.append(f"k[{len(entries)}]: {value}")
    if not getters:
        return lambda message: {}
    # A one-path attrgetter returns the value itself, not a 1-tuple.
    fetch = operator.attrgetter(*getters) if len(getters) > 1 else _one(getters[0])
    source = f"def read(message):\n    v = fetch(message)\n    return {{{', '.join(entries)}}}\n"
    keys = tuple(indexed_fields(descriptor))
    scope: dict[str, object] = {"fetch": fetch, "_finite": _finite, "k": keys}
    exec(compile(source, "<index reader>", "exec"), scope)
    reader: DocumentReader = scope["read"]  # type: ignore[assignment]
    return reader


def _one(path: str) -> Callable[[Message], tuple[object]]:
    getter = operator.attrgetter(path)
    return lambda message: (getter(message),)


def _finite(value: float) -> float | None:
    # JSON has no NaN or infinity (PostgreSQL rejects them); they sort as the default.
    return value if math.isfinite(value) else None


def _to_index_value(kind: ValueKind, value: object) -> IndexValue:
    if kind is ValueKind.TIMESTAMP or kind is ValueKind.DURATION:
        # By descriptor name, not isinstance: a message from another descriptor pool (a
        # dynamic message) has its own Timestamp class.
        if not isinstance(value, Message):
            raise TypeError(f"expected a {kind.value} message, got {type(value).__name__}")
        return _seconds_nanos(value)
    if kind is ValueKind.BOOL:
        return bool(value)
    if kind is ValueKind.STRING:
        return str(value)
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number for a {kind.value} field, got {type(value).__name__}")
    if kind is ValueKind.FLOAT:
        # JSON has no NaN or infinity (PostgreSQL rejects them); they sort as the default.
        return float(value) if math.isfinite(value) else None
    return int(value)


def resolve_path(descriptor: Descriptor, path: str) -> IndexedField:
    """The indexed field at ``path`` of ``descriptor``; UnindexedPathError if there is none."""
    indexed = indexed_fields(descriptor).get(path)
    if indexed is not None:
        return indexed
    raise UnindexedPathError(path, _why_not_indexed(descriptor, path))


def _why_not_indexed(descriptor: Descriptor, path: str) -> str:
    current: Descriptor | None = descriptor
    segments = path.split(".") if path else [""]
    for position, segment in enumerate(segments):
        if current is None:
            break
        fd = current.fields_by_name.get(segment)
        if fd is None:
            return f"{current.full_name} has no field {segment!r}"
        is_last = position == len(segments) - 1
        sub = fd.message_type
        if fd.is_repeated:
            if sub is not None and sub.GetOptions().map_entry:
                return f"{segment!r} is a map field; map fields are not indexed"
            return f"{segment!r} is a repeated field; repeated fields are not indexed"
        if fd.type == _FD.TYPE_BYTES:
            return f"{segment!r} is a bytes field; bytes fields are not indexed"
        if fd.type not in _MESSAGE_TYPES:
            if not is_last:
                return f"{segment!r} is a scalar field and has no field {segments[position + 1]!r}"
            break
        if sub is not None and sub.full_name in (_TIMESTAMP, _DURATION):
            if not is_last:
                return f"{segment!r} is a {sub.full_name} and is indexed as a whole"
            break
        if is_last:
            example = next(iter(indexed_fields(sub).keys()), None) if sub is not None else None
            hint = f", e.g. '{path}.{example}'" if example else ""
            return f"{segment!r} is a message; name one of its scalar fields{hint}"
        current = sub
    return "the field is not indexed (nested too deep or inside a recursive message)"


def _seconds_nanos(message: Message) -> int:
    seconds, nanos = getattr(message, "seconds", 0), getattr(message, "nanos", 0)
    if not isinstance(seconds, int) or not isinstance(nanos, int):
        raise TypeError(f"{message.DESCRIPTOR.full_name} has no integer seconds and nanos")
    return seconds * _NANOS_PER_SECOND + nanos


def timestamp_nanos(value: object) -> int | None:
    """Nanoseconds since the epoch of an aware datetime or a Timestamp; else None."""
    if isinstance(value, datetime):
        return None if value.tzinfo is None else delta_nanos(value - _EPOCH)
    if isinstance(value, Message) and value.DESCRIPTOR.full_name == _TIMESTAMP:
        return _seconds_nanos(value)
    return None


def delta_nanos(value: object) -> int | None:
    """Nanoseconds of a timedelta or a Duration message, computed exactly; else None."""
    if isinstance(value, timedelta):
        whole_seconds = value.days * 86_400 + value.seconds
        return whole_seconds * _NANOS_PER_SECOND + value.microseconds * 1_000
    if isinstance(value, Message) and value.DESCRIPTOR.full_name == _DURATION:
        return _seconds_nanos(value)
    return None
