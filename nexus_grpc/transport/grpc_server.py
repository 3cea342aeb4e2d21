"""The one grpc.aio server: its listening port and the dispatcher in front of the router."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from typing import Any

import grpc

from nexus_grpc.config import ServerConfig
from nexus_grpc.pipeline.context import note_lookup_metadata
from nexus_grpc.routing import Router
from nexus_grpc.transport.allow_list import guard_grpc_listener
from nexus_grpc.transport.netpolicy import NetworkPolicy
from nexus_grpc.transport.request_read import ReadWatch, read_bounded

__all__ = [
    "Dispatcher",
    "ListenError",
    "connection_limits",
    "create_server",
    "fd_bounded_connections",
]

_log = logging.getLogger("nexus.server")


class ListenError(RuntimeError):
    """The server cannot listen on the configured address."""


class Dispatcher(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The server's only handler: looks each call up in the current routing table."""

    def __init__(
        self,
        router: Router,
        on_unknown: Callable[[str], None] | None = None,
        *,
        request_read_timeout: float = 0.0,
    ) -> None:
        self._router = router
        self._on_unknown = on_unknown
        self._watch = ReadWatch(request_read_timeout) if request_read_timeout > 0 else None
        # Per path: the route's grpc handler and its read-bounded form, built on the
        # first call of each route (a new generation's route replaces the entry).
        self._bounded: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The route's handler, or None (grpcio answers UNIMPLEMENTED) for unknown methods."""
        route = self._router.lookup(handler_call_details.method)
        if route is None:
            if self._on_unknown is not None:
                self._on_unknown("grpc")
            return None
        # Decoded for this lookup, reused by the call's stages (the call's own task).
        note_lookup_metadata(handler_call_details.invocation_metadata)
        if self._watch is None:
            return route.grpc_handler
        entry = self._bounded.get(route.path)
        if entry is None or entry[0] is not route.grpc_handler:
            entry = (route.grpc_handler, read_bounded(route.grpc_handler, self._watch))
            self._bounded[route.path] = entry
        return entry[1]


def create_server(
    config: ServerConfig,
    router: Router,
    on_unknown: Callable[[str], None] | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A server bound to ``config.grpc_address``, not started; returns it and its port.

    With ``credentials`` (nexus_grpc.tls) the port speaks TLS only.
    """
    options = [
        # grpcio enables SO_REUSEPORT by default, which lets a second host bind the same
        # port and silently receive half the connections.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        *connection_limits(config),
    ]
    server = grpc.aio.server(options=options)
    dispatcher = Dispatcher(router, on_unknown, request_read_timeout=config.request_read_timeout)
    server.add_generic_rpc_handlers((dispatcher,))
    # Noted before grpcio binds: the allow-list filter goes on the sockets it adds.
    guard = guard_grpc_listener(NetworkPolicy.from_lists("server", config.allow, config.deny))
    try:
        if credentials is None:
            port = server.add_insecure_port(config.grpc_address)
        else:
            port = server.add_secure_port(config.grpc_address, credentials)
    except RuntimeError as error:
        raise ListenError(
            f"server.grpc_address {config.grpc_address}: cannot listen ({error}); "
            "is another process using the port, or is the host name wrong?"
        ) from None
    # grpcio listens from here on, but accepts nothing before start(): no connection
    # can slip in before the filter is on.
    guard.attach(port)
    return server, port


def connection_limits(config: ServerConfig) -> list[tuple[str, int]]:
    """grpc core channel arguments that bound what one client connection can hold.

    A unary call's handler only starts once its request message has arrived, so a
    client that opens a stream and never finishes the message is out of the pipeline's
    reach: only the transport bounds it — streams per connection, and the connection's
    age and grace, after which grpc core closes it under any call still open. Names
    are grpc core's (``channel_arg_names.h``); a 0 age or idle time leaves that limit off.
    """
    options = [
        # Not "grpc.http2.max_concurrent_streams": grpc core ignores unknown names.
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.keepalive_time_ms", _millis(config.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _millis(config.keepalive_timeout)),
        # The server-side name of GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS.
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            _millis(config.keepalive_min_ping_interval),
        ),
        ("grpc.keepalive_permit_without_calls", 1 if config.keepalive_permit_without_calls else 0),
        ("grpc.http2.max_ping_strikes", config.max_ping_strikes),
        ("grpc.server_handshake_timeout_ms", _millis(config.handshake_timeout)),
        ("grpc.max_metadata_size", config.max_metadata_bytes),
        # Without the hard limit grpc core only rejects above the soft one at random.
        ("grpc.absolute_max_metadata_size", config.max_metadata_bytes),
    ]
    connections = fd_bounded_connections(config.max_connections)
    if connections > 0:
        options.append(("grpc.max_allowed_incoming_connections", connections))
    if config.max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", _millis(config.max_connection_idle)))
    if config.max_connection_age > 0:
        options.append(("grpc.max_connection_age_ms", _millis(config.max_connection_age)))
        options.append(
            ("grpc.max_connection_age_grace_ms", _millis(config.max_connection_age_grace))
        )
    return options


def fd_bounded_connections(configured: int) -> int:
    """``configured``, lowered to 3/8 of the soft open-file limit (0 stays "no cap").

    Both listening ports share the process's descriptors: this port takes at most 3/8 of
    them and the HTTP port 3/4 (``http_server``), so a gRPC connection flood leaves HTTP,
    storage, Redis, logs and the plugins the rest.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if configured == 0 or soft == resource.RLIM_INFINITY or configured <= soft * 3 // 8:
        return configured
    fitted = max(soft * 3 // 8, 1)
    _log.warning(
        "server.max_connections %d is above 3/8 of the open-file limit (%d); using %d",
        configured,
        soft,
        fitted,
    )
    return fitted


def _millis(seconds: float) -> int:
    # grpc core takes int milliseconds; clamp to its int32 range.
    return max(0, min(int(seconds * 1000), 2**31 - 1))
