"""Ports the supervisor holds for its workers.

With ``SO_REUSEPORT`` every worker binds the same port, so the port must be known
before the first worker starts: for ``host:0`` the supervisor binds a socket of its own
(``SO_REUSEPORT``, never listening: the kernel hands connections only to listening
sockets, the workers') and passes the real port down. It keeps that socket for its
whole life, so no other program can take the port while a worker restarts, and
workers restarted later bind the same port.
"""

from __future__ import annotations

import socket

__all__ = ["PortReservation", "reserve"]


class PortReservation:
    """A bound, non-listening socket holding one address's port."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        #: The address with the real port, as the workers are told to bind it.
        self.address = address
        self._sock = sock

    @property
    def port(self) -> int:
        """The reserved port number."""
        port: int = self._sock.getsockname()[1]
        return port

    def close(self) -> None:
        """Give the port back (the supervisor is stopping)."""
        self._sock.close()


def reserve(address: str, what: str) -> PortReservation:
    """Reserve ``address`` ("host:port", "[v6]:port"; port 0 picks one) for workers.

    ``what`` names the setting in errors (``server.grpc_address``). Raises OSError with
    a message when the port cannot be bound with ``SO_REUSEPORT`` (another program
    holds it without sharing).
    """
    host, _, port_text = address.rpartition(":")
    bare = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise OSError(f"{what} {address}: not host:port") from None
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        raise OSError(f"{what} {address}: cannot resolve {bare}: {error}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # The same options the workers' listeners set: the kernel lets sockets share a
        # port only when every one of them asked to (and all belong to one user).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise OSError(f"{what} {address}: cannot reserve the port ({error.strerror})") from None
    real = sock.getsockname()[1]
    return PortReservation(f"{host}:{real}", sock)
