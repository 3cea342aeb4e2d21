"""What the Redis event bus's group workers share, and stopping their tasks reliably."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from nexus_grpc.events._redis_health import Health
from nexus_grpc.events._redis_streams import Keys
from nexus_grpc.events.bus import DeadLetter, EventCounters

__all__ = ["Runtime", "Settings", "cancel_and_wait"]

_log = logging.getLogger("nexus.events")


async def cancel_and_wait(tasks: list[asyncio.Task[None]], patience: float = 2.0) -> None:
    """Cancel ``tasks`` and wait for them to end, cancelling again while they run on.

    Once is not always enough: a cancellation that arrives just as an inner
    ``wait_for`` completes is lost in Python 3.11 (redis-py uses one when writing).
    After ``patience`` seconds the tasks are left behind (logged), so a shutdown
    never hangs on them.
    """
    deadline = time.monotonic() + patience
    running = [task for task in tasks if not task.done()]
    while running:
        if time.monotonic() > deadline:
            _log.error("%d event bus tasks would not stop; leaving them", len(running))
            return
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=0.1)
        running = [task for task in running if not task.done()]
    for task in tasks:  # retrieve outcomes so none is reported as never retrieved
        if not task.cancelled():
            task.exception()


@dataclass(frozen=True)
class Settings:
    """How the bus delivers; see :class:`nexus_grpc.events.redis_bus.RedisBus`."""

    max_attempts: int
    backoff: float
    max_backoff: float
    claim_idle: float
    maxlen: int
    block: float
    batch: int


@dataclass
class Runtime:
    """What every group worker of one bus shares."""

    settings: Settings
    keys: Keys
    #: Commands: short timeouts.
    client: aioredis.Redis
    #: Blocking reads only: a socket timeout longer than the block time.
    reader: aioredis.Redis
    consumer: str
    health: Health
    record_dead: Callable[[DeadLetter], None]
    #: Publishing and handling counts of this process, for /metrics.
    counters: EventCounters = field(default_factory=EventCounters)
