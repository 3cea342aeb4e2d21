"""Where the HTTP server listens for its ``http.address`` setting."""

from __future__ import annotations

import socket

__all__ = ["http_listen_address"]


def http_listen_address(address: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The family and (host, port) the HTTP port binds for ``address`` ("host:port",
    "[v6]:port"): IPv6 for a literal with colons, else IPv4 (a host name resolves to its
    IPv4 address), 127.0.0.1 for an empty host. ValueError when the port is no number
    from 0 to 65535.

    One process and the supervisor of several workers bind the same address by it.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not from 0 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, port)
