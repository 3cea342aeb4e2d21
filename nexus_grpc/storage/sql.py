"""SQL for list queries and inserts, the same results on SQLite and PostgreSQL.

Index values are read out of the JSON index document with typed expressions so that
numbers compare as numbers and strings by code point on both backends:

* SQLite: ``json_extract`` already yields INTEGER / REAL / TEXT, and TEXT compares
  bytewise (BINARY collation), i.e. by code point for UTF-8.
* PostgreSQL: the text value is cast to BIGINT, NUMERIC (uint64 and nanosecond times,
  which can exceed BIGINT), DOUBLE PRECISION or BOOLEAN; strings get ``COLLATE "C"``,
  which is code point order too, whatever the database locale.

Missing values (documents written before a field existed) read as the field's default,
so no NULL ever reaches a comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Double,
    Float,
    Integer,
    Numeric,
    String,
    Text,
    and_,
    false,
    func,
    literal,
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
        return or_(*alternatives)


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
        extracted = func.json_extract(records.c.index_doc, f'$."{path}"')
        default: Scalar = 0
        if kind is ValueKind.STRING:
            default = ""
        elif kind is ValueKind.FLOAT:
            default = 0.0
        return type_coerce(func.coalesce(extracted, default), _sqlite_type(kind))

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
        text = func.jsonb_extract_path_text(records.c.index_doc, literal(path, Text()))
        present = func.coalesce(text, _DEFAULT_TEXT.get(kind, "0"), type_=Text())
        if kind is ValueKind.STRING:
            return present.collate("C")
        return present.cast(_postgres_type(kind))

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
    if kind in (ValueKind.INTEGER, ValueKind.ENUM):
        return BigInteger()
    return Numeric()  # uint64 and nanoseconds: beyond BIGINT's range


def dialect_for(name: str) -> SqlDialect:
    """The SqlDialect for a SQLAlchemy dialect name ("sqlite" or "postgresql")."""
    if name == "sqlite":
        return _Sqlite()
    if name == "postgresql":
        return _Postgres()
    raise ValueError(f"unsupported database {name!r}: use SQLite or PostgreSQL")
