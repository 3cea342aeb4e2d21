"""Helpers of the cache tests: a clock to turn by hand, waiting on a condition, and a
Redis server of a test's own that it may stop and start again on the same port."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from nexus_grpc.cache import CacheManager

__all__ = ["FakeClock", "ManagerFactory", "eventually"]

#: The ``make_manager`` fixture: ``make_manager(url, **options)``.
ManagerFactory = Callable[..., CacheManager]


class FakeClock:
    """A monotonic clock that moves only when told (L1's clock in these tests)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0, what: str = "condition"
) -> None:
    """Wait until ``check()`` is true, polling every 10 ms, failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {seconds} s")
        await asyncio.sleep(0.01)
