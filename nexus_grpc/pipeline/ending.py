"""Ending calls from outside: cancel their tasks once, and remember which were ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["end_tasks"]


def end_tasks(tasks: Iterable[asyncio.Task[Any]], ending: set[asyncio.Task[Any]]) -> int:
    """Cancel each of ``tasks`` not done and not being ended already; how many.

    Each cancelled task stays in ``ending`` until it is done, so its own code can tell
    this cancellation (to be answered with a status) from its client's, and a second
    call does not cancel it again (a task cancelled twice needs two ``uncancel()``).
    """
    count = 0
    for task in list(tasks):
        if task.done() or task in ending:
            continue
        ending.add(task)
        task.add_done_callback(ending.discard)
        task.cancel()
        count += 1
    return count
