"""The subscription to the invalidation channel, and what it tells the cache.

One task per manager holds a pub/sub connection subscribed to the channel. Each
message is a full key some process wrote or deleted: ``on_key(key)``. The cache may
only trust its L1 while the subscription is up, so the listener reports
``on_up()`` when the subscription is confirmed (messages from then on reach us) and
``on_down()`` as soon as the connection fails. Messages published meanwhile are lost
for good (pub/sub keeps nothing), which is why the cache clears its L1 on both.

A connection can also die silently (a peer that vanished without a reset): when the
channel has been quiet for ``ping_interval`` seconds the listener sends a PING, and
treats ``3 * ping_interval`` seconds without any reply as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

__all__ = ["RECONNECT_MAX", "RECONNECT_MIN", "InvalidationListener"]

_log = logging.getLogger("nexus.cache")

#: How often stop() cancels again a listener that is still running.
_STOP_RECHECK = 0.5

#: First and longest pause between attempts to subscribe again.
RECONNECT_MIN = 0.05
RECONNECT_MAX = 1.0


class InvalidationListener:
    """Listens on ``channel`` until stopped, resubscribing after failures."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        *,
        on_key: Callable[[str], None],
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        on_idle: Callable[[], Awaitable[None]],
        ping_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_key = on_key
        self._on_up = on_up
        self._on_down = on_down
        self._on_idle = on_idle
        self._interval = ping_interval
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._warned = False
        self._stopping = False

    @property
    def subscribed(self) -> bool:
        """Whether the subscription is confirmed and the connection not known broken."""
        return self._subscribed.is_set()

    def start(self) -> None:
        """Start listening (in a task of the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"cache-listener:{self._channel}")

    async def wait_subscribed(self) -> None:
        """Return once subscribed (wrap it in a timeout)."""
        await self._subscribed.wait()

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            # A cancellation that lands as one of redis-py's read timeouts expires can
            # be swallowed (it becomes the timeout): the loop then ran on and stop()
            # waited for ever. The flag ends the loop; cancel again until it is done.
            while not task.done():
                await asyncio.wait({task}, timeout=_STOP_RECHECK)
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscribed.clear()

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while not self._stopping:
            pubsub = self._client.pubsub()
            try:
                await self._listen(pubsub)
            except Exception as error:
                # Whatever ended the subscription (a bug included), messages may be
                # lost from now on: L1 must not be trusted until we are back.
                if self._subscribed.is_set():
                    self._subscribed.clear()
                    self._on_down()
                    delay = RECONNECT_MIN
                if not isinstance(error, RedisError | OSError):
                    _log.exception("cache: invalidation listener failed")
                elif not self._warned:
                    # Once per outage; the attempts to come back stay quiet.
                    self._warned = True
                    _log.warning(
                        "cache: invalidation channel %s lost (%s: %s); the in-process "
                        "cache is bypassed until it is back",
                        self._channel,
                        type(error).__name__,
                        error,
                    )
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        await pubsub.subscribe(self._channel)
        last_heard = loop.time()
        # -inf: housekeeping runs right after (re)subscribing, when Redis has just
        # shown it answers again and repairs are most likely owed.
        last_idle = -math.inf
        while not self._stopping:
            message = await pubsub.get_message(timeout=self._interval)
            now = loop.time()
            if message is not None:
                last_heard = now
                kind = message["type"]
                if kind == "message":
                    data = message["data"]
                    # Anyone may publish here; a key that is not ours drops nothing.
                    key = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                    self._on_key(key)
                elif kind == "subscribe":
                    self._subscribed.set()
                    if self._warned:
                        self._warned = False
                        _log.info("cache: invalidation channel %s is back", self._channel)
                    self._on_up()
            elif now - last_heard >= 3 * self._interval:
                raise RedisConnectionError(f"no reply to PING in {now - last_heard:.1f} s")
            else:
                await pubsub.ping()
            # Repairs and other housekeeping, at most once an interval even when the
            # channel is busy (it may never be quiet).
            if self._subscribed.is_set() and now - last_idle >= self._interval:
                last_idle = now
                try:
                    await self._on_idle()
                except Exception:  # a bug there must not end invalidation
                    _log.exception("cache: housekeeping failed")
