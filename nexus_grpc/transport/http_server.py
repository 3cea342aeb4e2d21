"""The HTTP listener: uvicorn serving the gateway in the host's own event loop.

Sharing the loop with grpc.aio means a REST call and a gRPC call run the same
handlers on the same objects, with no thread or process hop between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import socket
import ssl
from typing import Any, cast

import uvicorn

from nexus_grpc.config import HttpConfig
from nexus_grpc.gateway.app import GatewayApp
from nexus_grpc.transport.accept_guard import GuardedSocket, install_accept_error_log
from nexus_grpc.transport.allow_list import AcceptScreen, RefusedConnections
from nexus_grpc.transport.grpc_server import ListenError
from nexus_grpc.transport.http_protocol import HttpLimits, limited_protocol
from nexus_grpc.transport.listen_address import http_listen_address
from nexus_grpc.transport.netpolicy import NetworkPolicy, TrustedProxies

__all__ = ["HttpServer"]

_log = logging.getLogger("nexus.http")

#: Longest wait, at stop, for connections just accepted to send their first request.
_SETTLE_SECONDS = 0.5
#: Seconds given to connections accepted just before the listener closed to reach the
#: server's connection list (see ``_settle_new_connections``).
_ACCEPTED_ARRIVE = 0.05


class HttpServer:
    """uvicorn, started and stopped by the host rather than by its own CLI."""

    def __init__(
        self,
        app: GatewayApp,
        address: str,
        *,
        reuse_port: bool = False,
        listening: GuardedSocket | None = None,
        limits: HttpLimits | None = None,
        policy: NetworkPolicy | None = None,
        proxies: TrustedProxies | None = None,
        refused: RefusedConnections | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._app = app
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._address = address
        self._reuse_port = reuse_port
        self._listening = listening
        self._limits = _fit_fd_limit(limits or HttpLimits.from_config(HttpConfig()))
        self._policy = policy or NetworkPolicy("http")
        self._proxies = proxies or TrustedProxies()
        self._refused = refused or RefusedConnections()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    def bind(self) -> int:
        """Bind the listening socket (a taken port fails here, before anything starts),
        or take the one given as ``listening`` (bound; ``start`` listens on it)."""
        sock = self._listening if self._listening is not None else self._bind()
        if self._policy.active:
            sock.screen = AcceptScreen(self._policy, self._refused)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        return self.port

    def _bind(self) -> GuardedSocket:
        try:
            family, address = http_listen_address(self._address)
            # IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on only for sockets whose
            # protocol says TCP, and without it every response waits ~40 ms for the
            # client's delayed ACK between uvicorn's header and body writes.
            # Guarded: at the open-file limit, asyncio would otherwise log a traceback per
            # backlog slot on every retry (see accept_guard).
            sock = GuardedSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except (OSError, ValueError) as error:
            raise ListenError(
                f"http.address {self._address}: cannot listen ({error}); is another process "
                "using the port?"
            ) from None
        sock.listen(2048)  # uvicorn's backlog, which create_server() sets again
        return sock

    async def start(self) -> None:
        """Start serving on the bound socket."""
        assert self._socket is not None, "bind() first"
        install_accept_error_log()
        config = uvicorn.Config(
            self._app,
            http=limited_protocol(
                self._limits, policy=self._policy, proxies=self._proxies, refused=self._refused
            ),
            timeout_keep_alive=cast(int, self._limits.keepalive_timeout),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # X-Forwarded-For would otherwise be trusted from loopback peers, letting a
            # local client pick the address rate limits and audit records use.
            proxy_headers=False,
            date_header=False,
            timeout_graceful_shutdown=None,
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        await self._listen(self._server, self._socket)
        self._task = asyncio.create_task(self._server.main_loop())

    async def _listen(self, server: uvicorn.Server, sock: socket.socket) -> None:
        """uvicorn's ``startup`` for one bound socket (lifespan is off), with TLS.

        uvicorn's own gives asyncio no TLS handshake timeout, leaving asyncio's 60 s: a
        client that opens connections and never finishes a handshake holds each that
        long, before the header timer (which starts once the handshake is done) applies.
        """
        config = server.config
        state = server.lifespan.state

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol_class: Any = config.http_protocol_class
            return cast(
                asyncio.Protocol,
                protocol_class(
                    config=config, server_state=server.server_state, app_state=state, _loop=_loop
                ),
            )

        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            create_protocol,
            sock=sock,
            ssl=self._ssl,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl is not None else None,
            backlog=config.backlog,
        )
        server.servers = [listener]
        server.started = True

    async def _settle_new_connections(self, limit: float, *, hand_over: bool) -> None:
        """Stop accepting, then give connections accepted but not read from yet up to
        ``limit`` seconds to send their first request.

        uvicorn's shutdown closes every connection without a request in progress: one
        the loop accepted a moment ago, its request still unread in the socket, would
        be reset (the client sees ECONNRESET, not an answer). A worker retired by a
        rolling restart meets these under a storm of new connections.

        A socket given as ``listening`` is shared (a worker's, with its supervisor and
        its slot's next worker): with ``hand_over`` it keeps listening for them. Else it
        stops listening for every holder, so that no connection queues where nobody
        will accept it (a socket of its own as well: a connection made from then on is
        refused rather than queued and reset at the close).
        """
        assert self._server is not None and self._socket is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        if not hand_over:
            # In the same step as the accepting stops: the loop sees no accept fail.
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        # Stop accepting, but close asyncio's server only once the sockets it accepted
        # have their transports: each gets one in a task of its own, a loop turn later,
        # and one whose task finds the server closed is dropped with its request unread,
        # which the kernel answers with a reset (CPython 3.11's Server._attach asserts,
        # and the error is only reported in debug mode).
        loop.remove_reader(self._socket)
        # This wait also lets those connections join the ones polled below.
        await asyncio.sleep(min(limit, _ACCEPTED_ARRIVE))
        for listener in self._server.servers:
            listener.close()
        # uvicorn's connections have no "first request read" callback: polled.
        while loop.time() < deadline and any(  # noqa: ASYNC110
            getattr(connection, "cycle", False) is None
            for connection in self._server.server_state.connections
        ):
            await asyncio.sleep(0.01)

    def force_stop(self) -> None:
        """Cancel every request in progress (a second signal during the drain)."""
        if self._server is None:
            return
        self._server.force_exit = True
        for task in list(self._server.server_state.tasks):
            task.cancel()

    async def stop(self, grace: float, *, hand_over: bool = False) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds.

        ``hand_over``: a socket given as ``listening`` keeps listening for the others
        holding it (a rolling restart's replacement), see ``_settle_new_connections``."""
        if self._server is None or self._task is None:
            if self._socket is not None:
                self._socket.close()
            return
        # uvicorn waits forever when this is None; 0 means "cancel what still runs now".
        self._server.config.timeout_graceful_shutdown = cast(int, max(grace, 0.0))
        self._server.should_exit = True
        await self._task
        await self._settle_new_connections(min(grace, _SETTLE_SECONDS), hand_over=hand_over)
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        if self._socket is not None:
            self._socket.close()


def _fit_fd_limit(limits: HttpLimits) -> HttpLimits:
    """``limits`` with the connection cap under 3/4 of the soft open-file limit.

    The rest is left for the gRPC port, storage and files: a cap above the fd limit would
    never act, and the host would hit EMFILE (refusing every port) instead.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or limits.max_connections <= soft * 3 // 4:
        return limits
    fitted = max(soft * 3 // 4, 1)
    _log.warning(
        "http.max_connections %d is above 3/4 of the open-file limit (%d); using %d "
        "(raise `ulimit -n` to allow more)",
        limits.max_connections,
        soft,
        fitted,
    )
    return dataclasses.replace(limits, max_connections=fitted)
