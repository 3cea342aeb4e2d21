"""A typed collection of protobuf messages inside one namespace."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.exc import IntegrityError

from nexus_grpc.errors import (
    AlreadyExistsError,
    ConflictError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from nexus_grpc.ids import new_id

from .declared import indexed_collections
from .engine import ScopeConnection
from .index import descriptor_of, index_document
from .points import MAX_DELETE_IDS, Point, RawRows
from .query import DEFAULT_PAGE_SIZE, build_query, check_page_size
from .schema import MAX_KEY_LENGTH, collection_literal, records
from .sql import SqlDialect

__all__ = ["M", "Page", "Record", "Repository", "Scope"]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Page(Generic[M]):
    """One page of a list: the items and the token of the next page ("" on the last)."""

    items: list[M]
    next_page_token: str


@dataclass(frozen=True)
class Record(Generic[M]):
    """A stored message with its bookkeeping: ``version`` starts at 1, +1 per update."""

    message: M
    version: int
    created_at: datetime
    updated_at: datetime


class Scope(Protocol):
    """Where a repository runs its statements: a namespace, maybe inside a transaction."""

    @property
    def namespace(self) -> str:
        """The namespace every row read or written belongs to."""
        ...

    @property
    def dialect(self) -> SqlDialect:
        """The database backend."""
        ...

    @property
    def in_transaction(self) -> bool:
        """Whether statements join a caller's transaction (else each is its own)."""
        ...

    def connection(self, *, write: bool) -> AbstractAsyncContextManager[ScopeConnection]:
        """A connection to run one operation's statements on: in the unit of work's
        transaction, or else in one of their own (on SQLite, one per statement)."""
        ...

    async def run_point(
        self, sql: str, params: Sequence[Any], *, write: bool, or_else: Point | None = None
    ) -> RawRows:
        """Run one point statement (see ``points``): in the unit of work's transaction,
        or else in one of its own. ``or_else``: a read to run when the statement changed
        no row; its rows come back instead, with the statement's row count (0)."""
        ...


class Repository(Generic[M]):
    """Messages of one type in one collection of one namespace.

    Get one from :meth:`Namespace.repository` (each call its own transaction) or from
    :meth:`UnitOfWork.repository` (calls join that transaction). Messages go in and come
    out as copies: the repository never keeps or changes a message it was given.
    """

    def __init__(
        self, scope: Scope, message_type: type[M], *, collection: str, id_field: str
    ) -> None:
        self._scope = scope
        self._type = message_type
        self._collection = collection
        self._id_field = id_field
        self._points = scope.dialect.points
        # PostgreSQL's text holds no NUL: no record there has such an id, and asking
        # the server for one would fail.
        self._nul_free = scope.dialect.name == "postgresql"

    @property
    def collection(self) -> str:
        """The collection name (by default the message's full name)."""
        return self._collection

    @property
    def message_type(self) -> type[M]:
        """The message class stored here."""
        return self._type

    @property
    def id_field(self) -> str:
        """The name of the string field holding each message's id."""
        return self._id_field

    async def create(self, message: M) -> M:
        """Store a new message and return a copy of it as stored.

        An empty id field is filled with a fresh id (in the copy): a version 7 UUID in
        hex, which tells when it was made (see :mod:`nexus_grpc.ids`). Raises
        AlreadyExistsError if the collection holds that id already.
        """
        created = self._copy(message)
        record_id: str = getattr(created, self._id_field)
        if not record_id:
            record_id = new_id()
            setattr(created, self._id_field, record_id)
        _check_id(self._id_field, record_id)
        points = self._points
        now = points.time(datetime.now(UTC))
        # ON CONFLICT DO NOTHING instead of catching the unique violation: on PostgreSQL
        # a failed INSERT would poison the caller's whole transaction. A concurrent insert
        # of the same key waits for the other transaction, then inserts nothing.
        params = (
            self._scope.namespace,
            self._collection,
            record_id,
            created.SerializeToString(deterministic=True),
            self._document(created),
            now,
            now,
        )
        try:
            inserted = (await self._scope.run_point(points.insert, params, write=True)).rowcount
        except IntegrityError as exc:
            raise AlreadyExistsError(self._collection, record_id) from exc
        if inserted != 1:
            raise AlreadyExistsError(self._collection, record_id)
        return created

    async def get(self, id: str, *, for_update: bool = False) -> M | None:
        """The message with ``id``, or None.

        ``for_update`` (only inside a transaction) locks the row until the transaction
        ends, so a read-modify-write cannot lose a concurrent update.
        """
        points = self._points
        sql = points.payload_for_update if for_update else points.payload
        rows = await self._read_point(id, sql, for_update)
        return None if not rows else self._parse(rows[0][0])

    async def get_record(self, id: str, *, for_update: bool = False) -> Record[M] | None:
        """Like :meth:`get`, with the version and timestamps."""
        points = self._points
        sql = points.select_for_update if for_update else points.select
        rows = await self._read_point(id, sql, for_update)
        if not rows:
            return None
        payload, version, created_at, updated_at = rows[0]
        created, updated = points.read_time(created_at), points.read_time(updated_at)
        return Record(self._parse(payload), version, created, updated)

    async def _read_point(self, id: str, sql: str, for_update: bool) -> Sequence[Any]:
        """The rows of point read ``sql`` of ``id`` (none for an id no record can have)."""
        if for_update and not self._scope.in_transaction:
            raise RuntimeError(
                "for_update needs a transaction: use the repository of a "
                "Namespace.transaction() unit of work"
            )
        if not self._can_have(id):
            return ()
        # PostgreSQL locks the row; SQLite has no row locks, and a transaction holds the
        # database write lock from BEGIN IMMEDIATE anyway.
        params = (self._scope.namespace, self._collection, id)
        return (await self._scope.run_point(sql, params, write=for_update)).rows

    async def update(self, message: M, *, expected_version: int | None = None) -> M:
        """Replace the stored message with the same id; return a copy of the new one.

        Raises NotFoundError if there is none. With ``expected_version`` the update only
        happens if the stored version still is that one, else ConflictError: optimistic
        concurrency without holding a lock.
        """
        updated = self._copy(message)
        record_id: str = getattr(updated, self._id_field)
        if not self._can_have(record_id) or not record_id:
            raise NotFoundError(self._collection, record_id)
        points, scope = self._points, self._scope
        key = (scope.namespace, self._collection, record_id)
        params: tuple[Any, ...] = (
            updated.SerializeToString(deterministic=True),
            self._document(updated),
            points.time(datetime.now(UTC)),
            *key,
        )
        sql = points.update
        if expected_version is not None:
            sql, params = points.update_expecting, (*params, expected_version)
        # When nothing changed, the stored version tells a missing record from a conflict
        # (without an expected version, nothing changed means there is none).
        or_else = None if expected_version is None else (points.version, key)
        done = await scope.run_point(sql, params, write=True, or_else=or_else)
        if done.rowcount == 1:
            return updated
        current = done.rows[0][0] if done.rows else None
        if current is None:
            raise NotFoundError(self._collection, record_id)
        raise ConflictError(
            f"{self._collection} {record_id!r} was changed concurrently: version {current}, "
            f"expected {expected_version}; re-read it and retry"
        )

    async def delete(self, id: str) -> bool:
        """Delete the message with ``id``; whether there was one."""
        if not self._can_have(id):
            return False
        key = (self._scope.namespace, self._collection, id)
        return bool((await self._scope.run_point(self._points.delete, key, write=True)).rowcount)

    async def delete_many(self, ids: Iterable[str]) -> int:
        """Delete the messages with these ``ids`` in one statement; how many there were."""
        wanted = sorted({id for id in ids if self._can_have(id)})
        if not wanted:
            return 0
        if len(wanted) <= MAX_DELETE_IDS:
            # A point statement (see ``points``): fixed SQL on the driver's connection.
            sql, params = self._points.delete_ids(self._scope.namespace, self._collection, wanted)
            return (await self._scope.run_point(sql, params, write=True)).rowcount
        async with self._scope.connection(write=True) as conn:
            condition = and_(self._collection_rows(), records.c.id.in_(wanted))
            return int((await conn.execute(records.delete().where(condition))).rowcount)

    async def list(
        self,
        *,
        filter: Mapping[str, object] | None = None,
        order_by: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> Page[M]:
        """One page of the messages matching ``filter``, in ``order_by`` order.

        ``filter`` maps field paths ("customer_id", "address.city") to a value (equal)
        or a list/tuple of values (any of). Enum values may be numbers or names;
        Timestamp values datetimes or Timestamps. ``order_by`` is "" (by id), "field",
        "field desc" or several of those separated by commas; the id breaks ties.
        Pass the previous page's ``next_page_token`` with the same filter and order_by
        to continue. Bad arguments raise InvalidQueryError.
        """
        size = check_page_size(page_size)
        descriptor = descriptor_of(self._type)
        query = build_query(
            descriptor,
            id_field=self._id_field,
            namespace=self._scope.namespace,
            collection=self._collection,
            filter=filter,
            order_by=order_by,
        )
        dialect = self._scope.dialect
        sort_columns = [
            dialect.value(key.target).label(f"k{i}") for i, key in enumerate(query.sort)
        ]
        if self._collection in indexed_collections(descriptor):
            # A literal: the collection's partial indexes can serve the page.
            in_collection = collection_literal(self._collection)
        else:
            # Bound: one statement for every other collection, prepared once per
            # connection however many collections are listed (a literal would make a
            # statement per collection, beyond the connection's statement cache).
            in_collection = records.c.collection == self._collection
        statement = (
            select(records.c.payload, *sort_columns)
            .where(
                records.c.namespace == self._scope.namespace,
                in_collection,
                *dialect.conditions(query.conditions),
            )
            .order_by(*dialect.order_by(query.sort))
            .limit(size + 1)  # one more than asked tells whether another page exists
        )
        if page_token:
            statement = statement.where(dialect.after(query.sort, query.decode_token(page_token)))
        async with self._scope.connection(write=False) as conn:
            rows = (await conn.execute(statement)).all()
        items = [self._parse(row[0]) for row in rows[:size]]  # row[0]: the payload
        next_token = ""
        if len(rows) > size:
            last = rows[size - 1]
            next_token = query.encode_token(
                [dialect.result(key.target, last[i + 1]) for i, key in enumerate(query.sort)]
            )
        return Page(items, next_token)

    def _collection_rows(self) -> ColumnElement[bool]:
        return and_(
            records.c.namespace == self._scope.namespace,
            records.c.collection == self._collection,
        )

    def _document(self, message: M) -> Any:
        """``message``'s index document as the driver binds it."""
        document = index_document(message)
        bound = self._points.document(document)
        if self._nul_free and "\\u0000" in bound:
            # PostgreSQL's jsonb refuses NUL: the field's error rather than the server's.
            refused = [
                FieldViolation(path, "must not contain NUL characters on PostgreSQL")
                for path, value in document.items()
                if isinstance(value, str) and "\x00" in value
            ]
            if refused:
                raise InvalidArgumentError(refused)
        return bound

    def _can_have(self, record_id: Any) -> bool:
        """Whether a record of this repository can have ``record_id``."""
        return _fits(record_id) and not (self._nul_free and "\x00" in record_id)

    def _copy(self, message: M) -> M:
        if not isinstance(message, self._type):
            raise TypeError(
                f"expected a {self._type.DESCRIPTOR.full_name}, got {type(message).__name__}"
            )
        copy = self._type()
        copy.CopyFrom(message)
        return copy

    def _parse(self, payload: bytes) -> M:
        return self._type.FromString(payload)


def check_id_field(message_type: type[Message], id_field: str) -> None:
    """Raise ValueError unless ``id_field`` is a singular string field of the message."""
    descriptor = message_type.DESCRIPTOR
    field = descriptor.fields_by_name.get(id_field)
    if field is None:
        raise ValueError(f"{descriptor.full_name} has no field {id_field!r} to use as the id")
    if field.is_repeated or field.type != FieldDescriptor.TYPE_STRING:
        raise ValueError(
            f"id field {descriptor.full_name}.{id_field} must be a singular string field"
        )


def _fits(record_id: Any) -> bool:
    # Longer ids cannot have been stored; PostgreSQL would reject them outright.
    return isinstance(record_id, str) and len(record_id) <= MAX_KEY_LENGTH


def _check_id(id_field: str, record_id: str) -> None:
    if len(record_id) > MAX_KEY_LENGTH:
        raise InvalidArgumentError(
            [FieldViolation(id_field, f"must be at most {MAX_KEY_LENGTH} characters")]
        )
    if "\x00" in record_id:
        # PostgreSQL's text cannot hold it: refused on every backend alike (records an
        # older version stored with one on SQLite or MongoDB stay readable).
        raise InvalidArgumentError([FieldViolation(id_field, "must not contain NUL characters")])
