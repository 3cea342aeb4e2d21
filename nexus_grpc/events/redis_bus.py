"""The event bus on Redis Streams: at-least-once delivery shared by every host process.

Layout (``prefix`` defaults to ``nexus``):

``{prefix}:events:{event type}``
    One stream per event type. Publishing is an XADD of the serialized Envelope in the
    field ``envelope``, trimmed approximately to ``maxlen`` entries. The stream is also
    the replay store: :meth:`RedisBus.replay` can reach back as far as it holds.
``{prefix}:dead:{group}``
    Entries a group gave up on, with fields envelope, group, attempts, error, stream
    and entry (the original stream and entry id).
``{prefix}:retry:{group}``
    Dead letters redriven to one group; read by that group's workers only.

Each subscribing plugin is a consumer group on every stream it consumes. A **new**
group starts at ``$``: it gets the events published from its creation on, not the
history (use :meth:`RedisBus.replay` for that). Every process is one consumer of the
group (``host:pid:random``), so processes share a group's work.

Guarantees:

* **At least once, across processes.** An entry is acknowledged only after its
  handler returned. One read but never acknowledged (the process died, or stopped
  mid-handler) is taken over by any live consumer of the group once idle for
  ``claim_idle`` seconds (XAUTOCLAIM), or at once when the consumer stopped cleanly.
  Handlers must therefore be idempotent; a handler running longer than
  ``claim_idle`` stays its consumer's (a heartbeat keeps its entries), unless the
  event loop is blocked that long.
* **Order** within one stream and one consumer: entries are handled in stream order,
  one at a time. Several consumers of a group (processes) handle a stream's entries
  in parallel, and an entry taken over after a crash is handled after later ones.
* **Retries and dead letters**: a failing handler is retried with exponential backoff
  up to ``max_attempts`` deliveries (Redis's delivery count, so attempts made by a
  consumer that died count too); then the entry moves to the group's dead-letter
  stream and the group goes on with the next one.
* **Outages**: :meth:`RedisBus.publish` raises :class:`BusUnavailableError` (an
  outbox keeps such events); workers retry with backoff; :meth:`RedisBus.healthy`
  is False meanwhile and :meth:`RedisBus.on_health` callbacks hear of each change.
* **Trimming** is the one way to lose events: entries trimmed before a group read
  them are gone (logged when they were pending). Size ``maxlen`` for the longest
  outage of the slowest group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import redis.asyncio as aioredis
from google.protobuf.message import DecodeError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from nexus_grpc import tracing
from nexus_grpc.errors import NotFoundError, StatusError
from nexus_grpc.events._redis_health import Health, HealthCallback
from nexus_grpc.events._redis_runtime import Runtime, Settings, cancel_and_wait
from nexus_grpc.events._redis_streams import (
    REDRIVE,
    REPLAY,
    Keys,
    consumer_name,
    id_before,
    is_unreachable,
    text,
    time_to_id,
    valid_id,
)
from nexus_grpc.events._redis_worker import GroupWorker
from nexus_grpc.events.bus import (
    DeadLetter,
    EventCounters,
    EventOperations,
    GroupStats,
    Handler,
    StoredDeadLetter,
    TypeStats,
)
from nexus_grpc.events.envelope import Envelope
from nexus_grpc.events.tracing import traced_handler
from nexus_grpc.storage.spans import client_span, server_of_redis

__all__ = ["BusUnavailableError", "RedisBus", "RedisDeadLetter"]

_log = logging.getLogger("nexus.events")

#: Dead letters of this process kept in memory for :meth:`RedisBus.dead_letters`.
_DEAD_KEPT = 1000
#: Seconds stop() may spend handing unfinished entries back to the other consumers.
_RELEASE_SECONDS = 5.0
#: Upper bound of a lag Redis cannot tell (after a replay): counting reads this many entries.
_LAG_COUNT_LIMIT = 10_000
#: Seconds a command waits for a free pooled connection before failing (UNAVAILABLE).
_POOL_WAIT = 30.0
#: Entries read per XREVRANGE when looking an event up by its id.
_EVENT_SEARCH_PAGE = 1000
#: Seconds a publishing host's clock may be ahead of Redis's when an event is looked up
#: by its id: copies of an event are searched this far before the time it carries.
_CLOCK_SKEW = 60.0


class BusUnavailableError(StatusError):
    """The event bus cannot reach its Redis: nothing was published (UNAVAILABLE)."""

    def __init__(self, message: str = "event bus unavailable") -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message, reason="EVENT_BUS_UNAVAILABLE")


@dataclass(frozen=True)
class RedisDeadLetter(StoredDeadLetter):
    """A dead letter as stored in Redis, with what :meth:`RedisBus.redrive` needs.

    ``id`` is its entry id in the group's dead-letter stream: pass it to ``redrive``.
    """

    #: The event stream the entry was read from, and its id there.
    stream: str
    entry_id: str


class RedisBus:
    """The :class:`~nexus_grpc.events.EventBus` on Redis Streams (module doc: guarantees).

    ``max_attempts``, ``backoff`` and ``max_backoff`` are those of the memory bus.
    ``claim_idle``: seconds an unacknowledged entry must be idle before another
    consumer takes it over. ``maxlen``: approximate length streams are trimmed to.
    ``block``: longest blocking read (bounds how soon new subscriptions are read).
    ``batch``: entries read per stream at once. ``timeout``: connecting and each
    command, so an unreachable Redis fails calls quickly. ``max_connections``: commands
    in flight at once (blocking reads have connections of their own); more wait for a
    free connection, up to 30 s, and such a wait is never taken for an outage.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "nexus",
        max_attempts: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        claim_idle: float = 30.0,
        maxlen: int = 1_000_000,
        block: float = 1.0,
        batch: int = 16,
        timeout: float = 1.0,
        max_connections: int = 32,
    ) -> None:
        if max_attempts < 1 or claim_idle <= 0 or maxlen < 1 or block <= 0 or batch < 1:
            raise ValueError(
                "RedisBus needs max_attempts >= 1, claim_idle > 0, maxlen >= 1, "
                "block > 0 and batch >= 1"
            )
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # Waiting for one of max_connections is queueing under load, not an outage
            # (an unreachable Redis frees each connection within ``timeout``).
            timeout=_POOL_WAIT,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        # Blocking reads get their own connections, with a socket timeout longer than
        # the block, and no retry: a retried XREADGROUP could drop entries the first
        # one had already taken (they would wait ``claim_idle`` to be claimed back).
        reader_pool = aioredis.ConnectionPool.from_url(
            url,
            socket_timeout=block + timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        client = aioredis.Redis.from_pool(pool)
        self._health = Health(client.ping)
        self._server = server_of_redis(client)  # for XADD spans; the client is fixed
        self._runtime = Runtime(
            settings=Settings(max_attempts, backoff, max_backoff, claim_idle, maxlen, block, batch),
            keys=Keys(prefix),
            client=client,
            reader=aioredis.Redis.from_pool(reader_pool),
            consumer=consumer_name(),
            health=self._health,
            record_dead=self._record_dead,
        )
        self._workers: dict[str, GroupWorker] = {}
        self._dead: deque[DeadLetter] = deque(maxlen=_DEAD_KEPT)
        self._running = False
        self._stopped = False

    @property
    def consumer(self) -> str:
        """This process's consumer name in every group."""
        return self._runtime.consumer

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client for commands (not blocking reads)."""
        return self._runtime.client

    @property
    def counters(self) -> EventCounters:
        """What this process published and handled, for /metrics."""
        return self._runtime.counters

    # -- the EventBus protocol ---------------------------------------------------------

    def subscribe(self, group: str, event_type: str, handler: Handler) -> None:
        """Deliver events of ``event_type`` to ``handler`` in consumer group ``group``."""
        worker = self._workers.get(group)
        if worker is None:
            worker = self._workers[group] = GroupWorker(group, self._runtime)
        if tracing.enabled():
            handler = traced_handler(handler, backend=self.backend)
        worker.add(event_type, handler)
        if self._running:
            worker.start()

    async def publish(self, envelope: Envelope) -> None:
        """Append ``envelope`` to its type's stream; every group consuming it gets it.

        Raises :class:`BusUnavailableError` when Redis cannot take it.
        """
        if not envelope.type:
            raise ValueError(f"envelope {envelope.id}: no event type")
        mark = self._health.mark()
        stream = self._runtime.keys.events(envelope.type)
        try:
            if tracing.enabled():
                with client_span("redis", "XADD", collection=stream, server=self._server):
                    await self._xadd(stream, envelope)
            else:
                await self._xadd(stream, envelope)
        except (RedisError, OSError) as error:
            if is_unreachable(error):
                await self._health.failed(error, mark)
            # The caller gets the error; health logs the outage once.
            _log.debug("cannot publish %s %s: %s", envelope.type, envelope.id, error)
            raise BusUnavailableError() from error
        self._runtime.counters.count_published(envelope.type)
        await self._health.succeeded(mark)

    async def _xadd(self, stream: str, envelope: Envelope) -> None:
        await self._runtime.client.xadd(
            stream,
            {"envelope": envelope.SerializeToString()},
            maxlen=self._runtime.settings.maxlen,
            approximate=True,
        )

    async def start(self) -> None:
        """Start one worker per group. An unreachable Redis is reported, not raised:
        the workers keep trying and health turns SERVING once they get through."""
        self._running = True
        self._stopped = False
        await self._health.check()
        for worker in self._workers.values():
            worker.start()

    async def stop(self, grace: float) -> None:
        """Stop reading; let running handlers finish for up to ``grace`` seconds.

        Handlers still running then are cancelled, and their entries are not
        acknowledged. What this process read but did not finish is handed back to the
        group at once (made claimable by the other consumers' next XAUTOCLAIM): nothing
        is lost, it waits in Redis for the next consumer. Stopping twice is harmless.
        """
        if self._stopped:
            return
        self._running = False
        self._stopped = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.begin_stop()
        tasks = [worker.task for worker in workers if worker.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            await cancel_and_wait(list(late))
        for worker in workers:
            await worker.stop_heartbeat()
        try:
            async with asyncio.timeout(_RELEASE_SECONDS):
                for worker in workers:
                    await worker.release()
        except (RedisError, OSError, TimeoutError) as error:
            _log.warning(
                "could not hand unfinished events back (%s): other consumers take them "
                "over after %.0fs",
                error,
                self._runtime.settings.claim_idle,
            )
        await self._health.close()
        await self._runtime.client.aclose()
        await self._runtime.reader.aclose()

    def dead_letters(self) -> list[DeadLetter]:
        """Events **this process** set aside since it started (the last 1000), oldest
        first. Every process's, as stored in Redis: :meth:`list_dead_letters`."""
        return list(self._dead)

    # -- health ------------------------------------------------------------------------

    def healthy(self) -> bool:
        """False while Redis cannot be reached."""
        return self._health.healthy

    def on_health(self, callback: HealthCallback) -> None:
        """Call ``await callback(healthy)`` on every change of :meth:`healthy`."""
        self._health.on_change(callback)

    def _record_dead(self, dead: DeadLetter) -> None:
        self._dead.append(dead)

    # -- operations --------------------------------------------------------------------

    def groups(self) -> dict[str, frozenset[str]]:
        """Consumer groups subscribed in this process, with the event types each consumes."""
        return {name: frozenset(worker.handlers) for name, worker in self._workers.items()}

    async def list_dead_letters(
        self, group: str | None = None, count: int = 100, *, after: tuple[str, str] | None = None
    ) -> list[RedisDeadLetter]:
        """The oldest ``count`` dead letters in Redis, of ``group`` or of every group.

        Ordered by entry id, then group; ``after`` (group, entry id) continues after that
        dead letter (pages).
        """
        if after is not None and not valid_id(after[1]):
            raise ValueError(f"{after[1]!r} is not a stream entry id")
        keys = self._runtime.keys
        client = self._runtime.client
        # Inclusive start: another group's dead letter may share the id.
        start = after[1] if after is not None else "-"
        try:
            if group is not None:
                streams = [keys.dead(group)]
            else:
                streams = [
                    text(key)
                    async for key in client.scan_iter(match=keys.dead_pattern(), _type="STREAM")
                ]
            found: list[RedisDeadLetter] = []
            for stream in streams:
                entries: Any = await client.xrange(stream, start, count=count + 1)
                found.extend(_dead_letter(keys.group_of_dead(stream), i, f) for i, f in entries)
        except (RedisError, OSError) as error:
            raise BusUnavailableError() from error
        found.sort(key=_listing_order)
        if after is not None:
            last = _listing_order_of(after[0], after[1])
            found = [dead for dead in found if _listing_order(dead) > last]
        return found[:count]

    async def redrive(self, group: str, entry_id: str) -> None:
        """Deliver dead letter ``entry_id`` (its id in the dead stream) to ``group`` again.

        It moves to the group's retry stream, which only that group reads: the other
        groups, which handled the event, do not get it twice. Fix the handler first.
        """
        if not valid_id(entry_id):
            raise ValueError(f"{entry_id!r} is not a stream entry id")
        keys = self._runtime.keys
        try:
            moved = await REDRIVE(
                self._runtime.client,
                [keys.dead(group), keys.retry(group)],
                [entry_id, group, self._runtime.settings.maxlen],
            )
        except (RedisError, OSError) as error:
            raise BusUnavailableError() from error
        if not moved:
            raise NotFoundError("dead letter", f"{group}/{entry_id}")
        _log.info("dead letter %s redriven to %s", entry_id, group)

    async def stats(self) -> list[GroupStats]:
        """Per group subscribed here: pending (XPENDING) and lag per event type stream,
        totals with the group's retry stream, and the length of its dead-letter stream."""
        keys = self._runtime.keys
        found = []
        try:
            for name in sorted(self._workers):
                types = []
                for event_type in sorted(self._workers[name].handlers):
                    pending, lag = await self._backlog(keys.events(event_type), name)
                    types.append(TypeStats(event_type, pending, lag))
                retry_pending, retry_lag = await self._backlog(keys.retry(name), name)
                dead = int(await self._runtime.client.xlen(keys.dead(name)))
                found.append(
                    GroupStats(
                        name,
                        pending=retry_pending + sum(t.pending for t in types),
                        lag=retry_lag + sum(t.lag for t in types),
                        dead_letters=dead,
                        types=tuple(types),
                    )
                )
        except (RedisError, OSError) as error:
            raise BusUnavailableError() from error
        return found

    async def _backlog(self, stream: str, group: str) -> tuple[int, int]:
        """(pending, lag) of ``group`` on ``stream``; zeros when neither exists yet."""
        client = self._runtime.client
        try:
            groups: list[dict[str, Any]] = await client.xinfo_groups(stream)
        except RedisError as error:
            if is_unreachable(error):
                raise
            return 0, 0  # no such stream yet
        for info in groups:
            if text(info["name"]) != group:
                continue
            lag = info.get("lag")
            if lag is None:  # unknown after deletions or a replay: count it
                after: Any = await client.xrange(
                    stream,
                    "(" + text(info["last-delivered-id"]),
                    "+",
                    count=_LAG_COUNT_LIMIT,
                )
                lag = len(after)
            return int(info["pending"]), int(lag)
        return 0, 0

    async def replay(
        self,
        group: str,
        event_type: str,
        *,
        since_id: str | None = None,
        since_time: float | None = None,
        since_event_id: str | None = None,
    ) -> str:
        """Make ``group`` handle ``event_type`` events again from stream entry
        ``since_id`` (included), from Unix time ``since_time``, or from the event whose
        envelope id is ``since_event_id`` (included; NotFoundError when the stream no
        longer holds it); from the oldest kept when none is given. Returns the entry id
        the group now reads after ("0": before the oldest kept).

        Only ``group`` re-reads them (XGROUP SETID); its handlers must be idempotent,
        as for any at-least-once delivery. The group's workers pick them up within
        ``block`` seconds. The group is only ever moved back: a start after its
        position leaves it there (what follows is not read yet, and moving it on would
        skip that). Entries read but not acknowledged yet are delivered again too,
        to whichever consumer reads them (Redis reassigns them, attempts from 1); a
        handler already running on one finishes and acknowledges as usual.
        """
        if sum(start is not None for start in (since_id, since_time, since_event_id)) > 1:
            raise ValueError("replay from one of since_id, since_time, since_event_id")
        stream = self._runtime.keys.events(event_type)
        if since_id is not None:
            if not valid_id(since_id):
                raise ValueError(f"{since_id!r} is not a stream entry id")
            start = id_before(since_id)
        elif since_time is not None:
            start = id_before(time_to_id(since_time))
        elif since_event_id is not None:
            start = id_before(await self._entry_of_event(stream, since_event_id))
        else:
            start = "0-0"
        try:
            position = text(await REPLAY(self._runtime.client, [stream], [group, start]))
        except (RedisError, OSError) as error:
            raise BusUnavailableError() from error
        if position == start:
            _log.info("replaying %s to %s from after %s", event_type, group, position)
        else:  # the group had not got that far: it reads on from where it is
            _log.info("replay of %s to %s: nothing read after %s yet", event_type, group, start)
        return "0" if position == "0-0" else position

    async def _entry_of_event(self, stream: str, event_id: str) -> str:
        """The entry id of the event ``event_id`` in ``stream``: its oldest copy, when the
        outbox relayed it twice. Searched newest first (replays usually reach back a
        little), one page at a time so Redis never blocks on a long stream, and no
        further back than the event's own time (less ``_CLOCK_SKEW`` for the clocks of
        the publishing host and Redis): no copy can be older."""
        if not event_id:
            raise ValueError("the event id is empty")
        needle = event_id.encode()
        found: str | None = None
        oldest_possible = 0  # stream milliseconds, known once a copy is found
        end = "+"
        try:
            while True:
                page: Any = await self._runtime.client.xrevrange(
                    stream, max=end, min="-", count=_EVENT_SEARCH_PAGE
                )
                for entry_id, fields in page:
                    entry = text(entry_id)
                    if found is not None and _milliseconds(entry) < oldest_possible:
                        return found
                    data = fields.get(b"envelope", b"")
                    if needle not in data:
                        continue
                    envelope = _parsed(data)
                    if envelope is not None and envelope.id == event_id:
                        found = entry
                        sealed = envelope.time.ToMilliseconds()
                        oldest_possible = sealed - round(_CLOCK_SKEW * 1000)
                if len(page) < _EVENT_SEARCH_PAGE:
                    if found is None:
                        raise NotFoundError("event", event_id)
                    return found
                end = f"({text(page[-1][0])}"  # exclusive: after the page just read
        except (RedisError, OSError) as error:
            raise BusUnavailableError() from error


def _parsed(data: bytes) -> Envelope | None:
    """A serialized envelope; None when it does not parse."""
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError:
        return None
    return envelope


def _milliseconds(entry_id: str) -> int:
    """The time part of a stream entry id."""
    return int(entry_id.partition("-")[0])


def _listing_order_of(group: str, entry_id: str) -> tuple[int, int, str]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0), group


def _listing_order(dead: RedisDeadLetter) -> tuple[int, int, str]:
    return _listing_order_of(dead.group, dead.id)


def _dead_letter(group: str, entry_id: bytes | str, fields: dict[bytes, bytes]) -> RedisDeadLetter:
    """A dead-letter stream entry, whatever state it is in: one damaged entry must not
    make the others unlistable. Its group is the stream's, which redrive acts on."""
    envelope = Envelope()
    with contextlib.suppress(DecodeError):
        envelope = Envelope.FromString(fields.get(b"envelope", b""))
    attempts = fields.get(b"attempts", b"")
    return RedisDeadLetter(
        envelope=envelope,
        group=group,
        # int32 in the admin API
        attempts=int(attempts) if attempts.isdigit() and int(attempts) < 2**31 else 0,
        error=_lenient(fields.get(b"error", b"")),
        id=text(entry_id),
        stream=_lenient(fields.get(b"stream", b"")),
        entry_id=_lenient(fields.get(b"entry", b"")),
    )


def _lenient(value: bytes) -> str:
    return value.decode(errors="replace")


if TYPE_CHECKING:  # the protocol stays satisfied (nothing else checks it statically)

    def _operable(bus: RedisBus) -> EventOperations:
        return bus
