"""One consumer group's worker on Redis Streams: read, claim, handle, acknowledge.

The worker of a group reads every stream the group consumes (plus its retry stream)
with one blocking XREADGROUP, and handles entries one at a time in the order read, so
a stream's entries are handled in stream order by one consumer. An entry is
acknowledged only after its handler returned; until then it stays pending in Redis
for this consumer, which is what lets another consumer take it over when this one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message
from redis.exceptions import RedisError
from redis.typing import StreamIdT

from nexus_grpc.errors import is_infrastructure_failure
from nexus_grpc.events._redis_health import RECONNECT_MAX, RECONNECT_MIN
from nexus_grpc.events._redis_runtime import Runtime, cancel_and_wait
from nexus_grpc.events._redis_streams import (
    ACK,
    DEAD,
    FORGET,
    TOUCH,
    is_busy_group,
    is_no_group,
    is_unreachable,
    text,
)
from nexus_grpc.events.bus import (
    DEAD_LETTER,
    OK,
    RETRY,
    UNAVAILABLE,
    DeadLetter,
    Delivery,
    Handler,
)
from nexus_grpc.events.envelope import Envelope, open_envelope
from nexus_grpc.logs import request_id_var

__all__ = ["GroupWorker"]

_log = logging.getLogger("nexus.events")

#: Metric label of a dead letter that is of no type the group consumes, from no stream
#: of such a type either (a redriven entry of a type the plugin no longer handles).
_UNKNOWN_TYPE = "unknown"
#: Idle time given to entries this consumer lets go of when it stops: far past any
#: sane ``claim_idle``, so a live consumer of the group takes them over at once.
_RELEASE_IDLE_MS = 7 * 24 * 3600 * 1000


@dataclass
class _Dead:
    error: str
    attempts: int


@dataclass(eq=False)
class _Entry:
    """An entry read or claimed by this consumer, pending for it until finished."""

    stream: str
    id: str
    fields: dict[bytes, bytes] | None
    #: Redis's delivery count: the attempt number of the next handler run.
    count: int
    started: bool = False
    #: Another consumer took it over; it is theirs to finish now.
    lost: bool = False
    #: "ack" once the handler returned, or why it goes to the dead letters; kept so a
    #: Redis outage between handling and acknowledging does not run the handler again.
    outcome: str | _Dead | None = None


@dataclass(eq=False)
class GroupWorker:
    """The worker task (and its heartbeat) of one consumer group."""

    name: str
    runtime: Runtime
    handlers: dict[str, Handler] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    _heartbeat: asyncio.Task[None] | None = None
    #: Streams whose group was created (or found) at least once by this worker.
    _ensured: set[str] = field(default_factory=set)
    #: Groups must be (re)created before reading: new subscription, reconnection.
    _dirty: bool = True
    _backlog: deque[_Entry] = field(default_factory=deque)
    _cursors: dict[str, str] = field(default_factory=dict)
    _next_claim: float = 0.0
    _reading: bool = False
    _beating: bool = False
    #: Health when the current step started (see Health.mark).
    _mark: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    # -- lifecycle ---------------------------------------------------------------------

    def add(self, event_type: str, handler: Handler) -> None:
        """Handle ``event_type`` with ``handler``; its stream is joined on the next read."""
        if event_type in self.handlers:
            raise ValueError(f"group {self.name!r} has two handlers for {event_type}")
        self.handlers[event_type] = handler
        self._dirty = True

    def streams(self) -> list[str]:
        """Every stream the group reads: one per event type, then its retry stream."""
        keys = self.runtime.keys
        return [keys.events(t) for t in self.handlers] + [keys.retry(self.name)]

    def start(self) -> None:
        """Start reading and handling."""
        self._stopping.clear()
        if self.task is None:
            # Fresh contexts: a worker started during a call must not carry its trace.
            self.task = asyncio.create_task(
                self._run(), name=f"nexus-events-{self.name}", context=contextvars.Context()
            )
        if self._heartbeat is None:
            self._beating = True
            self._heartbeat = asyncio.create_task(
                self._keep_alive(),
                name=f"nexus-events-{self.name}-heartbeat",
                context=contextvars.Context(),
            )

    def begin_stop(self) -> None:
        """Read nothing more; a blocking read is abandoned, a running handler finishes."""
        self._stopping.set()
        if self._reading and self.task is not None:
            # Entries a cancelled read had already taken are pending for this consumer
            # and are released with the rest (see release), so nothing is lost.
            self.task.cancel()

    async def stop_heartbeat(self) -> None:
        """Stop keeping entries; call once the worker task is done."""
        self._beating = False
        if self._heartbeat is not None:
            await cancel_and_wait([self._heartbeat])
            self._heartbeat = None
        self.task = None

    async def release(self) -> None:
        """Let other consumers take over at once what this one holds but did not finish.

        Redis has no "un-read": the entries stay pending, for this consumer, but with
        an idle time so large that any live consumer's next claim takes them. Entries
        never started get their delivery count back, so the attempt is not counted.
        """
        if not self._ensured:
            return  # never got to Redis: holds nothing (and stop() need not wait on it)
        client, consumer = self.runtime.client, self.runtime.consumer
        for entry in self._backlog:
            if not entry.started and not entry.lost and entry.outcome is None:
                await client.xclaim(
                    entry.stream, self.name, consumer, 0, [entry.id],
                    idle=_RELEASE_IDLE_MS, retrycount=max(entry.count - 1, 0), justid=True,
                )  # fmt: skip
        self._backlog.clear()
        for stream in self.streams():
            with contextlib.suppress(RedisError):  # NOGROUP: nothing of ours there
                pending: Any = await client.xpending_range(
                    stream, self.name, "-", "+", 10_000, consumername=consumer
                )
                ids: list[StreamIdT] = [text(item["message_id"]) for item in pending]
                if ids:
                    await client.xclaim(
                        stream, self.name, consumer, 0, ids, idle=_RELEASE_IDLE_MS, justid=True
                    )
                    _log.info(
                        "released %d unfinished events of %s on %s to the other consumers",
                        len(ids),
                        self.name,
                        stream,
                    )
                await FORGET(client, [stream], [self.name, consumer])

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        failures = 0  # in a row, of any kind: only the first is logged
        unreachable = 0  # in a row
        while not self._stopping.is_set():
            try:
                await self._step()
                delay = RECONNECT_MIN
                failures = unreachable = 0
                continue
            except (RedisError, OSError) as error:
                if self._stopping.is_set():
                    break  # a read abandoned by stop(), not an outage
                failures += 1
                unreachable = unreachable + 1 if is_unreachable(error) else 0
                if is_no_group(error):
                    # The group vanished under us (key deleted, Redis restarted without
                    # persistence): create it again before the next read.
                    _log.warning("consumer group %s is gone, recreating it: %s", self.name, error)
                    self._dirty = True
                elif is_unreachable(error):
                    self._dirty = True
                    # One failure may be a pooled connection Redis closed while idle
                    # (it restarted): only a second one in a row is an outage.
                    if unreachable > 1:
                        await self.runtime.health.failed(error, self._mark)
                elif failures == 1:  # the same refusal every second is noise
                    _log.error("event worker of %s: Redis refused: %s", self.name, error)
            except Exception:  # a bug here must not end delivery for the group
                failures += 1
                if failures == 1:
                    _log.exception("event worker of %s failed; going on", self.name)
            await self._pause(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _step(self) -> None:
        self._mark = mark = self.runtime.health.mark()
        if self._dirty:
            await self._ensure_groups()
        if not self._backlog and time.monotonic() >= self._next_claim:
            await self._claim_abandoned()
        if not self._backlog:
            await self._read()
        await self.runtime.health.succeeded(mark)
        while self._backlog and not self._stopping.is_set():
            if not await self._process(self._backlog[0]):
                return  # stopping: what is left is released
            self._backlog.popleft()

    async def _ensure_groups(self) -> None:
        client = self.runtime.client
        for stream in self.streams():
            # A new group starts at "$": a plugin added later gets the events published
            # from then on (replay() reaches back). A group this worker had seen before
            # that is missing now was lost with Redis's data: it restarts at "0", so the
            # events published since the loss are not skipped. A retry stream holds
            # only what was redriven to the group, so it is always read from the start.
            start = "0" if stream in self._ensured or stream == self._retry_stream else "$"
            try:
                await client.xgroup_create(stream, self.name, id=start, mkstream=True)
            except RedisError as error:
                if not is_busy_group(error):
                    raise
            self._ensured.add(stream)
        self._dirty = False

    @property
    def _retry_stream(self) -> str:
        return self.runtime.keys.retry(self.name)

    async def _read(self) -> None:
        if self._stopping.is_set():
            return
        settings = self.runtime.settings
        # A bounded block: the loop comes round to claim abandoned entries and to join
        # newly subscribed streams at least this often.
        block_ms = max(int(min(settings.block, settings.claim_idle / 2) * 1000), 1)
        self._reading = True
        try:
            reply: Any = await self.runtime.reader.xreadgroup(
                self.name,
                self.runtime.consumer,
                dict.fromkeys(self.streams(), ">"),
                count=settings.batch,
                block=block_ms,
            )
        finally:
            self._reading = False
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                self._backlog.append(_Entry(text(stream), text(entry_id), fields, 1))

    async def _claim_abandoned(self) -> None:
        """Take over entries another consumer read and left unacknowledged too long."""
        runtime = self.runtime
        settings = runtime.settings
        self._next_claim = time.monotonic() + settings.claim_idle / 2
        for stream in self.streams():
            reply: Any = await runtime.client.xautoclaim(
                stream,
                self.name,
                runtime.consumer,
                int(settings.claim_idle * 1000),
                self._cursors.get(stream, "0-0"),
                count=settings.batch,
            )
            self._cursors[stream] = text(reply[0])
            if len(reply) > 2 and reply[2]:
                _log.error(
                    "%d pending events of %s on %s were trimmed or deleted before being "
                    "handled: raise the stream maxlen",
                    len(reply[2]),
                    self.name,
                    stream,
                )
            # Redis < 7 returns entries deleted while pending with no fields, and keeps them.
            gone = [i for i, fields in reply[1] if fields is None]
            if gone:
                await runtime.client.xack(stream, self.name, *gone)
            claimed = [(text(i), fields) for i, fields in reply[1] if fields is not None]
            if not claimed:
                continue
            # XAUTOCLAIM counted a delivery but does not say how many there were.
            counts = await TOUCH(
                runtime.client, [stream], [self.name, runtime.consumer, 0, *(i for i, _ in claimed)]
            )
            for (entry_id, fields), count in zip(claimed, counts, strict=True):
                if count >= 0:
                    self._backlog.append(_Entry(stream, entry_id, fields, int(count)))
            _log.warning(
                "took over %d events of %s on %s from a consumer that stopped handling them",
                len(claimed),
                self.name,
                stream,
            )

    async def _keep_alive(self) -> None:
        """Reset the idle time of held entries so live work is never taken over."""
        runtime = self.runtime
        # Beats on while stop() waits for a running handler (its entry must stay this
        # consumer's); checks a flag as well as being cancelled, as a cancellation
        # can get lost in a Redis call (see cancel_and_wait).
        while self._beating:
            await asyncio.sleep(runtime.settings.claim_idle / 3)
            held: dict[str, list[_Entry]] = {}
            for entry in self._backlog:
                if not entry.lost:
                    held.setdefault(entry.stream, []).append(entry)
            for stream, entries in held.items():
                try:
                    counts = await TOUCH(
                        runtime.client,
                        [stream],
                        [self.name, runtime.consumer, 0, *(e.id for e in entries)],
                    )
                except (RedisError, OSError) as error:  # the worker reports outages
                    _log.debug("heartbeat of %s failed: %s", self.name, error)
                    break
                for entry, count in zip(entries, counts, strict=True):
                    # -1 also for entries finished meanwhile; harmless, they left the backlog.
                    if count < 0:
                        entry.lost = True

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopping first; whether stopping."""
        # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    # -- one entry ---------------------------------------------------------------------

    async def _process(self, entry: _Entry) -> bool:
        """Handle, then acknowledge or dead-letter ``entry``; False if stopping first."""
        if entry.lost:
            _log.info("event %s on %s was taken over by another consumer", entry.id, entry.stream)
            return True
        if entry.fields is None:  # deleted while pending: nothing to handle
            await self.runtime.client.xack(entry.stream, self.name, entry.id)
            return True
        if entry.outcome is None:
            entry.outcome = await self._attempt(entry, entry.fields)
            if entry.outcome is None:
                return entry.lost
        if entry.outcome == "ack":
            if entry.stream == self._retry_stream:  # a redriven entry: read once, then gone
                await ACK(self.runtime.client, [entry.stream], [self.name, entry.id, 1])
            else:  # a plain XACK costs Redis a fifth of the script
                await self.runtime.client.xack(entry.stream, self.name, entry.id)
        elif isinstance(entry.outcome, _Dead):
            await self._dead_letter(entry, entry.fields, entry.outcome)
        return True

    async def _attempt(self, entry: _Entry, fields: dict[bytes, bytes]) -> str | _Dead | None:
        """Run the handler until it succeeds or attempts run out; None when abandoned."""
        settings = self.runtime.settings
        try:
            envelope = Envelope.FromString(fields.get(b"envelope", b""))
            event: Message = open_envelope(envelope)
        except (DecodeError, KeyError, ValueError) as error:  # will never get better
            return _Dead(f"unreadable entry: {type(error).__name__}: {error}", entry.count)
        handler = self.handlers.get(envelope.type)
        if handler is None:
            return _Dead(f"group {self.name!r} has no handler for {envelope.type!r}", 0)
        if entry.count > settings.max_attempts:
            # Delivered that often without an acknowledgement: the consumers handling
            # it died each time (a poison event that crashes processes ends here too).
            return _Dead(
                f"delivered {entry.count - 1} times without an acknowledgement "
                "(the consumers handling it stopped or crashed)",
                entry.count - 1,
            )
        outages = 0  # runs failed on an outage: not attempts
        while True:
            entry.started = True
            token = request_id_var.set(envelope.correlation_id)
            attempts = 1  # what this run adds to the delivery count
            try:
                await handler(event, Delivery(envelope, self.name, entry.count))
                self.runtime.counters.count_handled(self.name, envelope.type, OK)
                return "ack"
            except Exception as error:  # the plugin's failure: retried, then set aside
                reason = f"{type(error).__name__}: {error}"
                if is_infrastructure_failure(error):
                    # Storage or bus down: neither the event's nor the handler's fault.
                    # Retried until it is back, without counting toward the dead letters.
                    outages += 1
                    attempts = 0
                    self.runtime.counters.count_handled(self.name, envelope.type, UNAVAILABLE)
                    delay = min(settings.backoff * 2 ** (outages - 1), settings.max_backoff)
                    if outages == 1:
                        _log.warning(
                            "event %s (%s) waits in %s until the outage ends (%s); "
                            "not counted as an attempt",
                            envelope.id, envelope.type, self.name, reason,
                        )  # fmt: skip
                elif entry.count >= settings.max_attempts:
                    _log.error(
                        "event %s (%s) dead-lettered for %s after %d attempts",
                        envelope.id, envelope.type, self.name, entry.count, exc_info=True,
                    )  # fmt: skip
                    return _Dead(reason, entry.count)
                else:
                    self.runtime.counters.count_handled(self.name, envelope.type, RETRY)
                    delay = min(settings.backoff * 2 ** (entry.count - 1), settings.max_backoff)
                    _log.warning(
                        "event %s (%s) failed in %s (attempt %d), retrying in %.2fs: %s",
                        envelope.id, envelope.type, self.name, entry.count, delay, reason,
                    )  # fmt: skip
            finally:
                request_id_var.reset(token)
            if await self._pause(delay) or entry.lost:
                return None
            # Count the attempt in Redis, so a consumer taking over knows how many ran
            # (an outage adds none, but the touch still keeps the entry ours).
            [count] = await TOUCH(
                self.runtime.client,
                [entry.stream],
                [self.name, self.runtime.consumer, attempts, entry.id],
            )
            if count < 0:
                entry.lost = True
                return None
            entry.count = int(count)

    async def _dead_letter(self, entry: _Entry, fields: dict[bytes, bytes], dead: _Dead) -> None:
        runtime = self.runtime
        retried = entry.stream == self._retry_stream
        # A redriven entry keeps pointing at where the event first came from.
        origin = text(fields[b"stream"]) if retried and b"stream" in fields else entry.stream
        origin_id = text(fields[b"entry"]) if retried and b"entry" in fields else entry.id
        envelope_bytes = fields.get(b"envelope", b"")
        record: list[str | int | bytes] = [
            b"envelope", envelope_bytes,
            b"group", self.name,
            b"attempts", dead.attempts,
            b"error", dead.error,
            b"stream", origin,
            b"entry", origin_id,
        ]  # fmt: skip
        moved = await DEAD(
            runtime.client,
            [entry.stream, runtime.keys.dead(self.name)],
            [self.name, runtime.consumer, entry.id, runtime.settings.maxlen, int(retried), *record],
        )
        if not moved:
            _log.info("event %s on %s was taken over before being set aside", entry.id, origin)
            return
        envelope = Envelope()
        with contextlib.suppress(DecodeError):
            envelope = Envelope.FromString(envelope_bytes)
            runtime.record_dead(DeadLetter(envelope, self.name, dead.attempts, dead.error))
        runtime.counters.count_handled(self.name, self._label(envelope.type, origin), DEAD_LETTER)

    def _label(self, event_type: str, stream: str) -> str:
        """The metric label of an entry of ``stream``: always a type the group consumes,
        so stray entries (another version's, a hand-made one) add no labels of their own."""
        if event_type in self.handlers:
            return event_type
        keys = self.runtime.keys
        return next((t for t in self.handlers if keys.events(t) == stream), _UNKNOWN_TYPE)
