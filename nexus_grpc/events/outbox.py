"""The transactional outbox, and the inbox that makes redelivery harmless.

**Outbox.** An event published inside a unit of work is written to the publishing
plugin's own namespace (collection ``nexus.events.outbox``) in the same transaction
as the data, so both commit or neither does. After the commit the publishing task
hands it to the bus at once and the row is deleted in a later batch. When that fails
(the broker is down, the process dies right after the commit) the row stays, and a
relay loop in every host process publishes rows that are older than ``relay_after``
seconds, or that this process failed to publish, once the bus takes them again
(looking for them every ``poll_interval`` seconds; a batch of 100 published ids is
deleted at once): an event whose data committed is published at least once, whatever
crashes in between.

Several host processes sharing a database relay the same outbox; each row is claimed
by a row lock (``for_update``) for the time of its publish, so a row is published by
one of them, and rows younger than ``relay_after`` are left to their publisher. A
publisher that dies after publishing but before the batched delete gets its rows
relayed again: consumers see a duplicate, which the inbox absorbs.

"Younger" compares the row's time (the publisher's wall clock, taken when the event
was published, before the commit) with the relaying process's wall clock. A relay whose
clock runs ahead of the publisher's by more than ``relay_after``, or a transaction that
stays open longer than that, makes a relay publish a row its publisher is handing over
too: a duplicate, never a loss. A relay whose clock runs behind relays late by the
difference. Keep the hosts' clocks synchronised (NTP) well within ``relay_after``.

A relay publishes only the rows of the types the plugin's manifest declares in this
process, with the plugin as their source: a row of a type a newer version of the plugin
publishes (a rolling upgrade) is left to a process that declares it, and a row naming
another plugin as its source is never published. An outbox that cannot be read (its
storage fails, a row no longer decodes) holds back its own plugin's relay only, logged
until it can be read again; its rows stay, whatever the outage lasts (an unavailable
storage is a warning, not a traceback). A type the bus refuses waits for the next relay
pass while the other types go on.

**Order.** Events published while the bus is up reach it in commit order of each
task. Events held back during an outage are relayed after it, oldest first, and may
arrive after events published later by a process that reached the bus sooner.

**Inbox.** At-least-once delivery means a handler may see an event twice (a retry
after a crash, an outbox relay after a lost delete, two processes racing after a
takeover). :meth:`Inbox.first_time` records the event id in the handler's own
transaction: the second delivery finds it and does nothing, so the effect happens
once. Inbox rows are pruned after ``inbox_retention`` seconds; a duplicate arriving
later than that (a replay, say) is handled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_grpc.errors import AlreadyExistsError, ConflictError, is_infrastructure_failure
from nexus_grpc.events.bus import Delivery, EventBus
from nexus_grpc.events.envelope import Envelope
from nexus_grpc.events.redis_bus import BusUnavailableError
from nexus_grpc.storage import Namespace, UnitOfWork

__all__ = ["INBOX_COLLECTION", "OUTBOX_COLLECTION", "Inbox", "Outbox"]

_log = logging.getLogger("nexus.events")

#: Collection of a plugin's namespace holding its events not yet handed to the bus.
OUTBOX_COLLECTION = "nexus.events.outbox"
#: Collection of a plugin's namespace holding the ids of events it has handled.
INBOX_COLLECTION = "nexus.events.inbox"
#: Rows deleted or relayed per transaction / read per sweep.
_BATCH = 100
#: Seconds between two inbox prunings.
_PRUNE_EVERY = 60.0


@dataclass
class _Source:
    """One publishing plugin: where its outbox lives and what it may publish."""

    name: str
    namespace: Namespace
    declared: frozenset[str]
    #: Ids published by this process whose rows are still to be deleted.
    published: set[str] = field(default_factory=set)
    #: Ids this process failed to publish: relayed as soon as the bus takes them.
    held: set[str] = field(default_factory=set)
    #: Whether the last sweep of this outbox failed (only the first failure is logged).
    failing: bool = False


class Outbox:
    """Keeps events with the data that produced them until the bus has them.

    ``relay_after``: seconds a row is left to the process that wrote it before any
    relay publishes it. ``poll_interval``: seconds between two relay passes.
    ``clock``: wall-clock seconds (envelope times are wall-clock).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        relay_after: float = 5.0,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if relay_after < 0 or poll_interval <= 0:
            raise ValueError("Outbox needs relay_after >= 0 and poll_interval > 0")
        self._bus = bus
        self._relay_after = relay_after
        self._poll_interval = poll_interval
        self._clock = clock
        self._sources: dict[str, _Source] = {}
        self._inboxes: list[Inbox] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def register(self, source: str, namespace: Namespace, declared: frozenset[str]) -> None:
        """Relay ``source``'s outbox in ``namespace``; it may publish ``declared`` types."""
        self._sources[source] = _Source(source, namespace, declared)

    async def stage(self, unit: UnitOfWork, source: str, envelope: Envelope) -> None:
        """Write ``envelope`` in ``unit``'s transaction; publish it once that commits."""
        entry = self._source(source)
        if unit.namespace != entry.namespace.name:
            raise ValueError(
                f"plugin {source!r} publishes in a transaction of namespace "
                f"{unit.namespace!r}; only its own ({entry.namespace.name!r}) keeps its outbox"
            )
        await unit.repository(Envelope, collection=OUTBOX_COLLECTION).create(envelope)

        async def publish_committed() -> None:
            await self._publish_now(entry, envelope)

        unit.after_commit(publish_committed)

    async def keep(self, source: str, envelope: Envelope) -> None:
        """Store ``envelope`` for the relay (the bus refused it outside a transaction)."""
        entry = self._source(source)
        await entry.namespace.repository(Envelope, collection=OUTBOX_COLLECTION).create(envelope)
        self._held(entry, envelope)

    async def start(self) -> None:
        """Start the relay loop (a first sweep runs at once: rows of a previous run)."""
        if self._task is None:
            self._task = asyncio.create_task(self._relay_loop(), name="nexus-outbox")

    async def stop(self) -> None:
        """Stop the loop and delete the rows this process published (best effort)."""
        if self._task is not None:
            # The flag ends the loop at its next turn should the cancellation be lost in
            # something it awaited (Python 3.11's asyncio.wait_for drops one that races
            # with its result; the loop no longer uses it, storage drivers might).
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._stopping = False
        for entry in self._sources.values():
            # Rows left are relayed again later: a duplicate, which the inbox absorbs.
            with contextlib.suppress(Exception):
                await self._delete_published(entry)

    async def sweep(self, *, relay: bool = True) -> int:
        """Delete what was published; relay rows due for it. The number relayed.

        Rows of a type the bus refuses wait for the next relay pass (in order: the
        older first); the other types, and the other plugins' outboxes, go on. With
        ``relay=False`` the sweep only deletes (and cannot tell a failing relay works
        again).
        """
        refused: set[str] = set()
        relayed = 0
        for entry in list(self._sources.values()):
            try:
                await self._delete_published(entry)
                if relay:
                    relayed += await self._relay_source(entry, refused)
            except Exception as error:
                if not entry.failing:
                    if is_infrastructure_failure(error):  # the rows stay; storage health tells more
                        _log.warning("outbox relay of %s waits: %s", entry.name, error)
                    else:
                        _log.exception("outbox relay of %s failed; retrying", entry.name)
                entry.failing = True
                continue
            if entry.failing and relay:
                _log.info("outbox relay of %s works again", entry.name)
                entry.failing = False
        return relayed

    def inbox(self, namespace: Namespace, retention: float) -> Inbox:
        """The inbox of a consuming plugin's ``namespace``, pruned by this relay."""
        inbox = Inbox(namespace, retention)
        self._inboxes.append(inbox)
        return inbox

    # -- internals ---------------------------------------------------------------------

    def _source(self, source: str) -> _Source:
        entry = self._sources.get(source)
        if entry is None:
            raise ValueError(f"plugin {source!r} has no outbox: it publishes no events")
        return entry

    async def _publish_now(self, entry: _Source, envelope: Envelope) -> None:
        try:
            await self._bus.publish(envelope)
        except BusUnavailableError:
            self._held(entry, envelope)
            return
        entry.published.add(envelope.id)
        if len(entry.published) >= _BATCH:
            self._wake.set()

    def _held(self, entry: _Source, envelope: Envelope) -> None:
        entry.held.add(envelope.id)
        _log.warning(
            "event %s (%s) kept in the outbox of %s until the bus is back",
            envelope.id,
            envelope.type,
            entry.name,
        )

    async def _relay_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time()  # monotonic: a wall clock set back must not stop pruning
        next_relay = loop.time()
        relayed = 0
        while not self._stopping:
            # A batch of published ids wakes the loop long before the poll interval is
            # over under load (every 100 events); its delete is due, but relaying lists
            # the outbox (~2 ms on a thread on SQLite, for rows that are seldom due), so
            # the relay keeps to the poll interval unless a backlog is being drained.
            relay = relayed >= _BATCH or loop.time() >= next_relay
            relayed = await self.sweep(relay=relay)
            if relay:
                next_relay = loop.time() + self._poll_interval
            if loop.time() >= next_prune:
                next_prune = loop.time() + _PRUNE_EVERY
                await self._prune_inboxes()
            if relayed >= _BATCH:
                continue  # a backlog after an outage: drain it without pausing
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the wake
            # instead of raising a cancellation that arrives in the same turn.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_relay - loop.time())):
                    await self._wake.wait()
            self._wake.clear()

    async def _delete_published(self, entry: _Source) -> None:
        # What was published when this began: publishes landing meanwhile wait for the
        # next sweep, so a steady stream of them cannot keep the relay from relaying.
        ids = list(entry.published)
        outbox = entry.namespace.repository(Envelope, collection=OUTBOX_COLLECTION)
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            await outbox.delete_many(batch)
            entry.published.difference_update(batch)

    async def _relay_source(self, entry: _Source, refused: set[str]) -> int:
        outbox = entry.namespace.repository(Envelope, collection=OUTBOX_COLLECTION)
        held = set(entry.held)
        due_before = self._clock() - self._relay_after
        relayed = 0
        while True:
            # Only what this plugin may publish, as itself (see the module docstring),
            # and no type the bus refused in this sweep: those rows wait, in order, and
            # must not fill the page in front of the other types.
            relayable = {"type": sorted(entry.declared - refused), "source": entry.name}
            if not relayable["type"]:
                break
            refused_before = len(refused)
            page = await outbox.list(filter=relayable, order_by="time", page_size=_BATCH)
            for envelope in page.items:
                if envelope.type in refused:
                    continue  # after an older row of its type: order is kept per type
                if envelope.id not in held and envelope.time.ToNanoseconds() / 1e9 > due_before:
                    continue  # still its publisher's to hand over
                if envelope.id in entry.published:
                    continue
                try:
                    if await self._relay_one(entry, envelope.id):
                        relayed += 1
                except BusUnavailableError:
                    refused.add(envelope.type)
                    continue
                except ConflictError:
                    # MongoDB: another process held the row past the lock timeout;
                    # SQLite: the database stayed busy. The row waits for the next sweep.
                    continue
                entry.held.discard(envelope.id)
            if not page.next_page_token and not refused:
                # Every relayable row was listed: held ids not among them were relayed
                # by another process (or their rows deleted); forget them.
                entry.held -= held - {envelope.id for envelope in page.items}
            if not page.next_page_token or len(refused) == refused_before:
                break
            # A type was refused and more rows wait behind the page: list the others.
        if relayed:
            _log.info("relayed %d events from the outbox of %s", relayed, entry.name)
        return relayed

    async def _relay_one(self, entry: _Source, event_id: str) -> bool:
        """Publish and delete one row under its lock; False when it is gone (another
        relay had it) or no longer this plugin's to relay."""
        async with entry.namespace.transaction() as unit:
            outbox = unit.repository(Envelope, collection=OUTBOX_COLLECTION)
            envelope = await outbox.get(event_id, for_update=True)
            if envelope is None:
                return False  # relayed and deleted by another process meanwhile
            if envelope.type not in entry.declared or envelope.source != entry.name:
                return False  # rewritten since it was listed: not ours to relay
            await self._bus.publish(envelope)
            await outbox.delete(event_id)
        return True

    async def _prune_inboxes(self) -> None:
        for inbox in self._inboxes:
            try:
                await inbox.prune(self._clock())
            except Exception as error:  # the next pruning retries; the other inboxes go on
                if is_infrastructure_failure(error):
                    _log.warning("pruning the inbox of %s waits: %s", inbox.namespace, error)
                else:
                    _log.exception("pruning the inbox of %s failed", inbox.namespace)


class Inbox:
    """Ids of the events a plugin has handled, kept in its own namespace.

    ``retention``: seconds after an event's time its id is remembered.
    """

    def __init__(self, namespace: Namespace, retention: float) -> None:
        self._namespace = namespace
        self._retention = retention

    @property
    def namespace(self) -> str:
        """The name of the namespace holding the inbox."""
        return self._namespace.name

    async def first_time(self, unit: UnitOfWork, delivery: Delivery) -> bool:
        """Record ``delivery``'s event in ``unit``; False when it was recorded before.

        Call it first in the handler's transaction and return when it is False. The
        record commits with the handler's effects or not at all, so a handler that
        failed half-way is retried in full, and one that committed is not run again.
        """
        if unit.namespace != self._namespace.name:
            raise ValueError(
                f"the inbox of {self._namespace.name!r} cannot record in a transaction of "
                f"{unit.namespace!r}"
            )
        event = delivery.envelope
        record = Envelope(id=event.id, source=event.source, type=event.type, time=event.time)
        record.subject = delivery.group
        try:
            await unit.repository(Envelope, collection=INBOX_COLLECTION).create(record)
        except AlreadyExistsError:
            return False
        return True

    async def prune(self, now: float) -> int:
        """Forget events older than ``retention`` seconds before ``now``; how many."""
        inbox = self._namespace.repository(Envelope, collection=INBOX_COLLECTION)
        cutoff = now - self._retention
        pruned = 0
        while True:
            page = await inbox.list(order_by="time", page_size=_BATCH)
            old = [e.id for e in page.items if e.time.ToNanoseconds() / 1e9 < cutoff]
            if old:
                async with self._namespace.transaction() as unit:
                    rows = unit.repository(Envelope, collection=INBOX_COLLECTION)
                    for event_id in old:
                        await rows.delete(event_id)
                pruned += len(old)
            if len(old) < _BATCH:
                return pruned
