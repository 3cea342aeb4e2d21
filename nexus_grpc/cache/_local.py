"""The in-process layer (L1): a bounded LRU map of bytes with a deadline per entry.

Besides plain get/put/drop it guards *fills*: a value read from Redis is stored here
only if no invalidation of its key (and no :meth:`LocalCache.clear`) happened while it
was being read. Without that guard, a read that Redis answered just before another
process's write, but whose reply was processed after that write's invalidation
message, would put the old value here after the message had been handled, and it
would stay for a whole L1 lifetime.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Clock", "FillTicket", "LocalCache"]

#: Seconds from an arbitrary origin that never go back (``time.monotonic``).
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class FillTicket:
    """Taken before reading a key from Redis; handed back with what was read."""

    key: str
    epoch: int
    version: int


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires: float


@dataclass(slots=True)
class _Fills:
    # Fills of one key in progress, and how often the key was invalidated meanwhile.
    # Kept only while a fill is in progress, so this map stays as small as the number
    # of concurrent reads, however many keys are invalidated.
    readers: int = 0
    version: int = 0


class LocalCache:
    """At most ``max_entries`` entries, least recently used evicted first.

    Expired entries are dropped when read, or evicted as the least recently used:
    there is no sweeper task, and the bound holds either way.
    """

    def __init__(self, max_entries: int, clock: Clock) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._fills: dict[str, _Fills] = {}
        # Bumped by clear(): every fill begun before is void.
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        """The live value of ``key``, or None (marks it most recently used)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds, evicting the least recently used."""
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = _Entry(value, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        """Forget ``key``, and void the fills of it in progress."""
        self._entries.pop(key, None)
        fills = self._fills.get(key)
        if fills is not None:
            fills.version += 1

    def clear(self) -> None:
        """Forget everything, and void every fill in progress."""
        self._entries.clear()
        self._epoch += 1

    def begin_fill(self, key: str) -> FillTicket:
        """Call before reading ``key`` elsewhere; always pass the ticket to end_fill."""
        fills = self._fills.get(key)
        if fills is None:
            fills = self._fills[key] = _Fills()
        fills.readers += 1
        return FillTicket(key, self._epoch, fills.version)

    def end_fill(self, ticket: FillTicket, value: bytes | None, ttl: float) -> bool:
        """Store ``value`` (None: nothing was read) unless the ticket was voided.

        Returns whether it was stored.
        """
        fills = self._fills[ticket.key]
        fills.readers -= 1
        if fills.readers == 0:
            del self._fills[ticket.key]
        if value is None or ticket.epoch != self._epoch or ticket.version != fills.version:
            return False
        self.put(ticket.key, value, ttl)
        return True
