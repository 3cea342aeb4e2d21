"""Storage faults: telling an unavailable database from a caller's or our own mistake.

An *infrastructure* failure (disk full, read-only database or filesystem, I/O error,
a connection refused or lost) is nobody's fault in the call: the same request
succeeds once the database is back.
It becomes :class:`StorageUnavailableError` (UNAVAILABLE, retryable) with a short
cause and never the SQL text or its parameters, is counted, and marks the storage
unhealthy (:class:`StorageHealth`) until a probe succeeds again.

Anything else keeps its own exception (a bug: INTERNAL for the client); SQLAlchemy
engines are created with ``hide_parameters`` so their text carries no bound values,
and PyMongo errors, whose text carries the offending document or key values, are
replaced by a sanitized one (:func:`sanitized_mongo_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
from collections.abc import Awaitable, Callable

import grpc

from nexus_grpc.errors import StatusError

__all__ = [
    "StorageFailure",
    "StorageHealth",
    "StorageUnavailableError",
]

_log = logging.getLogger("nexus.storage")

#: ``async def callback(healthy)``: told of every change of the storage's health.
HealthCallback = Callable[[bool], Awaitable[None]]


class StorageUnavailableError(StatusError):
    """The database cannot serve the operation now (UNAVAILABLE: retry later).

    ``cause`` is a short fixed phrase ("read-only database", "disk full", ...), sent to
    the client in the message and in the ErrorInfo metadata; never SQL or values.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            f"storage unavailable: {cause}",
            reason="STORAGE_UNAVAILABLE",
            metadata={"cause": cause},
        )
        self.cause = cause


class StorageFailure(RuntimeError):
    """A database error that is not the infrastructure's, with its values left out.

    Raised instead of driver errors whose text would carry documents or parameters
    (PyMongo's); the client gets INTERNAL, the log this text.
    """


class StorageHealth:
    """Whether the storage works, how often it did not, and a probe to find out.

    ``report(cause)`` is called by the backends for every infrastructure failure: the
    storage turns unhealthy and listeners hear of it. While unhealthy, once
    :meth:`start_probing` was called, a task runs ``probe()`` (the backend's cheap
    write) every ``interval`` seconds, bounded by ``timeout``, and turns the storage
    healthy again once one succeeds.
    """

    def __init__(self, probe: Callable[[], Awaitable[None]]) -> None:
        self._healthy = True
        #: Cause -> infrastructure failures counted since start.
        self.failures: dict[str, int] = {}
        self._listeners: list[HealthCallback] = []
        self._probe = probe
        self._probing = False
        self._interval = 2.0
        self._timeout = 2.0
        self._task: asyncio.Task[None] | None = None
        self._notify: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def healthy(self) -> bool:
        """False from an infrastructure failure until a probe succeeds."""
        return self._healthy

    def on_change(self, callback: HealthCallback) -> None:
        """Call ``await callback(healthy)`` on every change."""
        self._listeners.append(callback)

    def start_probing(self, *, interval: float, timeout: float) -> None:
        """Probe every ``interval`` seconds while unhealthy (from now on)."""
        self._probing = True
        self._interval = interval
        self._timeout = timeout
        if not self._healthy:
            self._spawn_probe()

    def report(self, cause: str) -> None:
        """Count one infrastructure failure; the storage is unhealthy until probed."""
        self.failures[cause] = self.failures.get(cause, 0) + 1
        if not self._healthy:
            return
        self._healthy = False
        _log.error("storage unavailable: %s", cause, extra={"cause": cause})
        self._changed()
        self._spawn_probe()

    async def probe_once(self) -> bool:
        """Run the probe now (bounded); whether it succeeded. Success marks it healthy."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe()
        except asyncio.CancelledError:
            raise
        except StorageUnavailableError:
            return False  # reported and counted already
        except TimeoutError:
            self.failures["probe timeout"] = self.failures.get("probe timeout", 0) + 1
            return False
        except Exception as error:  # another failure: the storage still does not work
            _log.debug("storage probe failed: %s", type(error).__name__)
            return False
        if not self._healthy:
            self._healthy = True
            _log.warning("storage available again")
            self._changed()
        return True

    async def close(self) -> None:
        """Stop probing; no more notifications."""
        self._closed = True
        for task in (self._task, self._notify):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- internals ---------------------------------------------------------------------

    def _changed(self) -> None:
        if self._closed or not self._listeners:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # reported off the loop (a driver thread): nobody to tell
            return
        previous = self._notify
        # Notifications run in order, one change after the other, in a task of their
        # own: report() is called from inside failing operations, which must not wait.
        # A fresh context: not the failing call's trace or request id (also below).
        self._notify = loop.create_task(
            self._tell(previous, self._healthy), context=contextvars.Context()
        )

    async def _tell(self, previous: asyncio.Task[None] | None, healthy: bool) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        for listener in self._listeners:
            try:
                await listener(healthy)
            except Exception:
                _log.exception("storage health listener failed")

    def _spawn_probe(self) -> None:
        if self._closed or not self._probing:
            return
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(
            self._probe_loop(), name="nexus-storage-probe", context=contextvars.Context()
        )

    async def _probe_loop(self) -> None:
        while not self._healthy and not self._closed:
            await asyncio.sleep(self._interval)
            await self.probe_once()


# -- classification ---------------------------------------------------------------------

#: SQLite primary result codes that mean the database cannot be written (or read) now.
#: SQLITE_BUSY is not among them: a lock held past the busy timeout is contention with
#: other writers (ConflictError, ABORTED, reason STORAGE_BUSY), which must not take a
#: loaded host out of its load balancer; event handlers and the outbox wait it out like
#: an outage (nexus_grpc.errors.is_infrastructure_failure) instead of dead-lettering.
_SQLITE_CAUSES = {
    "SQLITE_FULL": "disk full",
    "SQLITE_READONLY": "read-only database",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_CANTOPEN": "cannot open the database file",
    "SQLITE_NOLFS": "I/O error",
    "SQLITE_NOTADB": "the database file is damaged",
    "SQLITE_CORRUPT": "the database file is damaged",
}

#: PostgreSQL SQLSTATE classes and codes of an unavailable server (not the statement's
#: fault): connection exceptions, insufficient resources (disk full, out of memory,
#: too many connections), operator intervention (shutdown, cannot connect now), system
#: errors (I/O), read-only transactions (a replica, default_transaction_read_only).
_PG_CLASSES = {
    "08": "connection lost",
    "53": "insufficient resources",
    "57": "database shutting down",
    "58": "I/O error",
}
_PG_CODES = {
    "25006": "read-only database",
    "53100": "disk full",
    "53300": "too many connections",
    "57P03": "database starting up",
}

_OS_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EROFS: "read-only filesystem",
    errno.EIO: "I/O error",
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection lost",
    errno.EPIPE: "connection lost",
    errno.EACCES: "permission denied",
}


def sqlite_cause(orig: BaseException) -> str | None:
    """The cause of a sqlite3 error if it is the infrastructure's, else None."""
    name = getattr(orig, "sqlite_errorname", "")
    if name:
        primary = "_".join(name.split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
        cause = _SQLITE_CAUSES.get(primary)
        if cause is not None:
            return cause
    text = str(orig)
    # Without error names (older sqlite3 modules), the messages are stable.
    for marker, cause in (
        ("database or disk is full", "disk full"),
        ("readonly database", "read-only database"),
        ("disk I/O error", "I/O error"),
        ("unable to open database", "cannot open the database file"),
    ):
        if marker in text:
            return cause
    return None


def postgres_cause(orig: BaseException) -> str | None:
    """The cause of a PostgreSQL (asyncpg) error if it is the infrastructure's."""
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate:
        return _PG_CODES.get(sqlstate) or _PG_CLASSES.get(sqlstate[:2])
    return os_cause(orig) or os_cause(getattr(orig, "__cause__", None))


def os_cause(error: BaseException | None) -> str | None:
    """The cause of a connection or filesystem error, if ``error`` is one."""
    if isinstance(error, TimeoutError) and not error.errno:
        return "connect timeout"
    if isinstance(error, OSError):
        return _OS_CAUSES.get(error.errno or 0, "connection lost")
    # asyncpg's own connection errors are not OSErrors.
    name = type(error).__name__ if error is not None else ""
    if name in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
        return "connection lost"
    if name in ("CannotConnectNowError", "TooManyConnectionsError"):
        return "database starting up" if name.startswith("Cannot") else "too many connections"
    return None


#: MongoDB server error codes of an unavailable server (not the operation's fault).
_MONGO_CODES = {
    6: "connection lost",  # HostUnreachable
    7: "connection lost",  # HostNotFound
    64: "write concern failed",  # WriteConcernFailed
    89: "connection lost",  # NetworkTimeout
    91: "database shutting down",  # ShutdownInProgress
    189: "not writable: primary stepped down",  # PrimarySteppedDown
    9001: "connection lost",  # SocketException
    10107: "not writable: not primary",  # NotWritablePrimary
    11600: "database shutting down",  # InterruptedAtShutdown
    11602: "not writable: primary stepped down",  # InterruptedDueToReplStateChange
    13435: "not writable: not primary",  # NotPrimaryNoSecondaryOk
    13436: "not writable: not primary",  # NotPrimaryOrSecondary
    14031: "disk full",  # OutOfDiskSpace
}


def mongo_cause(error: BaseException) -> str | None:
    """The cause of a PyMongo error if it is the infrastructure's, else None."""
    # Imported here: PyMongo is only needed by those who use MongoDB.
    from pymongo.errors import (
        ConnectionFailure,
        OperationFailure,
        ServerSelectionTimeoutError,
        WriteConcernError,
    )

    if isinstance(error, ServerSelectionTimeoutError):
        return "no server reachable"
    if isinstance(error, ConnectionFailure):  # AutoReconnect, NotPrimaryError, timeouts
        return "connection lost"
    if isinstance(error, WriteConcernError):
        return "write concern failed"
    if isinstance(error, OperationFailure):
        return _MONGO_CODES.get(error.code or 0)
    return None


def sanitized_mongo_error(error: BaseException) -> StorageFailure:
    """``error`` without its text: PyMongo puts the offending document (or the key
    values of a duplicate) into it. The class and code name say what went wrong."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    code_name = details.get("codeName", "") if isinstance(details, dict) else ""
    described = ", ".join(str(part) for part in (code, code_name) if part)
    return StorageFailure(
        f"MongoDB {type(error).__name__}" + (f" ({described})" if described else "")
    )
