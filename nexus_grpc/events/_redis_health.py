"""Whether the Redis event bus reaches its Redis, and who is told when that changes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

__all__ = ["RECONNECT_MAX", "RECONNECT_MIN", "Health", "HealthCallback"]

_log = logging.getLogger("nexus.events")

#: First and longest pause between attempts to reach Redis again.
RECONNECT_MIN = 0.05
RECONNECT_MAX = 1.0

HealthCallback = Callable[[bool], Awaitable[None]]


class Health:
    """Reachability of Redis as seen by every command of the bus.

    An outcome counts only if health did not change since its command started
    (``mark``): a reply that was on its way before Redis went down must not report
    it back right after the failure was reported, and a connection that broke in the
    outage must not report it down again once other commands got through.
    """

    def __init__(self, ping: Callable[[], Awaitable[Any]]) -> None:
        self._ping = ping
        self._healthy = True
        self._reported = True
        self._changes = 0
        self._lock = asyncio.Lock()
        self._callbacks: list[HealthCallback] = []
        self._probe: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """False from a failure to reach Redis until a command gets through again."""
        return self._healthy

    def mark(self) -> int:
        """Taken before a command; pass it to :meth:`succeeded` when the command did."""
        return self._changes

    def on_change(self, callback: HealthCallback) -> None:
        """Call ``await callback(healthy)`` on every change."""
        self._callbacks.append(callback)

    async def failed(self, error: BaseException, mark: int) -> None:
        """A command that started at ``mark`` could not reach Redis."""
        if mark == self._changes and self._healthy:
            self._healthy = False
            self._changes += 1
            # Logged once per outage; the workers and the probe retry quietly.
            _log.warning("event bus cannot reach Redis, retrying: %s", error)
            # Workers notice Redis coming back only if there are groups; a process
            # that only publishes needs a check of its own.
            if self._probe is None or self._probe.done():
                # A fresh context: the probe outlives the call that saw the failure, and
                # must not carry its trace or request id.
                self._probe = asyncio.create_task(
                    self._watch(), name="nexus-events-probe", context=contextvars.Context()
                )
        await self._report()

    async def succeeded(self, mark: int) -> None:
        """A command that started at ``mark`` got a reply from Redis."""
        if mark != self._changes or self._healthy:
            return
        self._healthy = True
        self._changes += 1
        _log.info("event bus reaches Redis again")
        await self._report()

    async def check(self) -> None:
        """Ping Redis once and record the outcome."""
        mark = self.mark()
        try:
            await self._ping()
        except (RedisError, OSError) as error:
            await self.failed(error, mark)
        else:
            await self.succeeded(mark)

    async def close(self) -> None:
        """Stop the probe."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None

    async def _report(self) -> None:
        # One at a time, always ending on the latest state, however the reports of
        # concurrent workers interleave.
        async with self._lock:
            while self._reported != self._healthy:
                self._reported = state = self._healthy
                for callback in list(self._callbacks):
                    try:
                        await callback(state)
                    except Exception:
                        _log.exception("event bus health callback failed")

    async def _watch(self) -> None:
        delay = RECONNECT_MIN
        while not self._healthy:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            mark = self.mark()
            try:
                await self._ping()
            except (RedisError, OSError):
                continue
            await self.succeeded(mark)
