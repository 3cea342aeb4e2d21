"""The pipeline stages: per-caller rate limits and the host-wide concurrency limit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from nexus_grpc.auth.principal import principal_var
from nexus_grpc.errors import StatusError
from nexus_grpc.ratelimit._buckets import Buckets, MemoryBuckets, RateClass, parse_rate_classes
from nexus_grpc.routing import CallHandler, MethodInfo

__all__ = ["ConcurrencyStage", "RateLimitStage", "caller_key", "peer_address", "rate_limited"]

_IPV4_MAPPED = "::ffff:"
_PEER_CACHE_LIMIT = 4096
_peer_keys: dict[str, str] = {}


def peer_address(peer: str) -> str:
    """The address part of a grpc peer string, without the port.

    ``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``; ``ipv6:[::1]:5555`` and grpc's
    percent-encoded ``ipv6:%5B::1%5D:5555`` -> ``::1``; an IPv4-mapped IPv6 address
    -> the IPv4 address (one caller, one key, whichever socket family served it).
    Other peers (``unix:/path``, ``unknown``) are returned whole.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        if "%" in rest:
            rest = unquote(rest)
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if host.startswith(_IPV4_MAPPED) and "." in host:
            host = host[len(_IPV4_MAPPED) :]
        return host
    return peer


def caller_key(context: Any) -> str:
    """Whose bucket a call takes from: ``sub:<subject>``, or ``peer:<ip>`` when anonymous.

    The principal is the one the auth stage set for this call. Subjects and addresses
    get distinct prefixes so no subject can drain an address's bucket or the reverse.
    """
    principal = principal_var.get()
    if principal is not None:
        return "sub:" + principal.subject
    peer: str = context.peer()
    key = _peer_keys.get(peer)
    if key is None:
        # Peers carry the client's port: one entry per connection, cleared when full.
        if len(_peer_keys) >= _PEER_CACHE_LIMIT:
            _peer_keys.clear()
        key = _peer_keys[peer] = "peer:" + peer_address(peer)
    return key


def rate_limited(rate_class: str, retry_after: float) -> StatusError:
    """RESOURCE_EXHAUSTED for a caller out of tokens, with ``google.rpc.RetryInfo``.

    ``retry_after`` metadata is whole seconds (rounded up), ready for an HTTP
    ``Retry-After`` header; RetryInfo has the delay to the millisecond.
    """
    millis = math.ceil(retry_after * 1000) if math.isfinite(retry_after) else 86_400_000
    millis = max(millis, 1)
    seconds = millis / 1000
    delay = Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"rate limit of class {rate_class!r} reached; retry in {math.ceil(seconds * 10) / 10:.1f}s",
        reason="RATE_LIMITED",
        metadata={"retry_after": str(math.ceil(seconds)), "rate_limit_class": rate_class},
        details=(error_details_pb2.RetryInfo(retry_delay=delay),),
    )


class RateLimitStage:
    """Takes one token per call from the caller's bucket of the method's class.

    Bind it after the auth stage (the caller's principal is known) and before the
    costlier authorization and handler. A method naming a class the configuration does
    not have fails at bind time, with the method and the class named: a typo in a
    contract must not silently mean "no limit".
    """

    def __init__(
        self, buckets: Buckets, classes: Mapping[str, RateClass | Mapping[str, float]]
    ) -> None:
        self._buckets = buckets
        self._classes = parse_rate_classes(classes)

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` with the limit of ``method``'s rate-limit class."""
        name = _class_name(method)
        rate_class = self._classes.get(name)
        if rate_class is None:
            known = ", ".join(sorted(self._classes)) or "none"
            raise ValueError(
                f"{method.path} (plugin {method.plugin!r}) uses rate-limit class {name!r}, "
                f"which is not configured (configured: {known}); add it under "
                f"[limits.rate_classes.{name}]"
            )
        buckets = self._buckets
        if isinstance(buckets, MemoryBuckets):
            # In memory the decision needs no await: no coroutine per call for it.
            take_now = buckets.take_now

            async def limit_now(request: Any, context: Any) -> Any:
                decision = take_now(rate_class, caller_key(context))
                if not decision.allowed:
                    raise rate_limited(name, decision.retry_after)
                return await next(request, context)

            return limit_now
        take = buckets.take

        async def limit(request: Any, context: Any) -> Any:
            decision = await take(rate_class, caller_key(context))
            if not decision.allowed:
                raise rate_limited(name, decision.retry_after)
            return await next(request, context)

        return limit


def _class_name(method: MethodInfo) -> str:
    policy = method.policy
    if policy is None:
        from nexus_grpc.access.policy import effective_policy

        policy = effective_policy(method.descriptor)
    return policy.rate_limit_class or "default"


class ConcurrencyStage:
    """Refuses calls beyond ``max_calls`` served at once, all methods and transports together.

    ``max_calls`` 0 means no limit: the stage then returns ``next`` untouched and costs
    nothing. Refused calls get RESOURCE_EXHAUSTED (HTTP 429).
    """

    def __init__(self, max_calls: int) -> None:
        if max_calls < 0:
            raise ValueError("max_calls must be >= 0 (0 for no limit)")
        self._max = max_calls
        self._active = 0

    @property
    def active(self) -> int:
        """Calls being served now (those that passed this stage)."""
        return self._active

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` with the shared limit, or return it when there is none."""
        limit = self._max
        if limit == 0:
            return next

        async def bounded(request: Any, context: Any) -> Any:
            # One event loop: no lock between the check and the increment.
            if self._active >= limit:
                # A new error each time: a re-raised instance would grow its traceback.
                raise StatusError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent calls (limit {limit})",
                    reason="TOO_MANY_CONCURRENT_CALLS",
                    metadata={"limit": str(limit)},
                )
            self._active += 1
            try:
                return await next(request, context)
            finally:
                self._active -= 1

        return bounded
