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
    "NO_HEADER",
    "ForwardedClient",
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

#: :attr:`ForwardedClient.unresolved` of a request from a trusted proxy without the
#: configured forwarding header: the proxy's own request, or one it forgot to mark.
NO_HEADER = "(no forwarding header)"


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
class ForwardedClient:
    """Who a request is for, by :meth:`TrustedProxies.client_address`."""

    #: The client: the rightmost hop not a trusted proxy (the peer when nothing is
    #: believed), or the last trusted address before a hop that is no address.
    address: IPAddress
    #: The hop the walk stopped at because it is no address (``unknown``, an obfuscated
    #: ``_name``, garbage), or :data:`NO_HEADER` when a trusted proxy sent no
    #: forwarding header; empty when the walk found the client.
    unresolved: str = ""


@dataclass(frozen=True)
class TrustedProxies:
    """Peers whose forwarding header (``header``) names the real client."""

    networks: tuple[IPNetwork, ...] = ()
    #: "x-forwarded-for" or "forwarded" (RFC 7239): the only header read.
    header: str = "x-forwarded-for"

    def trusts(self, address: IPAddress | None) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        return address is not None and _contains(self.networks, address)

    def client_address(self, peer: IPAddress, forwarded_for: Sequence[str]) -> ForwardedClient:
        """The client a request from ``peer`` is for (the standard right-to-left walk).

        ``forwarded_for`` is the hop list, oldest first (:func:`forwarded_hops`). Walking
        from the right, each hop a trusted proxy added is skipped; the first address not
        of a trusted proxy is the client. The hops left of it were written by that client
        and are not believed. When every hop is a trusted proxy, the leftmost is the
        client. A hop that is no address stops the walk: the result names it, with the
        last trusted address seen, and the caller decides (the HTTP port refuses such a
        request when its allow/deny lists are active rather than judge the proxy). No
        hop at all from a trusted proxy is unresolved too (:data:`NO_HEADER`, the
        proxy's address): a proxy that drops the header must not pass for its clients.
        """
        client = peer
        if not self.trusts(peer):
            return ForwardedClient(client)
        if not forwarded_for:
            return ForwardedClient(client, NO_HEADER)
        for hop in reversed(forwarded_for):
            address = parse_address(_node_address(hop))
            if address is None:
                return ForwardedClient(client, hop)
            client = address
            if not self.trusts(address):
                break
        return ForwardedClient(client)


def forwarded_hops(
    headers: Sequence[tuple[bytes, bytes]], header: str = "x-forwarded-for"
) -> list[str]:
    """The client hops of a request's ``header`` fields (lowercase names), oldest first.

    ``x-forwarded-for``: every field, in order, comma-separated. ``forwarded`` (RFC
    7239): the ``for=`` parameter of each element of every field, unquoted. A hop keeps
    its port (``192.0.2.1:80``, ``[2001:db8::1]:80``): :meth:`TrustedProxies.client_address`
    reads the address out of it. Only ``header`` is read.
    """
    name_wanted = header.encode("ascii")
    hops: list[str] = []
    for name, value in headers:
        if name != name_wanted:
            continue
        text = value.decode("latin-1")
        if name_wanted == b"x-forwarded-for":
            hops.extend(part.strip() for part in text.split(","))
            continue
        for element in text.split(","):
            for pair in element.split(";"):
                key, _, node = pair.strip().partition("=")
                if key.strip().lower() == "for":
                    hops.append(node.strip().strip('"'))
    # A stray comma ("a, , b") adds no hop.
    return [hop for hop in hops if hop]


def _node_address(node: str) -> str:
    """The address part of a hop: ``[2001:db8::1]:80`` -> ``2001:db8::1``,
    ``192.0.2.1:80`` -> ``192.0.2.1``; anything else unchanged."""
    node = node.strip()
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node
