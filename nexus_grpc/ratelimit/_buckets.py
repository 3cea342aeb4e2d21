"""Token buckets: the classes, the backend protocol and the in-memory backend."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = ["Buckets", "Decision", "MemoryBuckets", "RateClass", "parse_rate_classes"]


@dataclass(frozen=True)
class RateClass:
    """A named limit: ``rate`` tokens added per second to a bucket holding ``burst``.

    A caller may make ``burst`` calls at once, then ``rate`` calls per second.
    """

    name: str
    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate class {self.name!r}: rate must be > 0 tokens per second")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"rate class {self.name!r}: burst must be >= 1")

    @property
    def refill_seconds(self) -> float:
        """Time an empty bucket takes to fill up again."""
        return self.burst / self.rate


def parse_rate_classes(
    classes: Mapping[str, RateClass | Mapping[str, float]],
) -> dict[str, RateClass]:
    """Classes by name, from ``RateClass`` values or ``{"rate": r, "burst": b}`` tables.

    The tables are the ``limits.rate_classes`` configuration.
    """
    parsed: dict[str, RateClass] = {}
    for name, spec in classes.items():
        if isinstance(spec, RateClass):
            if spec.name != name:
                raise ValueError(f"rate class {spec.name!r} is configured as {name!r}")
            parsed[name] = spec
            continue
        unknown = set(spec) - {"rate", "burst"}
        if unknown or "rate" not in spec or "burst" not in spec:
            raise ValueError(f"rate class {name!r}: expected rate and burst, got {sorted(spec)}")
        parsed[name] = RateClass(name, float(spec["rate"]), float(spec["burst"]))
    return parsed


class Decision(NamedTuple):
    """What a bucket said to one call."""

    allowed: bool
    #: Tokens left after this call (after refilling, before it when denied).
    remaining: float
    #: Seconds until the call would be allowed; 0 when it is.
    retry_after: float


_new_tuple = tuple.__new__


class Buckets(Protocol):
    """Where token buckets live: this process, or a store shared by every instance."""

    async def take(self, rate_class: RateClass, key: str, cost: float = 1.0) -> Decision:
        """Refill ``key``'s bucket of ``rate_class`` and take ``cost`` tokens if it has them."""
        ...


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class MemoryBuckets:
    """Token buckets in a dict: one process, no I/O.

    Size is bounded: past ``max_buckets`` the least recently used buckets go. A bucket
    idle for its class's refill time is full, which is the same as having no bucket,
    so evicting it loses nothing; evicting a busier one (only when more than
    ``max_buckets`` callers were active within a refill time) gives that caller a full
    bucket again — limits loosen under that load instead of memory growing without end.
    """

    def __init__(
        self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, rate_class: RateClass, key: str, cost: float = 1.0) -> Decision:
        """Refill ``key``'s bucket of ``rate_class`` and take ``cost`` tokens if it has them."""
        return self.take_now(rate_class, key, cost)

    def take_now(self, rate_class: RateClass, key: str, cost: float = 1.0) -> Decision:
        """:meth:`take` without the coroutine, for callers that are not async."""
        now = self._clock()
        buckets = self._buckets
        slot = (rate_class.name, key)
        bucket = buckets.get(slot)
        if bucket is None:
            tokens = rate_class.burst
            bucket = buckets[slot] = _Bucket(tokens, now)
            if len(buckets) > self._max:
                self._evict()
        else:
            buckets.move_to_end(slot)
            tokens = bucket.tokens
            elapsed = now - bucket.stamp
            # A clock that went backwards (an injected one) adds nothing. Plain
            # comparisons: this runs on every call, and min()/max() cost more.
            if elapsed > 0.0:
                tokens += elapsed * rate_class.rate
                if tokens > rate_class.burst:
                    tokens = rate_class.burst
        bucket.stamp = now
        if tokens >= cost:
            bucket.tokens = tokens = tokens - cost
            # The named tuple built without its Python-level __new__ (a third of this).
            return _new_tuple(Decision, (True, tokens, 0.0))
        bucket.tokens = tokens
        retry = (cost - tokens) / rate_class.rate if cost <= rate_class.burst else math.inf
        return Decision(False, tokens, retry)

    def _evict(self) -> None:
        buckets = self._buckets
        while len(buckets) > self._max:
            buckets.popitem(last=False)
