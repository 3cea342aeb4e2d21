"""A bounded, closable pipe of messages between the two tasks of an in-process call."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["END", "PIPE_LIMIT", "ClosedError", "Pipe"]

#: Messages queued for the reader before a writer waits too (back-pressure).
PIPE_LIMIT = 16


class _End:
    """What :meth:`Pipe.get` returns once the pipe is closed and drained."""


END = _End()


class ClosedError(Exception):
    """The pipe was closed before or while a writer waited."""


class Pipe:
    """Messages from one task to another, in order.

    A writer waits while :data:`PIPE_LIMIT` messages are queued. Closing ends the pipe:
    the reader still gets what is queued, then :data:`END`; writers get
    :class:`ClosedError`.
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self.closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, item: Any) -> None:
        """Queue ``item``, waiting for room first; ClosedError once closed."""
        while len(self._items) >= PIPE_LIMIT and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        if self.closed:
            raise ClosedError()
        self._items.append(item)
        self._readable.set()

    def close(self) -> None:
        """No more messages; idempotent."""
        self.closed = True
        self._readable.set()
        self._writable.set()

    async def wait_readable(self) -> None:
        """Wait until a message is queued or the pipe is closed."""
        while not self._items and not self.closed:
            self._readable.clear()
            await self._readable.wait()

    async def get(self) -> Any:
        """The next message; :data:`END` once the pipe is closed and drained."""
        await self.wait_readable()
        if not self._items:
            return END
        item = self._items.popleft()
        self._writable.set()
        return item

    async def messages(self) -> AsyncIterator[Any]:
        """Every message until the end (what a handler iterates as its requests)."""
        while True:
            item = await self.get()
            if item is END:
                return
            yield item
