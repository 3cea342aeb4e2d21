"""Namespaces (the isolation boundary) and units of work (one transaction each)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from .engine import Database, translate_errors
from .repository import M, Repository, check_id_field
from .schema import MAX_KEY_LENGTH
from .sql import SqlDialect

__all__ = ["Namespace", "UnitOfWork", "validate_namespace"]

_SEGMENT = re.compile(r"[a-z0-9_-]+")


def validate_namespace(name: str) -> str:
    """``name`` if it is "/"-separated segments of ``[a-z0-9_-]+``, else ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"namespace must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError("namespace must not be empty")
    if len(name) > MAX_KEY_LENGTH:
        raise ValueError(f"namespace {name[:40]!r}... is longer than {MAX_KEY_LENGTH} characters")
    for position, segment in enumerate(name.split("/"), start=1):
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid namespace {name!r}: segment {position} ({segment!r}) must be "
                "one or more of a-z, 0-9, '_' and '-'"
            )
    return name


def _collection_name(message_type: type[Message], collection: str | None) -> str:
    name = message_type.DESCRIPTOR.full_name if collection is None else collection
    if not isinstance(name, str) or not name or len(name) > MAX_KEY_LENGTH:
        raise ValueError(f"collection must be 1 to {MAX_KEY_LENGTH} characters, got {name!r}")
    return name


def _new_repository(
    scope: Namespace | UnitOfWork,
    message_type: type[M],
    collection: str | None,
    id_field: str,
) -> Repository[M]:
    if not (isinstance(message_type, type) and issubclass(message_type, Message)):
        raise TypeError(f"expected a protobuf message class, got {message_type!r}")
    check_id_field(message_type, id_field)
    return Repository(
        scope,
        message_type,
        collection=_collection_name(message_type, collection),
        id_field=id_field,
    )


class Namespace:
    """The rows of one namespace, e.g. one plugin's ("plugins/business/orders").

    Everything obtained from a Namespace reads and writes only rows of that namespace;
    two namespaces may hold the same collection and ids without ever seeing each other.
    Get one from :meth:`Storage.namespace`.
    """

    def __init__(self, database: Database, name: str) -> None:
        self._database = database
        self._name = validate_namespace(name)

    def __repr__(self) -> str:
        return f"Namespace({self._name!r})"

    @property
    def name(self) -> str:
        """The namespace name."""
        return self._name

    # Scope protocol: outside a unit of work every operation is its own transaction.

    @property
    def namespace(self) -> str:
        """The namespace name (as the repository's scope)."""
        return self._name

    @property
    def dialect(self) -> SqlDialect:
        """The database backend."""
        return self._database.dialect

    @property
    def in_transaction(self) -> bool:
        """Always False: each repository call commits on its own."""
        return False

    @asynccontextmanager
    async def connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection in a new transaction for one repository operation."""
        async with self._database.transaction(write=write) as conn:
            yield conn

    def repository(
        self, message_type: type[M], *, collection: str | None = None, id_field: str = "id"
    ) -> Repository[M]:
        """The repository of ``message_type`` messages; each call is its own transaction.

        ``collection`` defaults to the message's full name; ``id_field`` names the
        singular string field holding the id.
        """
        return _new_repository(self, message_type, collection, id_field)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """One database transaction: committed on normal exit, rolled back on exception.

        On SQLite the transaction holds the database's write lock from its start, so
        other writers wait (up to the busy timeout) until it ends: keep it short, and do
        not open a second transaction on the same SQLite database while holding one.
        """
        async with self._database.transaction(write=True) as conn:
            unit = UnitOfWork(self._name, self._database.dialect, conn)
            try:
                yield unit
            finally:
                unit._finish()


class UnitOfWork:
    """The repositories of one transaction, from :meth:`Namespace.transaction`.

    Its repositories join the transaction; they fail once the transaction has ended.
    """

    def __init__(self, namespace: str, dialect: SqlDialect, conn: AsyncConnection) -> None:
        self._namespace = namespace
        self._dialect = dialect
        self._conn = conn
        self._active = True
        # One connection cannot run two statements at once; concurrent tasks sharing the
        # unit of work take turns.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "active" if self._active else "finished"
        return f"UnitOfWork({self._namespace!r}, {state})"

    @property
    def namespace(self) -> str:
        """The namespace name."""
        return self._namespace

    @property
    def dialect(self) -> SqlDialect:
        """The database backend."""
        return self._dialect

    @property
    def in_transaction(self) -> bool:
        """Always True: repository calls join this transaction."""
        return True

    @asynccontextmanager
    async def connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """The transaction's connection (``write`` is moot: it was begun for writing)."""
        if not self._active:
            raise RuntimeError("this unit of work's transaction has ended")
        async with self._lock:
            with translate_errors():
                yield self._conn

    def repository(
        self, message_type: type[M], *, collection: str | None = None, id_field: str = "id"
    ) -> Repository[M]:
        """The repository of ``message_type`` messages inside this transaction."""
        return _new_repository(self, message_type, collection, id_field)

    def _finish(self) -> None:
        self._active = False
