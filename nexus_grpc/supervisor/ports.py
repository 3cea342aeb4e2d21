"""Ports the supervisor holds for its workers.

With ``SO_REUSEPORT`` every worker binds the same port, so the port must be known
before the first worker starts: for ``host:0`` the supervisor binds a socket of its own
(never listening: the kernel hands connections only to listening sockets, the
workers') and passes the real port down. It keeps that socket for its whole life, so
no other program can take the port while a worker restarts, and workers restarted
later bind the same port.

The reservation must not *join* a port someone else holds: it binds without
``SO_REUSEPORT`` first (so the bind fails when anything listens there, grpcio's
listeners and another nexus's workers included, which set the option) and sets the
option only once it owns the port, which lets its own workers join. Two supervisors
starting at once on one port would both bind (neither listens yet), so each also holds
a lock named after the port: an abstract Unix socket, which lives in the same network
namespace as the port and vanishes with the process, killed or not.

The HTTP port's sockets are the supervisor's too (:class:`SlotListeners`), one per
worker slot, passed to each worker the slot runs: a rolling restart's replacement
accepts on its predecessor's socket, which therefore does not close in a roll. Closing
a listener drops or resets what its queue held (unless ``net.ipv4.tcp_migrate_req`` hands it to the
group's other listeners) and races the kernel's hand-over of connections completing
their handshake at that moment. grpcio opens its own listeners, so the gRPC port still
relies on the sysctl for that.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

__all__ = [
    "MIGRATE_REQ",
    "PortReservation",
    "SlotListeners",
    "migration_warning",
    "reserve",
]

#: The sysctl that moves connections queued on a closing listener to the others of its
#: ``SO_REUSEPORT`` group (Linux 5.14+; per network namespace, so settable per pod).
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


class PortReservation:
    """A bound, non-listening socket holding one address's port."""

    def __init__(self, address: str, sock: socket.socket, lock: socket.socket) -> None:
        #: The address with the real port, as the workers are told to bind it.
        self.address = address
        self._sock = sock
        self._lock = lock

    @property
    def port(self) -> int:
        """The reserved port number."""
        port: int = self._sock.getsockname()[1]
        return port

    def share(self) -> socket.socket:
        """A new socket bound to the reserved address with ``SO_REUSEPORT``, for a worker
        to listen on: the kernel hands connections only to listening sockets, so none
        waits on it before a worker serves (asyncio's server calls ``listen``)."""
        sock = socket.socket(self._sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self._sock.getsockname())
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Give the port back (the supervisor is stopping)."""
        self._sock.close()
        self._lock.close()


class SlotListeners:
    """One socket per worker slot on a reserved port, kept by the supervisor (its
    workers listen on it).

    Every worker a slot runs serves on the slot's socket, so a rolling restart closes
    no listener: the replacement accepts beside the old worker, which then stops
    accepting and finishes what it took. When a slot is left without a worker (one
    died, or stopped other than by a roll), its socket is closed (:meth:`renew`): nobody
    would accept the connections the kernel hands it until a replacement is up, and the
    replacement gets a new one. (A worker stopping other than by a roll also ends the
    socket's listening itself, as it stops accepting: ``HttpServer.stop``.)
    """

    def __init__(self, port: PortReservation) -> None:
        self._port = port
        self._sockets: dict[int, socket.socket] = {}

    def for_slot(self, slot: int) -> socket.socket:
        """The socket of ``slot``, made at its first worker's start (which listens on it)."""
        sock = self._sockets.get(slot)
        if sock is None:
            sock = self._sockets[slot] = self._port.share()
        return sock

    def renew(self, slot: int) -> None:
        """Close ``slot``'s socket (no worker accepts on it); its next worker gets a new one."""
        sock = self._sockets.pop(slot, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close the supervisor's copy of every slot's socket (the host is stopping)."""
        for slot in list(self._sockets):
            self.renew(slot)


def _lock(port: int) -> socket.socket | None:
    """The abstract socket that says a nexus supervisor holds ``port``; None when
    another process holds it."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0nexus-supervisor-port-{port}")
    except OSError:
        lock.close()
        return None
    return lock


def _resolve(address: str, what: str) -> tuple[socket.AddressFamily, Any]:
    """The family and socket address of ``address`` (an empty host: every address)."""
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
    return family, sockaddr


def reserve(
    address: str, what: str, *, bind: tuple[socket.AddressFamily, tuple[str, int]] | None = None
) -> PortReservation:
    """Reserve ``address`` ("host:port", "[v6]:port"; port 0 picks one) for workers.

    ``what`` names the setting in errors (``server.grpc_address``); ``bind`` is the
    family and address to bind when the caller resolves ``address`` itself (the HTTP
    server's rules, see ``http_listen_address``). Raises OSError with a message when
    the port is taken: bound by a program that does not share it, listened on by any
    program, or reserved by another supervisor.
    """
    host = address.rpartition(":")[0]
    family, sockaddr = bind if bind is not None else _resolve(address, what)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR as every listener sets it: connections of an earlier run left
        # in TIME_WAIT do not block the port. No SO_REUSEPORT yet (see the docstring).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)  # a host name in ``bind`` resolves in its family
    except OSError as error:
        sock.close()
        raise OSError(f"{what} {address}: cannot reserve the port ({error.strerror})") from None
    real: int = sock.getsockname()[1]
    lock = _lock(real)
    if lock is None:
        sock.close()
        raise OSError(f"{what} {address}: another nexus supervisor holds port {real}")
    # Ours now: the workers' listeners (SO_REUSEPORT, same user) may join.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return PortReservation(f"{host}:{real}", sock, lock)


def migration_warning(setting: Path = MIGRATE_REQ) -> str | None:
    """What to tell the operator when a rolling restart may reset gRPC connections: with
    ``net.ipv4.tcp_migrate_req`` at 0 (the default) the connections a retiring worker's
    gRPC listener had queued but not accepted yet are reset when it closes (a few per
    roll under a storm of new connections); with 1 the kernel hands them to another
    worker. (The HTTP port's listeners never close in a roll: :class:`SlotListeners`.)
    None when it is 1 (or the kernel has no such setting: nothing to do)."""
    try:
        value = setting.read_text().strip()
    except OSError:
        return None
    if value != "0":
        return None
    return (
        "net.ipv4.tcp_migrate_req is 0: a rolling restart resets the gRPC connections "
        "queued on a retiring worker's listener; set it to 1 in this network namespace "
        "(sysctl -w net.ipv4.tcp_migrate_req=1, or the pod's securityContext.sysctls)"
    )
