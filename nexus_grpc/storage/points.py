"""Point statements (one record by its key) as SQL text written once per backend.

A repository's get, create, update and delete touch one row by its primary key (and
``delete_many`` a few hundred at most, by their keys). Built
as SQLAlchemy expressions they cost more than the database does: constructing the
expression, compiling it (even from the compiled cache) and SQLAlchemy's execution
context take ~150 µs of CPU, where SQLite needs ~5 µs to run the statement. These
statements never change shape, so their text is written here once and run directly on
the driver's connection (sqlite3 with its statement cache; asyncpg with its prepared
statements), with the few value conversions the table's column types would apply:

* timestamps: SQLite stores SQLAlchemy's text form (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC
  wall clock), PostgreSQL ``timestamptz``;
* the index document: JSON text (orjson's, compact; SQLAlchemy's JSON type writes
  ``json.dumps``'s: the same JSON to SQLite's ``json_extract`` and to ``jsonb``).

Lists and other statements still go through SQLAlchemy (their shape varies per call).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .schema import RECORDS_TABLE

__all__ = ["MAX_DELETE_IDS", "Point", "PointSql", "RawRows", "points_for"]

#: A point statement's SQL text and its parameters.
Point = tuple[str, Sequence[Any]]

_KEY = "namespace = {0} AND collection = {1} AND id = {2}"


@dataclass(frozen=True, slots=True)
class RawRows:
    """A point statement's result: its rows as tuples, and the row count."""

    rows: Sequence[tuple[Any, ...]]
    rowcount: int


@dataclass(frozen=True, slots=True)
class PointSql:
    """The point statements of one backend and its value conversions.

    Parameters, in order: ``select`` / ``select_for_update`` / ``payload`` /
    ``payload_for_update`` / ``version`` / ``delete`` (namespace, collection, id);
    ``insert`` (namespace, collection, id, payload, index_doc, created_at, updated_at);
    ``update`` (payload, index_doc, updated_at, namespace, collection, id);
    ``update_expecting`` (those, then the version).
    """

    select: str
    select_for_update: str
    #: The payload alone: what ``get`` returns needs no version or times, whose
    #: decoding (two timestamps) costs ~10 µs a read on asyncpg.
    payload: str
    payload_for_update: str
    version: str
    insert: str
    update: str
    update_expecting: str
    delete: str
    #: Whether timestamps travel as text (SQLite) rather than datetimes (PostgreSQL).
    text_times: bool
    #: Whether the index document travels as JSON text (both drivers take text).
    text_json: bool
    #: Whether parameters are numbered (``$1``: asyncpg) rather than ``?`` (sqlite3).
    numbered: bool

    def delete_ids(self, namespace: str, collection: str, ids: Sequence[str]) -> Point:
        """One DELETE of up to :data:`MAX_DELETE_IDS` ids of one collection. The id list
        is padded (with its last id) to a power of two, so a handful of statement texts
        serve every count and stay in the drivers' statement caches."""
        if not 0 < len(ids) <= MAX_DELETE_IDS:
            raise ValueError(f"delete_ids takes 1 to {MAX_DELETE_IDS} ids, got {len(ids)}")
        size = 1 << (len(ids) - 1).bit_length()
        padded = [*ids, *[ids[-1]] * (size - len(ids))]
        return _delete_ids(self.numbered, size), (namespace, collection, *padded)

    def time(self, value: datetime) -> Any:
        """A timezone-aware time as the driver binds it."""
        if not self.text_times:
            return value
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def read_time(self, value: Any) -> datetime:
        """A stored time back as an aware UTC datetime."""
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a timestamp from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def document(self, value: dict[str, Any]) -> Any:
        """An index document as the driver binds it (JSON text)."""
        if not self.text_json:
            return value
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # integers beyond 64 bits (far timestamps' nanos)
            return json.dumps(value)


#: Most ids one :meth:`PointSql.delete_ids` statement deletes.
MAX_DELETE_IDS = 256


@functools.cache
def _delete_ids(numbered: bool, count: int) -> str:
    marks = [f"${n}" if numbered else "?" for n in range(1, count + 3)]
    ids = ", ".join(marks[2:])
    return f"DELETE FROM {RECORDS_TABLE} WHERE namespace = {marks[0]} AND collection = " + (
        f"{marks[1]} AND id IN ({ids})"
    )


def _statements(placeholders: Sequence[str], *, text: bool, lock: str) -> PointSql:
    p = placeholders
    key = _KEY.format(p[0], p[1], p[2])
    columns = "payload, version, created_at, updated_at"
    select = f"SELECT {columns} FROM {RECORDS_TABLE} WHERE {key}"
    payload = f"SELECT payload FROM {RECORDS_TABLE} WHERE {key}"
    update = (
        f"UPDATE {RECORDS_TABLE} SET payload = {p[0]}, index_doc = {p[1]}, "
        f"version = version + 1, updated_at = {p[2]} WHERE " + _KEY.format(p[3], p[4], p[5])
    )
    return PointSql(
        select=select,
        select_for_update=select + lock,
        payload=payload,
        payload_for_update=payload + lock,
        version=f"SELECT version FROM {RECORDS_TABLE} WHERE {key}",
        insert=(
            f"INSERT INTO {RECORDS_TABLE} (namespace, collection, id, payload, index_doc, "
            f"version, created_at, updated_at) VALUES ({p[0]}, {p[1]}, {p[2]}, {p[3]}, "
            f"{p[4]}, 1, {p[5]}, {p[6]}) ON CONFLICT (namespace, collection, id) DO NOTHING"
        ),
        update=update,
        update_expecting=f"{update} AND version = {p[6]}",
        delete=f"DELETE FROM {RECORDS_TABLE} WHERE {key}",
        text_times=text,
        text_json=True,
        numbered=p[0].startswith("$"),
    )


#: SQLite: qmark parameters; no row locks (a writing transaction holds the database's).
_SQLITE = _statements(["?"] * 7, text=True, lock="")
#: PostgreSQL (asyncpg): numbered parameters; ``FOR UPDATE`` locks the row.
_POSTGRES = _statements([f"${n}" for n in range(1, 8)], text=False, lock=" FOR UPDATE")


def points_for(backend: str) -> PointSql:
    """The point statements of ``backend`` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        return _SQLITE
    if backend == "postgresql":
        return _POSTGRES
    raise ValueError(f"no point statements for {backend!r}")
