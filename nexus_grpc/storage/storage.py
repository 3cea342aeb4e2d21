"""The entry point: a connected database from which namespaces are handed out."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.engine import URL

from .engine import Database
from .namespace import Namespace

__all__ = ["Storage"]


class Storage:
    """Protobuf message storage on SQLite (aiosqlite) or PostgreSQL (asyncpg).

    ``await Storage.connect(url)`` once per process, ``storage.namespace(name)`` per
    tenant or plugin, ``await storage.close()`` at shutdown (or use ``async with``).
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    @classmethod
    async def connect(
        cls,
        url: str | URL,
        *,
        create_schema: bool = True,
        sqlite_busy_timeout: float = 5.0,
    ) -> Storage:
        """Connect to ``url`` and create the schema if it is missing.

        ``url`` is ``sqlite+aiosqlite:///path/nexus.db`` (the directory is created if
        needed) or ``postgresql+asyncpg://user@host:port/db``; plain ``sqlite://`` and
        ``postgresql://`` get those drivers. Schema creation is idempotent and safe when
        several processes start at once. ``sqlite_busy_timeout`` is how many seconds a
        SQLite writer waits for another before failing with ConflictError.
        """
        database = await Database.open(url, sqlite_busy_timeout=sqlite_busy_timeout)
        try:
            if create_schema:
                await database.create_schema()
        except BaseException:
            await database.close()
            raise
        return cls(database)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._database.dialect.name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._database.closed

    def namespace(self, name: str) -> Namespace:
        """The namespace ``name``: "/"-separated segments of ``[a-z0-9_-]+``.

        Raises ValueError naming the first bad segment.
        """
        return Namespace(self._database, name)

    async def close(self) -> None:
        """Close all connections. Idempotent; the storage cannot be used afterwards."""
        await self._database.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
