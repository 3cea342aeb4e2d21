"""The event bus: who consumes which event type, and delivery to them.

Each subscribing plugin is a consumer group: it gets every event of the types it
consumes once, in publishing order, whatever the number of handlers it has. A handler
that raises is retried with exponential backoff; after ``max_attempts`` the event is
set aside as a dead letter for that group, and the group goes on with the next event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import Message

from nexus_grpc.events.envelope import Envelope, open_envelope
from nexus_grpc.logs import request_id_var

__all__ = ["DeadLetter", "Delivery", "EventBus", "Handler", "MemoryBus"]

_log = logging.getLogger("nexus.events")


@dataclass(frozen=True)
class Delivery:
    """One delivery of an event to one consumer group."""

    envelope: Envelope
    #: The consumer group (the subscribing plugin's name).
    group: str
    #: 1 for the first delivery, 2 for the first retry, ...
    attempt: int


#: ``async def handler(event, delivery)``.
Handler = Callable[[Message, Delivery], Awaitable[None]]


@dataclass(frozen=True)
class DeadLetter:
    """An event a group gave up on, with why."""

    envelope: Envelope
    group: str
    attempts: int
    error: str


class EventBus(Protocol):
    """What the host and plugins need of a bus backend."""

    def subscribe(self, group: str, event_type: str, handler: Handler) -> None:
        """Deliver events of ``event_type`` to ``handler`` in consumer group ``group``."""
        ...

    async def publish(self, envelope: Envelope) -> None:
        """Hand an event to every group consuming its type."""
        ...

    async def start(self) -> None:
        """Start delivering."""
        ...

    async def stop(self, grace: float) -> None:
        """Deliver what is queued for up to ``grace`` seconds, then stop."""
        ...

    def dead_letters(self) -> list[DeadLetter]:
        """Events set aside after their last failed attempt."""
        ...


@dataclass
class _Group:
    name: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    queue: asyncio.Queue[Envelope] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None


class MemoryBus:
    """In-process delivery: the embedded default, for one host process.

    At most once across a crash: queued events live in memory only. Use the Redis
    backend when several instances share work or events must survive a restart.
    """

    def __init__(
        self, *, max_attempts: int = 5, backoff: float = 0.1, max_backoff: float = 5.0
    ) -> None:
        self._groups: dict[str, _Group] = {}
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._dead: list[DeadLetter] = []
        self._running = False

    def subscribe(self, group: str, event_type: str, handler: Handler) -> None:
        """Deliver events of ``event_type`` to ``handler`` in consumer group ``group``."""
        entry = self._groups.setdefault(group, _Group(group))
        if event_type in entry.handlers:
            raise ValueError(f"group {group!r} has two handlers for {event_type}")
        entry.handlers[event_type] = handler
        if self._running and entry.worker is None:
            entry.worker = asyncio.create_task(self._work(entry), name=f"nexus-events-{group}")

    async def publish(self, envelope: Envelope) -> None:
        """Queue ``envelope`` for every group that consumes its type."""
        for entry in self._groups.values():
            if envelope.type in entry.handlers:
                entry.queue.put_nowait(envelope)

    async def start(self) -> None:
        """Start one worker per group."""
        self._running = True
        for entry in self._groups.values():
            if entry.worker is None:
                entry.worker = asyncio.create_task(
                    self._work(entry), name=f"nexus-events-{entry.name}"
                )

    async def stop(self, grace: float) -> None:
        """Let queued events be delivered for up to ``grace`` seconds, then stop."""
        self._running = False
        waits = [entry.queue.join() for entry in self._groups.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        for entry in self._groups.values():
            if entry.worker is not None:
                entry.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await entry.worker
                entry.worker = None
        left = sum(entry.queue.qsize() for entry in self._groups.values())
        if left:
            _log.warning("stopped with %d undelivered events (memory bus: they are lost)", left)

    def dead_letters(self) -> list[DeadLetter]:
        """Events set aside after their last failed attempt, oldest first."""
        return list(self._dead)

    def pending(self, group: str) -> int:
        """Events queued for ``group`` and not yet handled."""
        entry = self._groups.get(group)
        return entry.queue.qsize() if entry else 0

    async def _work(self, entry: _Group) -> None:
        while True:
            envelope = await entry.queue.get()
            try:
                await self._deliver(entry, envelope)
            finally:
                entry.queue.task_done()

    async def _deliver(self, entry: _Group, envelope: Envelope) -> None:
        handler = entry.handlers[envelope.type]
        token = request_id_var.set(envelope.correlation_id)
        try:
            for attempt in range(1, self._max_attempts + 1):
                try:
                    await handler(open_envelope(envelope), Delivery(envelope, entry.name, attempt))
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    if attempt == self._max_attempts:
                        self._dead.append(
                            DeadLetter(
                                envelope, entry.name, attempt, f"{type(error).__name__}: {error}"
                            )
                        )
                        _log.error(
                            "event %s (%s) dead-lettered for %s after %d attempts",
                            envelope.id,
                            envelope.type,
                            entry.name,
                            attempt,
                            exc_info=True,
                        )
                        return
                    delay = min(self._backoff * 2 ** (attempt - 1), self._max_backoff)
                    _log.warning(
                        "event %s (%s) failed in %s (attempt %d), retrying in %.2fs: %s",
                        envelope.id,
                        envelope.type,
                        entry.name,
                        attempt,
                        delay,
                        error,
                    )
                    await asyncio.sleep(delay)
        finally:
            request_id_var.reset(token)
