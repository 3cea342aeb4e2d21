"""The steps of one SQLite transaction, run one after the other where they may run.

A transaction that took SQLite's write lock on the event loop's thread (BEGIN IMMEDIATE
granted at once) runs its point statements and its end there: they wait for no lock.
Anything else (a transaction begun on a thread, a statement that may read many rows)
runs on the driver's threads. Either way one step at a time: a step running on a
thread is waited for before the next one, and before the transaction ends, even when
its caller was cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._sqlite import SqliteDriver

__all__ = ["SqliteSteps"]

T = TypeVar("T")


class SqliteSteps:
    """Runs the steps of one transaction of ``driver`` (see the module docstring)."""

    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = driver
        self._ended = False
        # The step running on a thread, if any: a cancelled caller does not stop it, and
        # the connection must not be touched again before it is over.
        self._running: concurrent.futures.Future[Any] | None = None
        # Whether the transaction holds SQLite's write lock, taken on the loop's thread.
        self._on_loop = False

    async def _step(self, work: Callable[[], T], *, blocking: bool = False) -> T:
        """Run ``work``: on the loop's thread when the transaction holds the write lock
        there (unless the work may block), else on a thread."""
        await self._after_running()
        if self._ended:
            raise RuntimeError("this transaction has ended")
        if self._on_loop and not blocking:
            # Not a yield per statement: resuming the caller's whole await chain costs
            # more than the statement (8 to 14 µs of a two-insert unit's ~150). It still
            # yields after a run of statements, as point statements outside units do.
            points = self._driver.points
            if points.turn_due():
                await points.yield_turn()
            if self._ended:
                raise RuntimeError("this transaction has ended")
            return work()
        if self._driver.carry_context:
            # Tracing: the statement's span is a child of the caller's, and log records
            # written on the thread carry its ids.
            work = functools.partial(contextvars.copy_context().run, work)
        try:
            future = self._driver.executor.submit(work)
        except RuntimeError:  # shut down by close()
            raise RuntimeError("the storage is closed") from None
        self._running = future
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._forget(future)
            del future  # this frame, in the error's traceback, must not hold it

    async def _end_step(self, end: Callable[[], None]) -> None:
        """Run the transaction's ``end`` (COMMIT or ROLLBACK) once the running step is
        over: on the loop's thread while it holds the write lock (the end then waits
        for no lock), else on a thread."""
        await self._after_running()
        if self._on_loop:
            end()
            return
        try:
            future = self._running = self._driver.executor.submit(end)
        except RuntimeError:  # the driver was closed under the transaction
            end()
            return
        try:
            await asyncio.wrap_future(future)
        finally:
            self._forget(future)
            del future  # this frame, in the error's traceback, must not hold it

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        """Drop a step that is over: nothing is left to wait for, and the transaction
        keeps no reference to the step's error (whose traceback holds the transaction:
        a cycle that would keep both, and the statement's parameters, until a garbage
        collection). A step still running (its caller was cancelled) is kept."""
        if future.done() and self._running is future:
            self._running = None

    async def _after_running(self) -> None:
        if self._running is not None and not self._running.done():
            # Without raising: its caller was cancelled, or gets its error itself.
            await asyncio.wait([asyncio.wrap_future(self._running)])
