"""MongoDB documents and queries for the storage: what :mod:`.sql` is for SQL.

Pure functions (no I/O): the stored document of a message, and the ``find`` filter,
sort and projection of a validated :class:`~.query.ListQuery`.

Index values are stored so that MongoDB's own comparisons give the SQL backends'
results, with plain ``find`` queries that indexes can serve:

* strings as BSON strings, which compare bytewise in UTF-8 (code point order) when no
  collation is given; booleans as booleans (false < true); floats as doubles, with
  non-finite ones (``None`` in the index document) stored as the default 0.0, like SQL's
  ``COALESCE``;
* integral kinds as the smallest exact BSON number: int32/int64 when the value fits,
  else Decimal128 (uint64 above 2**63 - 1, nanosecond times beyond the years
  1677-2262). MongoDB compares numbers by value across those types, and one value
  always gets the same type, so equality is exact too.

The index document is stored nested (``doc.dims.width``), as MongoDB's dotted paths
expect: an indexed path is always a leaf (a message field never is), so nesting is
unambiguous.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from bson.decimal128 import Decimal128
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from .index import IndexedField, IndexValue, ValueKind, descriptor_of, indexed_fields
from .query import ListQuery, Scalar, Target

__all__ = [
    "ID_FIELD",
    "INDEX_FIELD",
    "SORT_INDEX_PREFIX",
    "bson_value",
    "field_name",
    "find_filter",
    "index_subdocument",
    "normalise_update",
    "projection",
    "record_key",
    "sort_index",
    "sort_spec",
    "token_values",
]

#: Top-level field holding the record id (the repository's id field).
ID_FIELD = "id"
#: Top-level field holding the nested index document.
INDEX_FIELD = "doc"
#: Name prefix of the indexes created for list orderings.
SORT_INDEX_PREFIX = "nexus_sort_"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: A value as stored in (and compared by) MongoDB.
BsonScalar = int | float | bool | str | Decimal128


def record_key(namespace: str, collection: str, record_id: str) -> str:
    """The ``_id`` of a record: ``<namespace>|<collection>|<id>``, unambiguously.

    Namespaces cannot contain "|"; in the collection "%" and "|" are percent-escaped, so
    everything after the second "|" is the id, whatever characters it holds.
    """
    escaped = collection.replace("%", "%25").replace("|", "%7C")
    return f"{namespace}|{escaped}|{record_id}"


def bson_value(kind: ValueKind, value: IndexValue) -> BsonScalar:
    """``value`` (an index or query value of ``kind``) as stored and compared in MongoDB."""
    if kind is ValueKind.FLOAT:
        return 0.0 if value is None else float(value)
    if value is None:
        raise TypeError(f"a {kind.value} index value cannot be None")
    if kind is ValueKind.BOOL or kind is ValueKind.STRING:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer for a {kind.value} field, got {value!r}")
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    return Decimal128(str(value))


def _scalar(kind: ValueKind, raw: object, default: IndexValue) -> Scalar:
    """A stored value read back as the plain Python scalar a page token carries."""
    if raw is None:  # a document written before the field existed
        raw = default
    if kind is ValueKind.STRING:
        if isinstance(raw, str):
            return raw
    elif kind is ValueKind.BOOL:
        if isinstance(raw, bool):
            return raw
    elif kind is ValueKind.FLOAT:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
    elif isinstance(raw, Decimal128):
        return int(raw.to_decimal())
    elif isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise TypeError(f"expected a {kind.value} value from MongoDB, got {type(raw).__name__}")


def index_subdocument(message: Message) -> dict[str, Any]:
    """The nested index document of ``message``, values as :func:`bson_value` stores them."""
    nested: dict[str, Any] = {}
    for indexed in indexed_fields(descriptor_of(message)).values():
        *parents, leaf = indexed.attributes
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = bson_value(indexed.kind, indexed.read(message))
    return nested


def field_name(target: Target) -> str:
    """The document field holding ``target``'s value (dotted for index paths)."""
    return ID_FIELD if target.field is None else f"{INDEX_FIELD}.{target.field.path}"


def _bind(target: Target, value: Scalar) -> BsonScalar:
    return bson_value(target.kind, value)


def find_filter(
    query: ListQuery,
    *,
    namespace: str,
    collection: str,
    after: Sequence[Scalar] | None = None,
) -> dict[str, Any]:
    """The ``find`` filter of ``query`` in one collection, past the row ``after`` if given.

    Equality and ``$in`` terms sit at the top level next to ``ns`` and ``coll``, where
    every server's planner matches them to a compound index's leading keys (SecantusDB
    scans the collection when they are wrapped in ``$and``).
    """
    found: dict[str, Any] = {"ns": namespace, "coll": collection}
    for condition in query.conditions:
        name = field_name(condition.target)
        values = [_bind(condition.target, v) for v in condition.values]
        found[name] = {"$in": values} if condition.many else values[0]
    if after is not None:
        found.update(_after(query, after))
        # The $or alone gives an index nothing to seek to; a bound on the first sort
        # key starts the scan at the previous page's last row.
        first = query.sort[0]
        bound = {"$lte" if first.descending else "$gte": _bind(first.target, after[0])}
        name = field_name(first.target)
        if name in found:
            found["$and"] = [{name: bound}]  # kept apart from the filter's term
        else:
            found[name] = bound
    return found


def _after(query: ListQuery, last: Sequence[Scalar]) -> dict[str, Any]:
    """Rows strictly after the row whose sort values are ``last`` (keyset seek).

    (a, b, id) after (x, y, z) is ``a > x OR (a = x AND b > y) OR (a = x AND b = y AND
    id > z)``, with ``<`` for descending keys.
    """
    alternatives: list[dict[str, Any]] = []
    for position, key in enumerate(query.sort):
        branch: dict[str, Any] = {
            field_name(prior.target): _bind(prior.target, last[i])
            for i, prior in enumerate(query.sort[:position])
        }
        operator = "$lt" if key.descending else "$gt"
        branch[field_name(key.target)] = {operator: _bind(key.target, last[position])}
        alternatives.append(branch)
    return {"$or": alternatives}


def sort_spec(query: ListQuery) -> list[tuple[str, int]]:
    """The ``find`` sort of ``query``; it ends with the id, so the order is total."""
    return [(field_name(key.target), -1 if key.descending else 1) for key in query.sort]


def projection(query: ListQuery) -> dict[str, int]:
    """The fields a list reads: the payload and the sort values for the next token."""
    fields = {"_id": 0, "payload": 1}
    fields.update({field_name(key.target): 1 for key in query.sort})
    return fields


def token_values(query: ListQuery, document: Mapping[str, Any]) -> list[Scalar]:
    """The sort values of a listed document, as its page token carries them."""
    values: list[Scalar] = []
    for key in query.sort:
        raw: Any = document
        for name in field_name(key.target).split("."):
            raw = raw.get(name) if isinstance(raw, Mapping) else None
        field = key.target.field
        default: IndexValue = "" if field is None else field.default
        values.append(_scalar(key.target.kind, raw, default))
    return values


def sort_index(query: ListQuery) -> tuple[str, list[tuple[str, int]]] | None:
    """The name and keys of an index serving ``query``'s order, or None if the key does.

    The default order (by id) is served by the unique (ns, coll, id) index. Other
    orders get ``(ns, coll, <sort fields>)``, directions flipped so the first sort field
    ascends: an index serves its exact reverse order as well.
    """
    sort = sort_spec(query)
    if sort == [(ID_FIELD, 1)]:
        return None
    if sort[0][1] < 0:
        sort = [(name, -direction) for name, direction in sort]
    keys = [("ns", 1), ("coll", 1), *sort]
    digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]
    return f"{SORT_INDEX_PREFIX}{digest}", keys


def normalise_update(
    descriptor: Descriptor,
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A filter and pipeline giving documents the indexed fields they lack, or None.

    Documents written before a field was added to the message lack it; SQL reads such
    values as the field's default, and so must MongoDB's filters and sorts: the update
    stores that default. None when the message has no indexed field.
    """
    fields: Mapping[str, IndexedField] = indexed_fields(descriptor)
    if not fields:
        return None
    names = [f"{INDEX_FIELD}.{path}" for path in fields]
    missing = {"$or": [{name: {"$exists": False}} for name in names]}
    defaults = {
        name: {"$ifNull": [f"${name}", {"$literal": bson_value(field.kind, field.default)}]}
        for name, field in zip(names, fields.values(), strict=True)
    }
    return missing, [{"$set": defaults}]
