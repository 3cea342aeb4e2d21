"""Network allow-lists on the listening ports: counting refusals, the gRPC port's guards.

The HTTP port refuses when its listening socket accepts (:class:`AcceptScreen`, used by
:class:`~nexus_grpc.transport.accept_guard.GuardedSocket`): the connection is reset
before asyncio makes a transport for it, so before any TLS handshake or byte read.
The gRPC port's connections are accepted by grpcio's C core, so it has two layers:

1. :func:`guard_grpc_listener` attaches a kernel socket filter to grpcio's listening
   sockets (:mod:`.socket_filter`): a refused client's SYN is dropped, it never
   connects (its connect times out) and no byte of it reaches the process.
2. :class:`NetworkStage`, near the front of the pipeline, refuses gRPC calls from a
   refused peer with PERMISSION_DENIED before the request is decoded, authenticated or
   handled: the second layer where the kernel filter is unavailable (not Linux), and a
   check that the first one held.

:class:`RefusedConnections` counts refusals for ``/metrics``
(``nexus_connections_refused_total{port,reason}``) and logs them at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import grpc
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_grpc.errors import StatusError
from nexus_grpc.ratelimit import peer_address
from nexus_grpc.routing import CallHandler, MethodInfo
from nexus_grpc.transport import socket_filter
from nexus_grpc.transport.netpolicy import NetworkPolicy

__all__ = ["AcceptScreen", "NetworkStage", "RefusedConnections", "guard_grpc_listener"]

_log = logging.getLogger("nexus.network")

#: Seconds between two log lines about refused connections of one port.
_LOG_INTERVAL = 60.0
#: Peer strings remembered by the stage (one per connection: they carry the port).
_PEER_CACHE_LIMIT = 4096


class RefusedConnections(Collector):
    """Counts of refused connections by port and reason, and their rate-limited log."""

    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self._interval = interval
        self._counts: dict[tuple[str, str], int] = {}
        #: Per port: when the next line may be logged, and refusals held back since.
        self._next_log: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def note(self, port: str, reason: str, address: str) -> None:
        """Count one refusal of ``address`` on ``port`` ("grpc", "http") for ``reason``."""
        key = (port, reason)
        self._counts[key] = self._counts.get(key, 0) + 1
        now = time.monotonic()
        if now < self._next_log.get(port, 0.0):
            self._held[port] = self._held.get(port, 0) + 1
            return
        held = self._held.pop(port, 0)
        self._next_log[port] = now + self._interval
        _log.warning(
            "refused a connection from %s on the %s port (%s: not allowed by %s.allow/%s.deny); "
            "%d more refused in the last %gs were not logged",
            address,
            port,
            reason,
            "server" if port == "grpc" else "http",
            "server" if port == "grpc" else "http",
            held,
            self._interval,
            extra={"peer": address, "port": port, "reason": reason},
        )

    def count(self, port: str, reason: str) -> int:
        """Refusals counted so far."""
        return self._counts.get((port, reason), 0)

    def describe(self) -> Iterable[Metric]:
        """The metric family, empty (lets the registry check names at registration)."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """The counts as ``nexus_connections_refused_total``."""
        family = self._family()
        for (port, reason), value in sorted(self._counts.items()):
            family.add_metric([port, reason], value)
        return [family]

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "nexus_connections_refused",
            "Connections (or gRPC calls) refused by a port's allow/deny lists.",
            labels=["port", "reason"],
        )


class ListenerGuard:
    """Finds the sockets grpcio binds for the gRPC port and filters them in the kernel.

    Create it before ``add_*_port`` (it notes the sockets open then) and call
    :meth:`attach` with the bound port, before the server starts.
    """

    def __init__(self, policy: NetworkPolicy) -> None:
        self._policy = policy
        self._before = socket_filter.socket_inodes() if policy.active else set()
        #: Listening sockets the filter was attached to.
        self.filtered = 0

    def attach(self, port: int) -> None:
        """Attach the filter to the port's new listening sockets; warn when none is found."""
        if not self._policy.active:
            return
        program = socket_filter.compile_filter(self._policy)
        for sock in socket_filter.find_listening_sockets(port, exclude=self._before):
            with sock:
                try:
                    socket_filter.attach_filter(sock, program)
                except OSError as error:
                    _log.warning("cannot attach the allow-list filter to the gRPC port: %s", error)
                    continue
                self.filtered += 1
        if not self.filtered:
            _log.warning(
                "server.allow/server.deny: no kernel filter on the gRPC port (not Linux, or "
                "its socket was not found); refused peers can connect and are refused per "
                "call (PERMISSION_DENIED) instead"
            )


def guard_grpc_listener(policy: NetworkPolicy) -> ListenerGuard:
    """A :class:`ListenerGuard` for ``policy`` (does nothing when the lists are empty)."""
    return ListenerGuard(policy)


class AcceptScreen:
    """The HTTP port's allow-list, asked by its listening socket for each connection."""

    def __init__(self, policy: NetworkPolicy, refused: RefusedConnections) -> None:
        self._policy = policy
        self._refused = refused

    def __call__(self, address: Any) -> bool:
        """Whether the peer at ``address`` (``(host, port, ...)``) may connect; counts and
        logs a refusal."""
        host = address[0] if isinstance(address, tuple) and address else ""
        if self._policy.permits_text(host):
            return True
        self._refused.note("http", "denied", host or "unknown")
        return False


class NetworkStage:
    """Refuses gRPC calls from peers the gRPC port's lists refuse (PERMISSION_DENIED).

    Bound near the front of the pipeline (after the error stage, before anything reads
    the request). Calls of the other transports pass: the HTTP port refuses its peers
    itself, and in-process calls have no address.
    """

    def __init__(self, policy: NetworkPolicy, refused: RefusedConnections | None = None) -> None:
        self._policy = policy
        self._refused = refused
        self._verdicts: dict[str, bool] = {}

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """``next`` untouched when the lists are empty, else ``next`` behind the check."""
        if not self._policy.active:
            return next
        permitted = self._permitted

        async def checked(request: Any, context: Any) -> Any:
            # CallContext (REST, gRPC-Web, in-process) has a transport; grpc.aio's has not.
            if not hasattr(context, "transport") and not permitted(context.peer()):
                raise StatusError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "your network address may not call this host (server.allow/server.deny)",
                    reason="ADDRESS_DENIED",
                )
            return await next(request, context)

        return checked

    def _permitted(self, peer: str) -> bool:
        verdict = self._verdicts.get(peer)
        if verdict is None:
            if len(self._verdicts) >= _PEER_CACHE_LIMIT:
                self._verdicts.clear()
            verdict = self._verdicts[peer] = self._policy.permits_text(peer_address(peer))
            if not verdict and self._refused is not None:
                self._refused.note("grpc", "call_denied", peer_address(peer))
        return verdict
