"""Rate limits and a concurrency limit for the call pipeline.

A method counts against the rate-limit class its contract names
(``rate_limit_class`` in its ``nexus.options.v1.policy``, else its service's
``default_policy``, else "default"). Each class is a token bucket per caller: the
authenticated principal, or the peer's IP address for anonymous callers. Buckets live
in memory (:class:`MemoryBuckets`, one process) or in Redis (:class:`RedisBuckets`,
shared by every instance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexus_grpc.ratelimit._buckets import (
    Buckets,
    Decision,
    MemoryBuckets,
    RateClass,
    parse_rate_classes,
)
from nexus_grpc.ratelimit._stages import (
    ConcurrencyStage,
    RateLimitStage,
    caller_key,
    peer_address,
    rate_limited,
)

if TYPE_CHECKING:
    from nexus_grpc.ratelimit._redis import RedisBuckets

__all__ = [
    "Buckets",
    "ConcurrencyStage",
    "Decision",
    "MemoryBuckets",
    "RateClass",
    "RateLimitStage",
    "RedisBuckets",
    "caller_key",
    "parse_rate_classes",
    "peer_address",
    "rate_limited",
]


def __getattr__(name: str) -> Any:
    # redis-py is imported only by hosts that use the Redis backend.
    if name == "RedisBuckets":
        from nexus_grpc.ratelimit._redis import RedisBuckets

        return RedisBuckets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
