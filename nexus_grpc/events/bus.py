"""The event bus: who consumes which event type, and delivery to them.

Each subscribing plugin is a consumer group: it gets every event of the types it
consumes once, in publishing order, whatever the number of handlers it has. A handler
that raises is retried with exponential backoff; after ``max_attempts`` the event is
set aside as a dead letter for that group, and the group goes on with the next event.

A handler failing with UNAVAILABLE (its storage or the bus is down) or on a database
busy past its timeout (:func:`~nexus_grpc.errors.is_infrastructure_failure`) did nothing
wrong and neither did the event: it is retried with the same backoff, without counting
an attempt, until the infrastructure is back. An outage never dead-letters an event.

Operating a bus (:class:`EventOperations`): list and redrive dead letters, replay a
group's history where the backend keeps one, and read each group's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import grpc
from google.protobuf.message import Message

from nexus_grpc import tracing
from nexus_grpc.errors import NotFoundError, StatusError, is_infrastructure_failure
from nexus_grpc.events.envelope import Envelope, open_envelope
from nexus_grpc.events.tracing import traced_handler
from nexus_grpc.logs import request_id_var

__all__ = [
    "DeadLetter",
    "Delivery",
    "EventBus",
    "EventCounters",
    "EventOperations",
    "GroupStats",
    "Handler",
    "MemoryBus",
    "StoredDeadLetter",
    "TypeStats",
]

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


@dataclass(frozen=True)
class StoredDeadLetter(DeadLetter):
    """A dead letter as its bus keeps it, with the id :meth:`EventOperations.redrive` takes."""

    #: Unique within the group (a stream entry id on Redis, a number in memory).
    id: str


@dataclass(frozen=True)
class TypeStats:
    """The backlog of one consumer group for one event type."""

    event_type: str
    #: Read (delivered to the handler) but not acknowledged yet.
    pending: int
    #: Not read yet.
    lag: int


@dataclass(frozen=True)
class GroupStats:
    """The backlog of one consumer group: totals (redriven events included), per type."""

    group: str
    pending: int
    lag: int
    dead_letters: int
    types: tuple[TypeStats, ...] = ()


#: Outcomes of one delivery attempt, as counted by :class:`EventCounters`.
OK, RETRY, DEAD_LETTER = "ok", "retry", "dead_letter"
#: A handler run that failed because storage or the bus was unavailable: retried
#: without counting an attempt.
UNAVAILABLE = "unavailable"


class EventCounters:
    """What this process published and handled, as plain numbers read at scrape time.

    Updated on the event loop's thread by the bus itself: a dict increment per event,
    no locks (see :mod:`nexus_grpc.pipeline.metrics` for why).
    """

    __slots__ = ("handled", "published")

    def __init__(self) -> None:
        #: Event type -> events published.
        self.published: dict[str, int] = {}
        #: (group, event type, outcome) -> handler runs; outcome is ok, retry (failed,
        #: will be retried), unavailable (failed on an outage: retried, not counted as
        #: an attempt) or dead_letter (failed for the last time, set aside).
        self.handled: dict[tuple[str, str, str], int] = {}

    def count_published(self, event_type: str) -> None:
        """One event of ``event_type`` published."""
        self.published[event_type] = self.published.get(event_type, 0) + 1

    def count_handled(self, group: str, event_type: str, outcome: str) -> None:
        """One delivery to ``group`` ended with ``outcome``."""
        key = (group, event_type, outcome)
        self.handled[key] = self.handled.get(key, 0) + 1


@runtime_checkable
class EventOperations(Protocol):
    """What operators need of a bus backend: dead letters, replay, backlog, counters.

    Bad arguments (a malformed id, a bad combination) raise ValueError; an unreachable
    broker raises a :class:`~nexus_grpc.errors.StatusError` with code UNAVAILABLE.
    """

    @property
    def backend(self) -> str:
        """The backend's name: "memory" or "redis"."""
        ...

    @property
    def counters(self) -> EventCounters:
        """What this process published and handled."""
        ...

    def groups(self) -> Mapping[str, frozenset[str]]:
        """Consumer groups subscribed on this bus, with the event types each consumes."""
        ...

    async def list_dead_letters(
        self, group: str | None = None, count: int = 100, *, after: tuple[str, str] | None = None
    ) -> Sequence[StoredDeadLetter]:
        """The oldest ``count`` dead letters of ``group`` (or of every group), ordered by
        id then group; ``after`` (group, id) continues after that dead letter."""
        ...

    async def redrive(self, group: str, entry_id: str) -> None:
        """Deliver dead letter ``entry_id`` to ``group`` (only) again; NotFoundError if absent."""
        ...

    async def replay(
        self,
        group: str,
        event_type: str,
        *,
        since_id: str | None = None,
        since_time: float | None = None,
        since_event_id: str | None = None,
    ) -> str:
        """Make ``group`` handle ``event_type`` events again; the position it reads after.

        Starts at stream entry ``since_id``, at Unix time ``since_time``, at the event
        with envelope id ``since_event_id`` (NotFoundError when not kept), or at the
        oldest event kept."""
        ...

    async def stats(self) -> list[GroupStats]:
        """The backlog of every group subscribed on this bus, by group name."""
        ...


#: What the memory bus answers to a replay.
NO_HISTORY = 'the memory bus keeps no history; use events.backend = "redis" to replay events'


@dataclass
class _Group:
    name: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    queue: asyncio.Queue[Envelope] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None
    #: Queued (not yet taken by the worker) events per type.
    waiting: dict[str, int] = field(default_factory=dict)
    #: The event the worker is handling (retries included).
    current: Envelope | None = None

    def put(self, envelope: Envelope) -> None:
        self.queue.put_nowait(envelope)
        self.waiting[envelope.type] = self.waiting.get(envelope.type, 0) + 1


class MemoryBus:
    """In-process delivery: the embedded default, for one host process.

    At most once across a crash: queued events live in memory only. Use the Redis
    backend when several instances share work or events must survive a restart.
    Dead letters are kept in memory too, with ids ("1", "2", ...) unique per bus.
    """

    backend = "memory"

    def __init__(
        self, *, max_attempts: int = 5, backoff: float = 0.1, max_backoff: float = 5.0
    ) -> None:
        self._groups: dict[str, _Group] = {}
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._dead: list[StoredDeadLetter] = []
        self._dead_ids = itertools.count(1)
        self._running = False
        #: Publishing and handling counts of this bus, for /metrics.
        self.counters = EventCounters()

    def subscribe(self, group: str, event_type: str, handler: Handler) -> None:
        """Deliver events of ``event_type`` to ``handler`` in consumer group ``group``."""
        entry = self._groups.setdefault(group, _Group(group))
        if event_type in entry.handlers:
            raise ValueError(f"group {group!r} has two handlers for {event_type}")
        if tracing.enabled():
            handler = traced_handler(handler, backend=self.backend)
        entry.handlers[event_type] = handler
        if self._running and entry.worker is None:
            # A fresh context: a subscription made during a call (a plugin loaded by an
            # admin call) must not give the worker that call's trace or request id.
            entry.worker = asyncio.create_task(
                self._work(entry), name=f"nexus-events-{group}", context=contextvars.Context()
            )

    async def publish(self, envelope: Envelope) -> None:
        """Queue ``envelope`` for every group that consumes its type."""
        for entry in self._groups.values():
            if envelope.type in entry.handlers:
                entry.put(envelope)
        self.counters.count_published(envelope.type)

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
            async with asyncio.timeout(grace):
                await asyncio.gather(*waits)
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

    # -- operations --------------------------------------------------------------------

    def groups(self) -> dict[str, frozenset[str]]:
        """Consumer groups with the event types each consumes."""
        return {name: frozenset(entry.handlers) for name, entry in self._groups.items()}

    async def list_dead_letters(
        self, group: str | None = None, count: int = 100, *, after: tuple[str, str] | None = None
    ) -> list[StoredDeadLetter]:
        """The oldest ``count`` dead letters of ``group`` or of every group, after
        ``after`` (group, id) when given."""
        start = 0
        if after is not None:
            if not after[1].isdigit():
                raise ValueError(f"{after[1]!r} is not a dead letter id of the memory bus")
            start = int(after[1])
        found = [
            dead
            for dead in self._dead
            if int(dead.id) > start and (group is None or dead.group == group)
        ]
        return found[:count]

    async def redrive(self, group: str, entry_id: str) -> None:
        """Queue dead letter ``entry_id`` for ``group`` again, and for no other group."""
        if not entry_id.isdigit():
            raise ValueError(f"{entry_id!r} is not a dead letter id of the memory bus")
        for index, dead in enumerate(self._dead):
            if dead.id == entry_id and dead.group == group:
                entry = self._groups.get(group)
                if entry is None or dead.envelope.type not in entry.handlers:
                    break
                del self._dead[index]
                entry.put(dead.envelope)
                _log.info("dead letter %s redriven to %s", entry_id, group)
                return
        raise NotFoundError("dead letter", f"{group}/{entry_id}")

    async def replay(
        self,
        group: str,
        event_type: str,
        *,
        since_id: str | None = None,
        since_time: float | None = None,
        since_event_id: str | None = None,
    ) -> str:
        """Always FAILED_PRECONDITION: delivered events are gone from memory."""
        raise StatusError(
            grpc.StatusCode.FAILED_PRECONDITION, NO_HISTORY, reason="NO_EVENT_HISTORY"
        )

    async def stats(self) -> list[GroupStats]:
        """Queue sizes: the event being handled is pending, the queued ones are lag."""
        dead: dict[str, int] = {}
        for letter in self._dead:
            dead[letter.group] = dead.get(letter.group, 0) + 1
        found = []
        for name in sorted(self._groups):
            entry = self._groups[name]
            current = entry.current.type if entry.current is not None else None
            types = tuple(
                TypeStats(t, int(t == current), entry.waiting.get(t, 0))
                for t in sorted(entry.handlers)
            )
            found.append(
                GroupStats(
                    name,
                    pending=int(current is not None),
                    lag=entry.queue.qsize(),
                    dead_letters=dead.get(name, 0),
                    types=types,
                )
            )
        return found

    async def _work(self, entry: _Group) -> None:
        while True:
            envelope = await entry.queue.get()
            left = entry.waiting.get(envelope.type, 0) - 1
            if left > 0:
                entry.waiting[envelope.type] = left
            else:
                entry.waiting.pop(envelope.type, None)
            entry.current = envelope
            try:
                await self._deliver(entry, envelope)
            finally:
                entry.current = None
                entry.queue.task_done()

    async def _deliver(self, entry: _Group, envelope: Envelope) -> None:
        handler = entry.handlers[envelope.type]
        token = request_id_var.set(envelope.correlation_id)
        try:
            attempt = 1
            outages = 0  # runs failed on an outage: not attempts
            while True:
                try:
                    await handler(open_envelope(envelope), Delivery(envelope, entry.name, attempt))
                    self.counters.count_handled(entry.name, envelope.type, OK)
                    if outages:
                        _log.info(
                            "event %s (%s) handled by %s after the outage",
                            envelope.id,
                            envelope.type,
                            entry.name,
                        )
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    if is_infrastructure_failure(error):
                        outages += 1
                        self.counters.count_handled(entry.name, envelope.type, UNAVAILABLE)
                        delay = self._delay(outages)
                        if outages == 1:  # once per event: an outage is logged elsewhere
                            _log.warning(
                                "event %s (%s) waits in %s until the outage ends (%s); "
                                "not counted as an attempt",
                                envelope.id,
                                envelope.type,
                                entry.name,
                                error,
                            )
                        await asyncio.sleep(delay)
                        continue
                    if attempt == self._max_attempts:
                        self.counters.count_handled(entry.name, envelope.type, DEAD_LETTER)
                        self._dead.append(
                            StoredDeadLetter(
                                envelope,
                                entry.name,
                                attempt,
                                f"{type(error).__name__}: {error}",
                                id=str(next(self._dead_ids)),
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
                    self.counters.count_handled(entry.name, envelope.type, RETRY)
                    delay = self._delay(attempt)
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
                    attempt += 1
        finally:
            request_id_var.reset(token)

    def _delay(self, failures: int) -> float:
        return float(min(self._backoff * 2 ** (failures - 1), self._max_backoff))


if TYPE_CHECKING:  # the protocol stays satisfied (nothing else checks it statically)

    def _operable(bus: MemoryBus) -> EventOperations:
        return bus
