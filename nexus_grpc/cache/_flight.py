"""Single-flight: concurrent loads of one key in one process share one call.

The load runs in a task of its own, and callers await it shielded: a caller that is
cancelled (its request timed out, its client went away) neither cancels the load for
the others nor leaves them waiting for nothing. A load nobody waits for any more
still finishes and fills the cache, which the next caller is glad of.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["SingleFlight"]


class SingleFlight:
    """At most one load per key in progress; the others wait for its outcome."""

    def __init__(self) -> None:
        self._loads: dict[str, asyncio.Task[bytes]] = {}

    def __len__(self) -> int:
        return len(self._loads)

    async def run(self, key: str, load: Callable[[], Coroutine[Any, Any, bytes]]) -> bytes:
        """The result of the load of ``key`` in progress, or of ``load()`` started now.

        Every caller gets the same value, or the same exception.
        """
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(load(), name=f"cache-load:{key}")
            self._loads[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(task)

    async def cancel_all(self) -> None:
        """Cancel the loads in progress (on close) and wait for them to end."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, key: str, task: asyncio.Task[bytes]) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        # Retrieve the outcome: when every caller was cancelled nobody else would,
        # and asyncio would log "exception was never retrieved".
        if not task.cancelled():
            task.exception()
