"""The storage on MongoDB, through PyMongo's async API (``pymongo.AsyncMongoClient``).

``Storage.connect("mongodb://host:port/db")`` gives namespaces, repositories and units
of work that behave like the SQL ones: same errors, same filters, orderings and page
tokens (built by :mod:`.query`, translated by :mod:`.mongo_query`), same isolation.

Documents
    All records live in one collection, ``nexus_records``, as
    ``{_id: "<namespace>|<collection>|<id>", ns, coll, id, payload: BinData (the
    serialized message, the source of truth), doc: {the index document, nested},
    version, created_at, updated_at}`` (plus ``lock`` once a record was read
    ``for_update``). A unique index on (ns, coll, id) serves the default order; each
    other ordering a list uses gets an index on (ns, coll, <sort fields>), created on
    first use outside transactions, at most :data:`MAX_SORT_INDEXES` of them; the
    indexes contracts declare (filter fields first) are built at start by
    :mod:`.mongo_indexes`. Times
    are BSON dates: millisecond precision. Every write stores every indexed path; a
    document written before a field existed gets that field's default on the first
    list of its collection by this process (SQL reads missing values as the default).

Transactions
    MongoDB runs multi-document transactions only on a replica set member or through
    mongos. ``connect`` reads the server's ``hello`` reply: a standalone server (no
    ``setName``) makes :meth:`Namespace.transaction` raise
    :class:`TransactionsUnsupportedError` instead of running without atomicity; every
    other operation works. A single-node replica set (``mongod --replSet rs0`` plus
    ``rs.initiate()``) is enough.

    Transactions read a snapshot (read concern "snapshot", write concern "majority").
    Where PostgreSQL makes a second writer of a row wait, MongoDB fails it at once with
    a WriteConflict. A unit of work that has not written yet then starts its
    transaction over and retries (backing off, for up to ``lock_timeout`` seconds):
    nothing is lost since nothing was written, and its earlier reads were no older than
    a READ COMMITTED transaction's would be. That makes concurrent writers of one
    record queue up as on SQL. A conflict after the first write aborts the transaction
    (MongoDB's rule) and raises ConflictError, as does waiting past ``lock_timeout``.

    ``get(id, for_update=True)`` takes the record's write lock with a no-op write: it
    increments the record's ``lock`` field (version, payload and times stay). Until the
    transaction ends, other transactions writing or locking the record conflict (and so
    wait, see above) and plain writes block in the server.

    ``create`` inside a transaction is an upsert with ``$setOnInsert`` rather than an
    insert, because a duplicate-key error would abort the whole transaction.

Servers tested
    SecantusDB 0.7 (``secantusd-py``, from PyPI): advertises a single-node replica
    set; transactions are snapshot-isolated and fail concurrent writers with
    WriteConflict like mongod; Decimal128 compares with other numbers by value. The
    storage suite passes on it (bar the test that inspects the SQL table). NX-27017
    0.8 (PyPI ``nx-27017``, MongoDB wire protocol over SQLite) is a standalone, so
    transactions are refused; it also lacks Decimal128 (values beyond int64) and
    pipeline updates, returns dates as strings, and its sessions do not isolate
    transactions from other clients.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConfigurationError,
    DuplicateKeyError,
    InvalidName,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from nexus_grpc import tracing
from nexus_grpc.errors import AlreadyExistsError, ConflictError, NotFoundError
from nexus_grpc.ids import new_id
from nexus_grpc.urls import mask_url

from . import mongo_query
from ._mongo_spans import CommandSpans
from .declared import BuiltIndex, IndexChanges
from .engine import PROBE_COLLECTION, PROBE_ID, PROBE_NAMESPACE
from .faults import StorageHealth, StorageUnavailableError, mongo_cause, sanitized_mongo_error
from .index import descriptor_of
from .mongo_indexes import (
    apply_mongo_indexes,
    drop_retired_mongo_indexes,
    list_mongo_indexes,
    retire_mongo_indexes,
)
from .namespace import RepositoryScope
from .query import DEFAULT_PAGE_SIZE, ListQuery, build_query, check_page_size
from .repository import M, Page, Record, Repository, _check_id, _fits
from .schema import RECORDS_TABLE

__all__ = [
    "LOCK_TIMEOUT",
    "MAX_SORT_INDEXES",
    "RECORDS_COLLECTION",
    "MongoBackend",
    "MongoRepository",
    "TransactionsUnsupportedError",
]

_log = logging.getLogger(__name__)

#: The collection holding every record (the SQL backends' table name).
RECORDS_COLLECTION = RECORDS_TABLE
#: Name of the unique (ns, coll, id) index.
KEY_INDEX = "nexus_key"
#: Most list-ordering indexes the storage creates (MongoDB allows 64 per collection).
MAX_SORT_INDEXES = 24
#: Default seconds a transaction's first write retries after WriteConflicts.
LOCK_TIMEOUT = 5.0

#: WriteConflict, and DuplicateKey (an insert racing another transaction's insert).
_CONFLICT_CODES = frozenset({112, 11000})

T = TypeVar("T")
Document = dict[str, Any]
#: One operation: given the transaction's session (None outside one), run it.
Operation = Callable[[AsyncClientSession | None], Awaitable[T]]


class TransactionsUnsupportedError(RuntimeError):
    """The MongoDB server cannot run multi-document transactions (it is a standalone)."""


class MongoBackend:
    """A MongoDB database holding the records collection: the Backend of mongodb URLs."""

    name = "mongodb"

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        records: AsyncCollection[Document],
        *,
        transactions: str | None,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        """Wrap a connected client; ``transactions`` is None if supported, else why not."""
        self._client = client
        self.records = records
        self._no_transactions = transactions
        self.lock_timeout = lock_timeout
        self._closed = False
        self._sort_indexes: set[str] = set()
        self._normalised: set[tuple[str, str, str]] = set()
        #: Infrastructure failures seen, and whether the database works.
        self.health = StorageHealth(self.probe)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        create_schema: bool = True,
        lock_timeout: float = LOCK_TIMEOUT,
        connect_timeout: float = 5.0,
    ) -> MongoBackend:
        """Connect to ``url`` (``mongodb://host:port/db``; db defaults to ``nexus``).

        ``connect_timeout`` is PyMongo's server selection timeout (its default, 30 s,
        holds every call past its deadline while no server is reachable) unless the URL
        sets ``serverSelectionTimeoutMS``.

        Pings the server, learns whether it runs transactions, and with
        ``create_schema`` creates the unique (ns, coll, id) index (idempotent).
        """
        try:
            options: dict[str, Any] = {}
            if "serverselectiontimeoutms" not in url.lower():
                options["serverSelectionTimeoutMS"] = round(connect_timeout * 1000)
            if tracing.enabled():
                options["event_listeners"] = [CommandSpans()]
            client: AsyncMongoClient[Document] = AsyncMongoClient(
                url, tz_aware=True, tzinfo=UTC, appname="nexus", **options
            )
        except (ConfigurationError, InvalidName, ValueError, TypeError) as exc:
            raise ValueError(f"not a MongoDB URL: {mask_url(url)!r} ({exc})") from exc
        try:
            try:
                database = client.get_default_database("nexus")
            except InvalidName as exc:
                raise ValueError(f"not a MongoDB URL: {mask_url(url)!r} ({exc})") from exc
            try:
                hello = await client.admin.command("hello")
            except PyMongoError as exc:
                cause = mongo_cause(exc)
                if cause is None:
                    raise sanitized_mongo_error(exc) from None
                raise StorageUnavailableError(cause) from None
            records = database.get_collection(RECORDS_COLLECTION)
            backend = cls(
                client,
                records,
                transactions=_transaction_support(hello, url),
                lock_timeout=lock_timeout,
            )
            if create_schema:
                await backend._create_key_index()
            await backend._load_sort_indexes()
        except BaseException:
            await client.close()
            raise
        return backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def supports_transactions(self) -> bool:
        """Whether the server runs multi-document transactions (a replica set or mongos)."""
        return self._no_transactions is None

    async def probe(self) -> None:
        """A cheap write: rewrite the probe record (a read-only or full server fails)."""
        key = mongo_query.record_key(PROBE_NAMESPACE, PROBE_COLLECTION, PROBE_ID)
        fields = {"ns": PROBE_NAMESPACE, "coll": PROBE_COLLECTION, "id": PROBE_ID}
        with self.translate_errors():
            await self.records.update_one(
                {"_id": key}, {"$set": {**fields, "updated_at": _now()}}, upsert=True
            )

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Infrastructure failures to StorageUnavailableError (and health), other PyMongo
        errors to a StorageFailure without their text; duplicates pass (callers want them)."""
        try:
            yield
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            if _is_conflict(exc):
                raise
            cause = mongo_cause(exc)
            if cause is None:
                raise sanitized_mongo_error(exc) from None
            self.health.report(cause)
            raise StorageUnavailableError(cause) from None

    async def close(self) -> None:
        """Close the client's connections; idempotent."""
        await self.health.close()
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def apply_indexes(
        self, types: Sequence[Descriptor], *, drop_delay: float
    ) -> IndexChanges:
        """Build, retire and drop declared indexes (see :mod:`.mongo_indexes`)."""
        self.check_open()
        with self.translate_errors():
            return await apply_mongo_indexes(self.records, types, drop_delay=drop_delay)

    async def drop_retired_indexes(
        self, *, drop_delay: float, declared: Sequence[Descriptor]
    ) -> IndexChanges:
        """Drop the retired indexes that are due (see :mod:`.mongo_indexes`)."""
        self.check_open()
        with self.translate_errors():
            return await drop_retired_mongo_indexes(
                self.records, drop_delay=drop_delay, declared=declared
            )

    async def list_indexes(self) -> list[BuiltIndex]:
        """The catalog and the retired indexes (see :mod:`.mongo_indexes`)."""
        self.check_open()
        with self.translate_errors():
            return await list_mongo_indexes(self.records)

    async def retire_indexes(self, message_type: str, *, drop_delay: float) -> IndexChanges:
        """Retire a type's indexes (see :func:`.mongo_indexes.retire_mongo_indexes`)."""
        self.check_open()
        with self.translate_errors():
            return await retire_mongo_indexes(self.records, message_type, drop_delay=drop_delay)

    def check_open(self) -> None:
        """Raise RuntimeError once the storage is closed."""
        if self._closed:
            raise RuntimeError("the storage is closed")

    def scope(self, namespace: str) -> RepositoryScope:
        """Repositories of ``namespace`` whose every operation stands alone."""
        return _AutocommitScope(self, namespace)

    @asynccontextmanager
    async def transaction(self, namespace: str) -> AsyncIterator[RepositoryScope]:
        """One session transaction: committed on normal exit, aborted on exception."""
        self.check_open()
        if self._no_transactions is not None:
            raise TransactionsUnsupportedError(self._no_transactions)
        with self.translate_errors():
            async with self._client.start_session() as session:
                scope = _TransactionScope(self, namespace, session)
                await scope.begin()
                try:
                    yield scope
                except BaseException:
                    await scope.finish(commit=False)
                    raise
                else:
                    await scope.finish(commit=True)

    async def prepare_list(
        self, namespace: str, collection: str, descriptor: Descriptor, query: ListQuery
    ) -> None:
        """Before a list outside transactions: fill in missing fields, index the order."""
        key = (namespace, collection, descriptor.full_name)
        if key not in self._normalised:
            update = mongo_query.normalise_update(descriptor)
            if update is not None:
                missing, pipeline = update
                await self.records.update_many(
                    {"ns": namespace, "coll": collection, **missing}, pipeline
                )
            self._normalised.add(key)
        wanted = mongo_query.sort_index(query)
        if wanted is None or wanted[0] in self._sort_indexes:
            return
        if len(self._sort_indexes) >= MAX_SORT_INDEXES:
            return  # the list still works, sorting without an index
        name, keys = wanted
        try:
            await self.records.create_index(keys, name=name)
        except OperationFailure as exc:
            _log.warning("could not create the index %s %s: %s", name, keys, exc)
            return
        self._sort_indexes.add(name)

    async def _create_key_index(self) -> None:
        keys = [("ns", 1), ("coll", 1), ("id", 1)]
        try:
            await self.records.create_index(keys, name=KEY_INDEX, unique=True)
        except OperationFailure:
            # Several processes creating it at once may collide; the index is all we need.
            existing = await self.records.index_information()
            if existing.get(KEY_INDEX, {}).get("key") != keys:
                raise

    async def _load_sort_indexes(self) -> None:
        existing = await self.records.index_information()
        self._sort_indexes.update(
            name for name in existing if name.startswith(mongo_query.SORT_INDEX_PREFIX)
        )


def _transaction_support(hello: Mapping[str, Any], url: str) -> str | None:
    """None if the server runs transactions, else the reason it does not."""
    if hello.get("setName") or hello.get("msg") == "isdbgrid":
        return None
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return (
        f"the MongoDB server at {host} is a standalone (its hello reply has no setName), "
        "and MongoDB runs multi-document transactions only on a replica set or through "
        "mongos: Namespace.transaction() cannot be atomic there. Run mongod as a replica "
        "set (a single node is enough: --replSet rs0, then rs.initiate())."
    )


def _is_conflict(exc: PyMongoError) -> bool:
    if exc.has_error_label("TransientTransactionError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _CONFLICT_CODES


class _AutocommitScope:
    """Outside a unit of work: every operation runs on its own (no session)."""

    in_transaction = False
    active = True

    def __init__(self, backend: MongoBackend, namespace: str) -> None:
        self.backend = backend
        self.namespace = namespace

    async def run(self, operation: Operation[T], *, write: bool) -> T:
        """Run ``operation`` without a session."""
        self.backend.check_open()
        with self.backend.translate_errors():
            return await operation(None)

    def repository(self, message_type: type[M], *, collection: str, id_field: str) -> Repository[M]:
        """A repository whose every call stands alone."""
        return MongoRepository(self, message_type, collection=collection, id_field=id_field)


class _TransactionScope:
    """Inside a unit of work: every operation runs in the session's transaction."""

    in_transaction = True

    def __init__(self, backend: MongoBackend, namespace: str, session: AsyncClientSession) -> None:
        self.backend = backend
        self.namespace = namespace
        self.active = True
        self._session = session
        self._wrote = False
        self._failed: ConflictError | None = None
        # A session runs one operation at a time; tasks sharing the unit take turns.
        self._lock = asyncio.Lock()

    async def begin(self) -> None:
        """Start the session's transaction."""
        await self._session.start_transaction(
            read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority")
        )

    async def finish(self, *, commit: bool) -> None:
        """Commit or abort; the unit of work is over either way."""
        async with self._lock:
            self.active = False
            if commit and self._failed is None:
                try:
                    await self._session.commit_transaction()
                except PyMongoError as exc:
                    if _is_conflict(exc):
                        raise _conflict() from exc
                    raise
                return
            if self._session.in_transaction:
                await self._session.abort_transaction()
            if commit and self._failed is not None:
                raise self._failed

    async def run(self, operation: Operation[T], *, write: bool) -> T:
        """Run ``operation`` in the transaction, starting it over on an early conflict."""
        async with self._lock:
            if not self.active:
                raise RuntimeError("this unit of work's transaction has ended")
            if self._failed is not None:
                raise ConflictError(
                    "this unit of work's transaction was aborted by a conflict; start a new one"
                )
            with self.backend.translate_errors():
                return await self._run_retrying(operation, write=write)

    async def _run_retrying(self, operation: Operation[T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.backend.lock_timeout
        delay = 0.002
        while True:
            self.backend.check_open()
            try:
                result = await operation(self._session)
            except PyMongoError as exc:
                if not _is_conflict(exc):
                    raise
                if self._wrote or loop.time() >= deadline:
                    # The server aborted the transaction: its writes are gone.
                    self._failed = _conflict()
                    raise self._failed from exc
                await self._session.abort_transaction()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 0.05)
                await self.begin()
                continue
            self._wrote = self._wrote or write
            return result

    def repository(self, message_type: type[M], *, collection: str, id_field: str) -> Repository[M]:
        """A repository whose calls join this transaction."""
        return MongoRepository(self, message_type, collection=collection, id_field=id_field)


_Scope = _AutocommitScope | _TransactionScope


def _conflict() -> ConflictError:
    return ConflictError("the operation collided with a concurrent change; retry it")


def _now() -> datetime:
    # BSON dates hold milliseconds: what is stored is what is read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


_RECORD_FIELDS = {"_id": 0, "payload": 1, "version": 1, "created_at": 1, "updated_at": 1}


class MongoRepository(Repository[M]):
    """:class:`Repository` on MongoDB: the same methods, errors and list semantics.

    It overrides every public method of Repository, whose constructor (bound to a SQL
    scope) it does not call.
    """

    def __init__(
        self, scope: _Scope, message_type: type[M], *, collection: str, id_field: str
    ) -> None:
        self._mongo = scope
        self._message_type = message_type
        self._collection_name = collection
        self._id_field_name = id_field

    @property
    def collection(self) -> str:
        """The collection name (by default the message's full name)."""
        return self._collection_name

    @property
    def message_type(self) -> type[M]:
        """The message class stored here."""
        return self._message_type

    @property
    def id_field(self) -> str:
        """The name of the string field holding each message's id."""
        return self._id_field_name

    async def create(self, message: M) -> M:
        """Store a new message and return a copy of it as stored (see Repository)."""
        created = self._copy_in(message)
        record_id: str = getattr(created, self._id_field_name)
        if not record_id:
            record_id = new_id()
            setattr(created, self._id_field_name, record_id)
        _check_id(self._id_field_name, record_id)
        now = _now()
        fields: Document = {
            "ns": self._mongo.namespace,
            "coll": self._collection_name,
            "id": record_id,
            "payload": created.SerializeToString(deterministic=True),
            "doc": mongo_query.index_subdocument(created),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        key = self._record_key(record_id)
        records = self._mongo.backend.records
        if self._mongo.in_transaction:
            # An upsert that finds the key inserts nothing, where a duplicate-key error
            # would abort the whole transaction.

            async def upsert(session: AsyncClientSession | None) -> bool:
                done = await records.update_one(
                    {"_id": key}, {"$setOnInsert": fields}, upsert=True, session=session
                )
                return done.upserted_id is not None

            if not await self._mongo.run(upsert, write=True):
                raise AlreadyExistsError(self._collection_name, record_id)
            return created

        async def insert(session: AsyncClientSession | None) -> None:
            await records.insert_one({"_id": key, **fields}, session=session)

        try:
            await self._mongo.run(insert, write=True)
        except DuplicateKeyError:
            # Not chained: its text holds the key values of the duplicate.
            raise AlreadyExistsError(self._collection_name, record_id) from None
        return created

    async def get(self, id: str, *, for_update: bool = False) -> M | None:
        """The message with ``id``, or None (``for_update``: see the module docstring)."""
        record = await self.get_record(id, for_update=for_update)
        return None if record is None else record.message

    async def get_record(self, id: str, *, for_update: bool = False) -> Record[M] | None:
        """Like :meth:`get`, with the version and timestamps."""
        if for_update and not self._mongo.in_transaction:
            raise RuntimeError(
                "for_update needs a transaction: use the repository of a "
                "Namespace.transaction() unit of work"
            )
        if not _fits(id):
            return None
        key = self._record_key(id)
        records = self._mongo.backend.records

        async def read(session: AsyncClientSession | None) -> Document | None:
            if for_update:
                return await records.find_one_and_update(
                    {"_id": key}, {"$inc": {"lock": 1}}, _RECORD_FIELDS, session=session
                )
            return await records.find_one({"_id": key}, _RECORD_FIELDS, session=session)

        found = await self._mongo.run(read, write=for_update)
        if found is None:
            return None
        return Record(
            self._decode(found["payload"]),
            found["version"],
            found["created_at"],
            found["updated_at"],
        )

    async def update(self, message: M, *, expected_version: int | None = None) -> M:
        """Replace the stored message with the same id (see Repository.update)."""
        updated = self._copy_in(message)
        record_id: str = getattr(updated, self._id_field_name)
        if not _fits(record_id) or not record_id:
            raise NotFoundError(self._collection_name, record_id)
        key = self._record_key(record_id)
        condition: Document = {"_id": key}
        if expected_version is not None:
            condition["version"] = expected_version
        change = {
            "$set": {
                "payload": updated.SerializeToString(deterministic=True),
                "doc": mongo_query.index_subdocument(updated),
                "updated_at": _now(),
            },
            "$inc": {"version": 1},
        }
        records = self._mongo.backend.records

        async def replace(session: AsyncClientSession | None) -> int | None:
            """None when updated, else the stored version (0 when there is none)."""
            done = await records.update_one(condition, change, session=session)
            if done.matched_count == 1:
                return None
            current = await records.find_one({"_id": key}, {"version": 1}, session=session)
            return 0 if current is None else int(current["version"])

        current = await self._mongo.run(replace, write=True)
        if current is None:
            return updated
        if current == 0:
            raise NotFoundError(self._collection_name, record_id)
        raise ConflictError(
            f"{self._collection_name} {record_id!r} was changed concurrently: version "
            f"{current}, expected {expected_version}; re-read it and retry"
        )

    async def delete(self, id: str) -> bool:
        """Delete the message with ``id``; whether there was one."""
        if not _fits(id):
            return False
        key = self._record_key(id)
        records = self._mongo.backend.records

        async def remove(session: AsyncClientSession | None) -> int:
            return (await records.delete_one({"_id": key}, session=session)).deleted_count

        return bool(await self._mongo.run(remove, write=True))

    async def delete_many(self, ids: Iterable[str]) -> int:
        """Delete the messages with these ``ids`` in one command; how many there were."""
        keys = [self._record_key(id) for id in sorted({id for id in ids if _fits(id)})]
        if not keys:
            return 0
        records = self._mongo.backend.records

        async def remove(session: AsyncClientSession | None) -> int:
            found = await records.delete_many({"_id": {"$in": keys}}, session=session)
            return int(found.deleted_count)

        return await self._mongo.run(remove, write=True)

    async def list(
        self,
        *,
        filter: Mapping[str, object] | None = None,
        order_by: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> Page[M]:
        """One page of the messages matching ``filter`` (see Repository.list)."""
        size = check_page_size(page_size)
        descriptor = descriptor_of(self._message_type)
        namespace = self._mongo.namespace
        query = build_query(
            descriptor,
            id_field=self._id_field_name,
            namespace=namespace,
            collection=self._collection_name,
            filter=filter,
            order_by=order_by,
        )
        after = query.decode_token(page_token) if page_token else None
        found = mongo_query.find_filter(
            query, namespace=namespace, collection=self._collection_name, after=after
        )
        backend = self._mongo.backend
        if not self._mongo.in_transaction:
            # Index builds inside a transaction would wait for the transaction's locks.
            backend.check_open()
            with backend.translate_errors():
                await backend.prepare_list(namespace, self._collection_name, descriptor, query)

        async def read(session: AsyncClientSession | None) -> list[Document]:
            cursor = backend.records.find(
                found,
                mongo_query.projection(query),
                sort=mongo_query.sort_spec(query),
                limit=size + 1,  # one more than asked tells whether another page exists
                session=session,
            )
            return await cursor.to_list()

        rows = await self._mongo.run(read, write=False)
        items = [self._decode(row["payload"]) for row in rows[:size]]
        next_token = ""
        if len(rows) > size:
            next_token = query.encode_token(mongo_query.token_values(query, rows[size - 1]))
        return Page(items, next_token)

    def _record_key(self, record_id: str) -> str:
        return mongo_query.record_key(self._mongo.namespace, self._collection_name, record_id)

    def _copy_in(self, message: M) -> M:
        if not isinstance(message, self._message_type):
            raise TypeError(
                f"expected a {self._message_type.DESCRIPTOR.full_name}, "
                f"got {type(message).__name__}"
            )
        copy = self._message_type()
        copy.CopyFrom(message)
        return copy

    def _decode(self, payload: bytes) -> M:
        return self._message_type.FromString(payload)
