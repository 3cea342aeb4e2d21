"""The one grpc.aio server: its listening port and the dispatcher in front of the router."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from nexus_grpc.config import ServerConfig
from nexus_grpc.routing import Router

__all__ = ["Dispatcher", "ListenError", "create_server"]


class ListenError(RuntimeError):
    """The server cannot listen on the configured address."""


class Dispatcher(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The server's only handler: looks each call up in the current routing table."""

    def __init__(self, router: Router, on_unknown: Callable[[str], None] | None = None) -> None:
        self._router = router
        self._on_unknown = on_unknown

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The route's handler, or None (grpcio answers UNIMPLEMENTED) for unknown methods."""
        route = self._router.lookup(handler_call_details.method)
        if route is None:
            if self._on_unknown is not None:
                self._on_unknown("grpc")
            return None
        return route.grpc_handler


def create_server(
    config: ServerConfig, router: Router, on_unknown: Callable[[str], None] | None = None
) -> tuple[grpc.aio.Server, int]:
    """A server bound to ``config.grpc_address``, not started; returns it and its port."""
    options = [
        # grpcio enables SO_REUSEPORT by default, which lets a second host bind the same
        # port and silently receive half the connections.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((Dispatcher(router, on_unknown),))
    try:
        port = server.add_insecure_port(config.grpc_address)
    except RuntimeError as error:
        raise ListenError(
            f"server.grpc_address {config.grpc_address}: cannot listen ({error}); "
            "is another process using the port, or is the host name wrong?"
        ) from None
    return server, port
