"""The host's periodic drop of retired indexes, once their drop delay has passed.

An index no loaded contract declares any more is retired at start and kept for
``storage.index_drop_delay`` (see :mod:`.indexes`): processes of the previous release
still list from it during a rolling upgrade. Meanwhile every write of its collection
still maintains it, so it should go soon after the delay, not at the next start, which
may be weeks later. The sweep reads a handful of rows a few times per delay and, when
there is something to do, does with the catalog what a start does for this process's
contracts (see :func:`.indexes.drop_retired_sql_indexes`). Every worker of every
process runs it, and they agree: SQLite's write lock, PostgreSQL's advisory lock and
MongoDB's lease order them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from google.protobuf.descriptor import Descriptor

from .storage import Storage

__all__ = ["RetiredIndexSweep", "sweep_interval"]

_log = logging.getLogger("nexus.storage")

#: The longest wait between two sweeps, in seconds.
MAX_INTERVAL = 60.0
#: Seconds :meth:`RetiredIndexSweep.stop` waits for a sweep in progress to end.
STOP_WAIT = 5.0


def sweep_interval(drop_delay: float) -> float:
    """Seconds between sweeps: a quarter of the delay, between 1 s and a minute."""
    return max(1.0, min(MAX_INTERVAL, drop_delay / 4))


class RetiredIndexSweep:
    """Drops ``storage``'s retired indexes once retired for ``drop_delay`` seconds.

    ``declared`` gives the message types this process serves at each sweep: an index
    they declare is never dropped (a process of another release may have retired it
    at its start) but taken back, and one of theirs they no longer declare is retired.
    A hot swap finishing during a sweep may leave that sweep a generation behind; the
    next one sees the new generation.
    """

    def __init__(
        self,
        storage: Storage,
        drop_delay: float,
        *,
        declared: Callable[[], Sequence[Descriptor]] = list,
    ) -> None:
        self._storage = storage
        self._drop_delay = drop_delay
        self._declared = declared
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep in the background until :meth:`stop` (nothing to do for a 0 delay:
        every start drops what it retires at once)."""
        if self._drop_delay > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sweeping, within :data:`STOP_WAIT` seconds; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A drop interrupted on PostgreSQL ends its connection; a database that does
            # not answer must not hold up the host's stop either.
            await asyncio.wait({task}, timeout=STOP_WAIT)
            if not task.done():
                _log.warning("a retired-index sweep was still running at stop")

    async def _run(self) -> None:
        interval = sweep_interval(self._drop_delay)
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self._storage.drop_retired_indexes(
                    drop_delay=self._drop_delay, declared=self._declared()
                )
            except Exception as error:  # storage down: the next sweep tries again
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Stopped mid-statement: the driver's error stands in for the
                    # cancellation, which must still end the loop.
                    raise asyncio.CancelledError from error
                if not failing:
                    _log.warning(
                        "retired storage indexes could not be dropped (trying again every "
                        "%gs): %s: %s",
                        interval,
                        type(error).__name__,
                        error,
                    )
                failing = True
            else:
                if failing:
                    _log.info("retired storage indexes are being dropped again")
                failing = False
