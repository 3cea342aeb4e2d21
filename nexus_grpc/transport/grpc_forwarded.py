"""The client behind a trusted proxy on the gRPC port (``server.trusted_proxies``).

A load balancer in front of the gRPC port (HAProxy with ``option forwardfor``, Envoy
with ``use_remote_address``) is every client's TCP peer: without this stage all of
them share one rate-limit bucket, one audit address and one allow/deny verdict. When
the peer of a call is one of ``server.trusted_proxies``, the client named in its
``server.forwarded_header`` metadata (the same right-to-left walk as the HTTP port,
:meth:`~nexus_grpc.transport.netpolicy.TrustedProxies.client_address`) becomes the
call's ``peer()`` for every later stage: the access log, rate limits, the login
throttle, audit records and the network stage.

A trusted proxy that names no usable client (no header, or a hop that is no address)
keeps its own address, unless the port's allow/deny lists are active: then the peer is
``unknown``, which the network stage refuses (fail closed), as the HTTP port does.
Metadata from any other peer is ignored: a client cannot pick its own address.
"""

from __future__ import annotations

from typing import Any

from nexus_grpc.pipeline.context import received_metadata
from nexus_grpc.ratelimit import peer_address
from nexus_grpc.routing import CallHandler, MethodInfo
from nexus_grpc.transport.netpolicy import TrustedProxies, forwarded_hops, parse_address

__all__ = ["ForwardedContext", "ForwardedStage"]

#: Distinct peers whose trust verdict is remembered (one per proxy connection).
_CACHE_LIMIT = 4096


class ForwardedContext:
    """A grpc.aio servicer context whose :meth:`peer` is the forwarded client.

    Everything else is the wrapped context's. It has no ``transport`` attribute, so
    stages keep telling it from the host's own :class:`~nexus_grpc.pipeline.context.CallContext`.
    """

    __slots__ = ("_context", "_peer")

    def __init__(self, context: Any, peer: str) -> None:
        self._context = context
        self._peer = peer

    def peer(self) -> str:
        """The client the trusted proxy forwarded this call for (port 0: not known)."""
        return self._peer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def grpc_peer(address: str) -> str:
    """An address as grpc writes peers, port 0: ``ipv4:192.0.2.1:0``, ``ipv6:[::1]:0``."""
    return f"ipv6:[{address}]:0" if ":" in address else f"ipv4:{address}:0"


class ForwardedStage:
    """Outermost stage: gRPC calls from a trusted proxy get the client's address as peer."""

    def __init__(self, proxies: TrustedProxies, *, policy_active: bool) -> None:
        self._proxies = proxies
        self._policy_active = policy_active
        self._header = proxies.header
        #: grpc peer string -> whether it is a trusted proxy.
        self._trusted: dict[str, bool] = {}

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """``next`` untouched when no proxy is trusted, else ``next`` behind the rewrite."""
        if not self._proxies.networks:
            return next
        trusted = self._is_trusted
        client_of = self._client_peer

        async def forwarded(request: Any, context: Any) -> Any:
            # CallContext (REST, gRPC-Web, in-process) has a transport: the HTTP port
            # resolved its client already. grpc.aio's context has none.
            if hasattr(context, "transport"):
                return await next(request, context)
            peer: str = context.peer()
            if not trusted(peer):
                return await next(request, context)
            return await next(request, ForwardedContext(context, client_of(peer, context)))

        return forwarded

    def _is_trusted(self, peer: str) -> bool:
        verdict = self._trusted.get(peer)
        if verdict is None:
            if len(self._trusted) >= _CACHE_LIMIT:
                self._trusted.clear()
            address = parse_address(peer_address(peer))
            verdict = self._trusted[peer] = self._proxies.trusts(address)
        return verdict

    def _client_peer(self, peer: str, context: Any) -> str:
        """The peer string of the client ``peer`` (a trusted proxy) forwarded for."""
        proxy = parse_address(peer_address(peer))
        assert proxy is not None  # trusted: an address
        header = self._header
        # The hop syntax is the HTTP header's: reuse its parser on the metadata values.
        fields = [
            (header.encode("ascii"), value.encode("latin-1"))
            for key, value in received_metadata(context) or ()
            if key == header and isinstance(value, str)
        ]
        found = self._proxies.client_address(proxy, forwarded_hops(fields, header))
        if found.unresolved and self._policy_active:
            return "unknown"
        if found.address == proxy:
            return peer
        return grpc_peer(str(found.address))
