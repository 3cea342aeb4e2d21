"""SQL for list queries and inserts, the same results on SQLite and PostgreSQL.

Index values are read out of the JSON index document with typed expressions so that
numbers compare as numbers and strings by code point on both backends:

* SQLite: ``json_extract`` already yields INTEGER / REAL / TEXT, and TEXT compares
  bytewise (BINARY collation), i.e. by code point for UTF-8.
* PostgreSQL: a JSON number is cast to NUMERIC (every integral kind: uint64 and
  nanosecond times exceed BIGINT) or DOUBLE PRECISION, a JSON boolean to BOOLEAN, and
  a value of another JSON type reads as the default (a cast must never fail: see
  ``_Postgres.index_value``); strings get ``COLLATE "C"``, which is code point order
  too, whatever the database locale.

Missing values (documents written before a field existed) read as the field's default,
so no NULL ever reaches a comparison.

Paths and defaults are written into the statement as literals, so each expression is
exactly the one a declared index (``indexes``) is built on and the planner uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Double,
    Float,
    Integer,
    Numeric,
    String,
    Text,
    and_,
    case,
    false,
    func,
    literal,
    literal_column,
    or_,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.types import TypeEngine

from .index import ValueKind
from .points import PointSql, points_for
from .query import Condition, Scalar, SortKey, Target
from .schema import records

__all__ = ["SqlDialect", "dialect_for"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class SqlDialect:
    """Builds typed index-value expressions for one database backend."""

    name = ""
    #: The backend's point statements (one record by its key), as SQL text.
    points: PointSql

    def value(self, target: Target) -> ColumnElement[Any]:
        """The value of ``target`` in a row, typed for comparison and ordering."""
        if target.field is None:
            return records.c.id
        return self.index_value(target.field.path, target.kind)

    def index_value(self, path: str, kind: ValueKind) -> ColumnElement[Any]:
        """The typed value at ``path`` of the index document (default if missing)."""
        raise NotImplementedError

    def bind(self, target: Target, value: Scalar) -> ColumnElement[Any]:
        """``value`` as a bound parameter of the same SQL type as :meth:`value`."""
        raise NotImplementedError

    def insert(self) -> Insert:
        """An INSERT into the records table that skips rows whose key exists."""
        raise NotImplementedError

    def result(self, target: Target, raw: object) -> Scalar:
        """A selected :meth:`value` as the plain Python scalar a page token carries."""
        kind = target.kind
        if kind is ValueKind.STRING:
            return str(raw)
        if kind is ValueKind.BOOL:
            return bool(raw)
        if not isinstance(raw, int | float | Decimal):
            raise TypeError(f"expected a number from the database, got {type(raw).__name__}")
        if kind is ValueKind.FLOAT:
            return float(raw)
        # PostgreSQL NUMERIC arrives as Decimal; integral kinds are exact ints in tokens.
        return int(raw)

    # The statement fragments below only use value() and bind(), so they are shared.

    def conditions(self, conditions: Sequence[Condition]) -> list[ColumnElement[bool]]:
        """WHERE terms for a filter."""
        terms: list[ColumnElement[bool]] = []
        for condition in conditions:
            column = self.value(condition.target)
            if not condition.many:
                terms.append(column == self.bind(condition.target, condition.values[0]))
            elif condition.values:
                binds = [self.bind(condition.target, v) for v in condition.values]
                terms.append(column.in_(binds))
            else:
                terms.append(false())  # "IN ()" matches nothing
        return terms

    def order_by(self, sort: Sequence[SortKey]) -> list[UnaryExpression[Any]]:
        """ORDER BY terms."""
        return [
            self.value(key.target).desc() if key.descending else self.value(key.target).asc()
            for key in sort
        ]

    def after(self, sort: Sequence[SortKey], last: Sequence[Scalar]) -> ColumnElement[bool]:
        """Rows strictly after the row whose sort values are ``last`` (keyset seek).

        (a, b, id) after (x, y, z) is ``a > x OR (a = x AND b > y) OR (a = x AND b = y AND
        id > z)``, with ``<`` for descending keys. Row-value comparisons would be shorter
        but cannot mix directions.
        """
        alternatives: list[ColumnElement[bool]] = []
        for position, key in enumerate(sort):
            equal_prefix = [
                self.value(prior.target) == self.bind(prior.target, last[i])
                for i, prior in enumerate(sort[:position])
            ]
            column, bound = self.value(key.target), self.bind(key.target, last[position])
            beyond = column < bound if key.descending else column > bound
            alternatives.append(and_(*equal_prefix, beyond))
        # The OR alone gives an index nothing to seek to: a deep page would read every
        # row before it. The redundant bound on the first key starts the range scan there.
        first, start = self.value(sort[0].target), self.bind(sort[0].target, last[0])
        return and_(first <= start if sort[0].descending else first >= start, or_(*alternatives))


_DEFAULT_TEXT = {
    ValueKind.STRING: "",
    ValueKind.BOOL: "false",
    ValueKind.FLOAT: "0",
}


class _Sqlite(SqlDialect):
    name = "sqlite"
    points = points_for("sqlite")

    def index_value(self, path: str, kind: ValueKind) -> ColumnElement[Any]:
        # Index paths are proto field names joined by dots: quoting the key is enough.
        extracted = func.json_extract(records.c.index_doc, _sql_text(f'$."{path}"'))
        default = {ValueKind.STRING: "''", ValueKind.FLOAT: "0.0"}.get(kind, "0")
        return type_coerce(func.coalesce(extracted, literal_column(default)), _sqlite_type(kind))

    def bind(self, target: Target, value: Scalar) -> ColumnElement[Any]:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT64_MIN <= value <= _INT64_MAX:
                # SQLite integers are 64-bit; json_extract reads larger ones as REAL too.
                return literal(float(value), Float())
            return literal(value, Integer())
        return literal(value, _sqlite_type(target.kind))

    def insert(self) -> Insert:
        return sqlite.insert(records).on_conflict_do_nothing(
            index_elements=[records.c.namespace, records.c.collection, records.c.id]
        )


def _sql_text(value: str) -> ColumnElement[str]:
    """``value`` as a SQL string literal written into the statement, not a bound parameter.

    Index paths are part of the expression a database index is built on: a parameter in
    their place would make the query's expression differ from the index's, and the
    planner would scan instead.
    """
    return literal_column("'" + value.replace("'", "''") + "'", Text())


def _sqlite_type(kind: ValueKind) -> TypeEngine[Any]:
    if kind is ValueKind.STRING:
        return String()
    if kind is ValueKind.BOOL:
        return Boolean()
    if kind is ValueKind.FLOAT:
        return Float()
    return Integer()


class _Postgres(SqlDialect):
    name = "postgresql"
    points = points_for("postgresql")

    def index_value(self, path: str, kind: ValueKind) -> ColumnElement[Any]:
        key = _sql_text(path)
        text = records.c.index_doc.op("->>", return_type=Text())(key)
        if kind is ValueKind.STRING:
            return func.coalesce(text, _sql_text(""), type_=Text()).collate("C")
        # Cast only a JSON value of the expected type. A declared index is computed for
        # every row of the shared table: another collection's document (or one written
        # before a field's type changed) may hold a string or a fraction at this path,
        # and a failing cast would fail that row's write. Those read as the default.
        json_type = "boolean" if kind is ValueKind.BOOL else "number"
        typed = func.jsonb_typeof(records.c.index_doc.op("->")(key)) == _sql_text(json_type)
        default = _sql_text(_DEFAULT_TEXT.get(kind, "0")).cast(_postgres_type(kind))
        return case((typed, text.cast(_postgres_type(kind))), else_=default)

    def bind(self, target: Target, value: Scalar) -> ColumnElement[Any]:
        return literal(value, _postgres_type(target.kind))

    def insert(self) -> Insert:
        return postgresql.insert(records).on_conflict_do_nothing(
            index_elements=[records.c.namespace, records.c.collection, records.c.id]
        )


def _postgres_type(kind: ValueKind) -> TypeEngine[Any]:
    if kind is ValueKind.STRING:
        return Text()
    if kind is ValueKind.BOOL:
        return Boolean()
    if kind is ValueKind.FLOAT:
        return Double()
    # Every integral kind, int32 included: NUMERIC takes any JSON integer another
    # document may hold at the path (uint64 and nanoseconds exceed BIGINT).
    return Numeric()


def dialect_for(name: str) -> SqlDialect:
    """The SqlDialect for a SQLAlchemy dialect name ("sqlite" or "postgresql")."""
    if name == "sqlite":
        return _Sqlite()
    if name == "postgresql":
        return _Postgres()
    raise ValueError(f"unsupported database {name!r}: use SQLite or PostgreSQL")
