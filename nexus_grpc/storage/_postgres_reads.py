"""Concurrent point reads on PostgreSQL, sent together: one statement for many ids.

A point read by id through asyncpg costs ~35 µs of this process's CPU, most of it per
statement rather than per row: the protocol messages, a socket write, and the loop
waking up for the answer. Under load, many requests read records of one collection at
once; each read's statement waiting its turn behind the others would pay all of that
again. So reads of one statement shape and collection share their statements:

* while fewer than ``_IN_FLIGHT`` statements of that shape run, a read is sent at once,
  alone, as it is written (no added latency when the load is light);
* otherwise it waits for the next statement, which is sent as soon as one running ends
  and reads every id waiting then (``id = ANY($3)``, at most ``_MOST_IDS``).

A read joins only a statement not sent yet, so it sees every write committed before
it was asked for, as a statement of its own would. Its caller being cancelled leaves
the shared statement running for the others (a read changes nothing). One read must not
fail the others: when a shared statement is refused for a value (an id the driver
cannot encode), each of its reads is sent again alone, for an answer of its own. A
failure of the statement as a whole (a lost connection, a timeout) is every waiting
read's failure. Reads inside a unit of work, and reads that lock (``FOR UPDATE``),
never come here. The shared statement's time shows in each waiting caller's span (its
wait), not in a span of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import DBAPIError

from .points import RawRows

__all__ = ["BatchedReads", "batched_form"]

#: Statements of one shape and collection running at once before reads wait to share.
_IN_FLIGHT = 2
#: Ids one shared statement reads at most (the rest wait for the next one).
_MOST_IDS = 256
#: The key condition of every point statement (see ``points``), with asyncpg's marks.
_POINT_KEY = " WHERE namespace = $1 AND collection = $2 AND id = $3"

Run = Callable[[str, Sequence[Any]], Awaitable[RawRows]]


@functools.lru_cache(maxsize=256)
def batched_form(sql: str) -> str | None:
    """The statement reading many ids at once for point read ``sql``, or None when
    ``sql`` is not a plain point read (a write, a lock, another condition).

    The shared statement returns the id first, then the columns ``sql`` returns.
    """
    if not sql.startswith("SELECT ") or not sql.endswith(_POINT_KEY):
        return None
    columns, _, table = sql[len("SELECT ") : -len(_POINT_KEY)].partition(" FROM ")
    if not table or " " in table:
        return None
    return (
        f"SELECT id, {columns} FROM {table} WHERE namespace = $1 AND collection = $2 "
        "AND id = ANY($3::text[])"
    )


@dataclass(slots=True)
class _Shape:
    """The reads of one statement shape, namespace and collection."""

    batched_sql: str
    running: int = 0
    #: Ids waiting for the next shared statement, each with its readers' futures.
    waiting: dict[str, list[asyncio.Future[RawRows]]] = field(default_factory=dict)


class BatchedReads:
    """Point reads by id of one database, sharing statements under load (see module).

    ``run(sql, params)`` runs one read statement as a transaction of its own and
    returns its rows (``PostgresPoints``'s, with its slots, errors and cancellation).
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        self._shapes: dict[tuple[str, str, str], _Shape] = {}
        # The shared statements' tasks (strong references until they end).
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, sql: str, batched_sql: str, params: Sequence[Any]) -> RawRows:
        """The rows of point read ``sql`` with ``params`` (namespace, collection, id);
        ``batched_sql`` is ``batched_form(sql)``."""
        namespace, collection, id = params
        key = (sql, namespace, collection)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(batched_sql)
        if shape.running < _IN_FLIGHT:
            shape.running += 1
            try:
                return await self._run(sql, params)
            finally:
                self._ended(key, shape)
        future: asyncio.Future[RawRows] = asyncio.get_running_loop().create_future()
        futures = shape.waiting.setdefault(id, [])
        futures.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if shape.waiting.get(id) is futures:
                # Gone before its statement was sent: the id is read for nobody else.
                futures.remove(future)
                if not futures:
                    del shape.waiting[id]
            raise

    def _ended(self, key: tuple[str, str, str], shape: _Shape) -> None:
        """One statement of ``shape`` ended: send the reads waiting, if any."""
        shape.running -= 1
        if not shape.waiting:
            if not shape.running:
                del self._shapes[key]
            return
        ids = list(shape.waiting)[:_MOST_IDS]
        readers = {id: shape.waiting.pop(id) for id in ids}
        shape.running += 1
        # A context of its own: the statement serves many callers' traces.
        task = asyncio.get_running_loop().create_task(
            self._share(key, shape, readers),
            name="nexus-postgres-shared-read",
            context=contextvars.Context(),
        )
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            # Here rather than in the task: a task cancelled before its first step runs
            # none of its own code.
            self._tasks.discard(task)
            for futures in readers.values():
                for future in futures:
                    future.cancel()  # only those the task left unanswered
            self._ended(key, shape)

        task.add_done_callback(done)

    async def _share(
        self,
        key: tuple[str, str, str],
        shape: _Shape,
        readers: dict[str, list[asyncio.Future[RawRows]]],
    ) -> None:
        sql, namespace, collection = key
        try:
            done = await self._run(shape.batched_sql, (namespace, collection, list(readers)))
        except DBAPIError as exc:
            if exc.connection_invalidated or not _about_a_value(exc.orig):
                # Lost, or refused for the statement as a whole (a timeout, a lock):
                # each read alone would fare the same, at many times the cost.
                _answer(readers, exc)
                return
            # Refused for a value (an id the driver cannot encode): each read alone,
            # for an answer of its own.
            alone = await asyncio.gather(
                *(self._run(sql, (namespace, collection, id)) for id in readers),
                return_exceptions=True,
            )
            for (id, futures), outcome in zip(readers.items(), alone, strict=True):
                _answer({id: futures}, outcome)
            return
        except Exception as exc:  # not connected, the storage closed
            _answer(readers, exc)
            return
        found = {row[0]: tuple(row)[1:] for row in done.rows}
        for id, futures in readers.items():
            row = found.get(id)
            _answer({id: futures}, RawRows((row,), 1) if row is not None else RawRows((), 0))

    def close(self) -> None:
        """Fail the reads still waiting for a statement (those sent end on their own)."""
        for shape in self._shapes.values():
            waiting, shape.waiting = shape.waiting, {}
            _answer(waiting, RuntimeError("the storage is closed"))


def _about_a_value(error: BaseException | None) -> bool:
    """Whether driver error ``error`` is about one parameter's value (SQLSTATE class 22,
    or asyncpg refusing to encode it), not about the statement."""
    return isinstance(error, asyncpg.DataError) or (
        getattr(error, "sqlstate", None) or ""
    ).startswith("22")


def _answer(
    readers: dict[str, list[asyncio.Future[RawRows]]], outcome: RawRows | BaseException
) -> None:
    """Give ``outcome`` to every reader still waiting for it."""
    for futures in readers.values():
        for future in futures:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
