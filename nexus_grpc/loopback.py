"""Whether an address stays on this machine: where plaintext is acceptable.

The host warns about (or refuses) plaintext ports beyond loopback, the CLI sends no token
or password over plaintext beyond it, and key URLs over plain ``http`` are accepted only
on it: one definition, so the three cannot disagree.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_address", "is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an IP address, ``[v6]`` or ``localhost``) is a loopback address.

    Any other name is not known to be loopback (it may resolve anywhere), and neither is
    an empty host (every interface).
    """
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_address(address: str) -> bool:
    """Whether ``host:port`` (or a ``unix:`` socket) is on this machine only."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0] if ":" in address else address
    return is_loopback_host(host)
