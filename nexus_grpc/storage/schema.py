"""The one table every namespace and collection shares, as SQLAlchemy Core metadata."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    DateTime,
    Dialect,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    literal,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

__all__ = [
    "INDEX_CATALOG_TABLE",
    "INDEX_RETIRED_TABLE",
    "MAX_KEY_LENGTH",
    "RECORDS_TABLE",
    "collection_literal",
    "index_catalog",
    "index_retired",
    "metadata",
    "records",
]

#: Name of the table that holds every record.
RECORDS_TABLE = "nexus_records"

#: Name of the table recording which database indexes nexus built, and for whom.
INDEX_CATALOG_TABLE = "nexus_index_catalog"

#: Name of the table holding the indexes nexus keeps for a while after the last
#: contract declaring them stopped (``storage.index_drop_delay``).
INDEX_RETIRED_TABLE = "nexus_index_retired"

#: Longest namespace, collection or id the table accepts (in characters).
MAX_KEY_LENGTH = 255


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no timezone-aware type: SQLAlchemy stores the wall-clock digits and
    returns naive datetimes, so values are normalised to UTC on the way in and
    labelled UTC on the way out. PostgreSQL gets ``timestamptz`` and needs neither.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _key_column(name: str) -> Column[str]:
    # Collation "C" on PostgreSQL makes ids sort by code point, exactly as SQLite's
    # BINARY collation does, whatever the database's locale; the primary key index then
    # serves the default order and the keyset comparisons of pagination.
    key_type = String(MAX_KEY_LENGTH).with_variant(
        String(MAX_KEY_LENGTH, collation="C"), "postgresql"
    )
    return Column(name, key_type, nullable=False)


metadata = MetaData()

#: One row per stored message. ``payload`` (the serialized message) is the source of
#: truth; ``index_doc`` is derived from it on every write and only serves queries.
records = Table(
    RECORDS_TABLE,
    metadata,
    _key_column("namespace"),
    _key_column("collection"),
    _key_column("id"),
    Column("payload", LargeBinary, nullable=False),
    Column("index_doc", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("namespace", "collection", "id", name=f"{RECORDS_TABLE}_pkey"),
)

#: One row per (declared index, message type declaring it): what nexus built on
#: ``nexus_records``, so that an index a contract no longer declares is dropped at start
#: and no index nexus did not build is ever touched. ``definition`` lists the index's
#: paths with their value kinds, which tells a field's type change apart.
index_catalog = Table(
    INDEX_CATALOG_TABLE,
    metadata,
    Column("index_name", String(63), nullable=False),
    Column("message_type", String(MAX_KEY_LENGTH), nullable=False),
    Column("definition", String(2000), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("index_name", "message_type", name=f"{INDEX_CATALOG_TABLE}_pkey"),
)

#: One row per index no loaded contract declares any more, kept until ``retired_at`` +
#: the drop delay so that processes of the previous release (a rolling upgrade) and a
#: release rolled back to keep their indexes. A start that declares it again deletes the
#: row. A table of its own, not a catalog column: releases that know nothing of it read
#: and write the catalog as before.
index_retired = Table(
    INDEX_RETIRED_TABLE,
    metadata,
    Column("index_name", String(63), nullable=False),
    Column("retired_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("index_name", name=f"{INDEX_RETIRED_TABLE}_pkey"),
)


def collection_literal(collection: str) -> ColumnElement[bool]:
    """``collection = '<collection>'`` with the name rendered into the statement, quoted
    by the dialect: a planner can prove that a literal implies a partial index's WHERE
    (the declared indexes', see ``indexes``), never that a bound parameter does."""
    return records.c.collection == literal(collection, literal_execute=True)
