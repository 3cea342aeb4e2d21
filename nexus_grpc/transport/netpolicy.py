"""Network allow/deny lists of one listening port, and the trusted proxies of the HTTP port.

A :class:`NetworkPolicy` says whether a client address may connect: denied when it is
in a ``deny`` network (deny wins), else allowed when ``allow`` is empty or holds it.
IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket reports for
an IPv4 client) are judged as the IPv4 address they carry, so one rule covers a client
whichever socket family served it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_RULES",
    "IPNetwork",
    "NetworkPolicy",
    "TrustedProxies",
    "forwarded_hops",
    "parse_address",
    "parse_networks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Most networks in one port's allow and deny lists together: the kernel filter built
#: from them must stay under the kernel's 4096 instructions (an IPv6 rule takes 13).
MAX_RULES = 256


def parse_networks(key: str, values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``values`` (CIDRs or single addresses) as networks; ValueError naming ``key``."""
    networks = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(
                f"{key}: {value!r} is not an IPv4 or IPv6 network (CIDR such as "
                "10.0.0.0/8, 2001:db8::/32, or a single address)"
            ) from None
        networks.append(_unmapped_network(network))
    return tuple(networks)


def parse_address(text: str) -> IPAddress | None:
    """An IP address from text, with an IPv4-mapped IPv6 address turned IPv4; None if not one."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _unmapped_network(network: IPNetwork) -> IPNetwork:
    """``::ffff:10.0.0.0/104`` as ``10.0.0.0/8``: the kernel sees IPv4 packets for those."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    return any(address.version == net.version and address in net for net in networks)


@dataclass(frozen=True)
class NetworkPolicy:
    """The allow and deny lists of one port (``where`` names it in messages: "server")."""

    where: str
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_lists(cls, where: str, allow: Sequence[str], deny: Sequence[str]) -> NetworkPolicy:
        """A policy from config lists; ValueError naming the key of a bad entry."""
        policy = cls(
            where,
            parse_networks(f"{where}.allow", allow),
            parse_networks(f"{where}.deny", deny),
        )
        if len(policy.allow) + len(policy.deny) > MAX_RULES:
            raise ValueError(
                f"{where}.allow and {where}.deny: {len(policy.allow) + len(policy.deny)} "
                f"networks, at most {MAX_RULES} (merge adjacent networks into wider ones)"
            )
        return policy

    @property
    def active(self) -> bool:
        """True when the lists refuse anyone (else checks can be skipped)."""
        return bool(self.allow or self.deny)

    def permits(self, address: IPAddress) -> bool:
        """Whether ``address`` may connect: not denied, and allowed (an empty allow list
        allows everyone)."""
        if _contains(self.deny, address):
            return False
        return not self.allow or _contains(self.allow, address)

    def permits_text(self, text: str) -> bool:
        """:meth:`permits` for an address in text; something not an address is refused
        when the lists are active (fail closed), e.g. a Unix socket peer."""
        address = parse_address(text)
        if address is None:
            return not self.active
        return self.permits(address)


@dataclass(frozen=True)
class TrustedProxies:
    """Peers whose ``X-Forwarded-For`` / ``Forwarded`` headers name the real client."""

    networks: tuple[IPNetwork, ...] = ()

    def trusts(self, address: IPAddress | None) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        return address is not None and _contains(self.networks, address)

    def client_address(self, peer: IPAddress, forwarded_for: Sequence[str]) -> IPAddress:
        """The client a request from ``peer`` is for (the standard right-to-left walk).

        ``forwarded_for`` is the hop list, oldest first, of every ``X-Forwarded-For``
        (or ``Forwarded: for=``) field in order. Walking from the right, each hop a
        trusted proxy added is skipped; the first address not of a trusted proxy is the
        client. The hops left of it were written by that client and are not believed.
        When every hop is a trusted proxy, the leftmost is the client. A hop that is no
        address (``unknown``, an obfuscated ``_name``, garbage) stops the walk: the last
        trusted address seen is the client, as nothing further can be checked.
        """
        client = peer
        if not self.trusts(peer):
            return client
        for hop in reversed(forwarded_for):
            address = parse_address(hop)
            if address is None:
                return client
            client = address
            if not self.trusts(address):
                return client
        return client


def forwarded_hops(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The client hops of a request's forwarding headers (lowercase names), oldest first.

    Every ``X-Forwarded-For`` field, in order, comma-separated; without one, the ``for=``
    parameters of ``Forwarded`` (RFC 7239: quoted, ``[v6]:port`` or ``v4:port``).
    """
    hops: list[str] = []
    forwarded: list[bytes] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            hops.extend(part.strip() for part in value.decode("latin-1").split(","))
        elif name == b"forwarded":
            forwarded.append(value)
    if hops or not forwarded:
        return [hop for hop in hops if hop]
    for value in forwarded:
        for element in value.decode("latin-1").split(","):
            for pair in element.split(";"):
                key, _, node = pair.strip().partition("=")
                if key.strip().lower() == "for":
                    hops.append(_node_address(node.strip().strip('"')))
    return hops


def _node_address(node: str) -> str:
    """The address of an RFC 7239 node: ``[2001:db8::1]:80`` -> ``2001:db8::1``,
    ``192.0.2.1:80`` -> ``192.0.2.1``; anything else unchanged."""
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node
