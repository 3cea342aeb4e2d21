"""The entry point: a connected database from which namespaces are handed out."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import TracebackType

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from sqlalchemy.engine import URL

from ._sqlite import GROUP_COMMIT_UNITS
from .declared import BuiltIndex, IndexChanges, declared_indexes, loaded_message_types
from .faults import StorageHealth
from .index import descriptor_of
from .namespace import Backend, Namespace, SqlBackend

__all__ = ["Storage"]

#: URL schemes served by the MongoDB backend (``nexus_grpc.storage.mongo``).
_MONGODB_SCHEMES = ("mongodb://", "mongodb+srv://")


class Storage:
    """Protobuf message storage on SQLite, PostgreSQL (asyncpg) or MongoDB.

    ``await Storage.connect(url)`` once per process, ``storage.namespace(name)`` per
    tenant or plugin, ``await storage.close()`` at shutdown (or use ``async with``).
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @classmethod
    async def connect(
        cls,
        url: str | URL,
        *,
        create_schema: bool = True,
        sqlite_busy_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        sqlite_group_commit_units: int = GROUP_COMMIT_UNITS,
    ) -> Storage:
        """Connect to ``url`` and create the schema if it is missing.

        ``url`` is ``sqlite:///path/nexus.db`` (the directory is created if needed;
        ``sqlite+aiosqlite://`` is taken as the same), ``postgresql+asyncpg://user@host:port/db``
        (plain ``postgresql://`` gets asyncpg) or ``mongodb://host:port/db`` (PyMongo's
        async client; see ``storage.mongo``). Schema creation is
        idempotent and safe when several processes start at once. ``sqlite_busy_timeout``
        is how many seconds a SQLite writer waits for another before failing with
        ConflictError; ``connect_timeout`` how long connecting to PostgreSQL or finding
        a MongoDB server may take before the call fails UNAVAILABLE;
        ``sqlite_group_commit_units`` how many units of work of concurrent writers may
        share one SQLite COMMIT (group commit; 1: each commits alone).
        """
        backend: Backend
        if isinstance(url, str) and url.startswith(_MONGODB_SCHEMES):
            # Imported here: PyMongo is only needed by those who use MongoDB.
            try:
                from .mongo import MongoBackend
            except ImportError as exc:
                raise ImportError(
                    f"mongodb:// URLs need PyMongo (pip install pymongo): {exc}"
                ) from exc

            backend = await MongoBackend.open(
                url, create_schema=create_schema, connect_timeout=connect_timeout
            )
        else:
            backend = await SqlBackend.open(
                url,
                create_schema=create_schema,
                sqlite_busy_timeout=sqlite_busy_timeout,
                connect_timeout=connect_timeout,
                sqlite_group_commit_units=sqlite_group_commit_units,
            )
        return cls(backend)

    @property
    def dialect(self) -> str:
        """``"sqlite"``, ``"postgresql"`` or ``"mongodb"``."""
        return self._backend.name

    @property
    def health(self) -> StorageHealth:
        """Infrastructure failures seen (counts by cause), whether the database works,
        and the probe that tells when it works again."""
        return self._backend.health

    def start_probing(self, *, interval: float = 2.0, timeout: float = 2.0) -> None:
        """While unhealthy, probe the database every ``interval`` seconds (each probe
        bounded by ``timeout``) and turn healthy on the first success."""
        self._backend.health.start_probing(interval=interval, timeout=timeout)

    async def probe(self) -> bool:
        """Probe the database now; whether it works (and health says so from now)."""
        return await self._backend.health.probe_once()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._backend.closed

    async def apply_indexes(
        self,
        message_types: Iterable[type[Message] | Descriptor] | None = None,
        *,
        drop_delay: float = 0.0,
    ) -> IndexChanges:
        """Build the database indexes the message types declare in their contracts
        (``option (nexus.options.v1.storage)``), and retire the ones nexus built for
        them that they no longer declare: a retired index is dropped by the first call
        of this method or of :meth:`drop_retired_indexes` once it has been retired for
        ``drop_delay`` seconds (0: at once; the host passes ``storage.index_drop_delay``);
        see :mod:`.indexes`.

        ``None`` means every message type of the contracts imported so far (what the
        host does at start, once its plugins are loaded). Raises
        IndexDeclarationError for a declaration naming a field that cannot be indexed.
        """
        _check_delay(drop_delay)
        if message_types is None:
            types = loaded_message_types()
        else:
            types = [t if isinstance(t, Descriptor) else descriptor_of(t) for t in message_types]
        for descriptor in types:
            declared_indexes(descriptor)  # validates every declaration before any DDL
        return await self._backend.apply_indexes(types, drop_delay=drop_delay)

    async def drop_retired_indexes(
        self,
        *,
        drop_delay: float,
        declared: Iterable[type[Message] | Descriptor] = (),
    ) -> IndexChanges:
        """Drop the indexes :meth:`apply_indexes` retired ``drop_delay`` seconds ago or
        more; the host runs this periodically, so that an index no contract declares
        stops costing its collection's writes soon after the delay, not at the next start.
        Indexes the ``declared`` types declare (the ones this process serves) are taken
        back instead: a process of another release may have retired them.
        """
        _check_delay(drop_delay)
        types = [t if isinstance(t, Descriptor) else descriptor_of(t) for t in declared]
        return await self._backend.drop_retired_indexes(drop_delay=drop_delay, declared=types)

    async def list_indexes(self) -> list[BuiltIndex]:
        """The indexes nexus built, as the database records them: one entry per message
        type an index was built for (by any process sharing the database), then one
        per retired index awaiting its drop."""
        return await self._backend.list_indexes()

    async def retire_indexes(self, message_type: str, *, drop_delay: float) -> IndexChanges:
        """Retire the indexes built for ``message_type``, a type no process declares any
        more (its plugin was removed everywhere): no start can tell that apart from a
        type another process still serves, so it takes an operator to say so.

        Each index is retired as a start retires an index its type stops declaring
        (its catalog entry for the type goes), and dropped by the first start or sweep
        finding it retired for that process's drop delay; ``drop_delay`` 0 drops it at
        once. An index another type's entry names too (on MongoDB: or the same keys) is
        kept with the type's entry (``IndexChanges.shared``): retire again once the other
        type no longer declares it. A process still declaring the type takes the
        retired ones back at its next sweep or start.
        """
        _check_delay(drop_delay)
        return await self._backend.retire_indexes(message_type, drop_delay=drop_delay)

    def namespace(self, name: str) -> Namespace:
        """The namespace ``name``: "/"-separated segments of ``[a-z0-9_-]+``.

        Raises ValueError naming the first bad segment.
        """
        return Namespace(self._backend, name)

    async def close(self) -> None:
        """Close all connections. Idempotent; the storage cannot be used afterwards."""
        await self._backend.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _check_delay(drop_delay: float) -> None:
    if not math.isfinite(drop_delay) or drop_delay < 0:
        raise ValueError(f"drop_delay must be 0 or more seconds, got {drop_delay}")
