"""Allow/deny lists, trusted proxies and forwarding headers: the address rules alone."""

from __future__ import annotations

import ipaddress

import pytest

from nexus_grpc.config import ConfigError, load_config
from nexus_grpc.transport.netpolicy import (
    MAX_RULES,
    NO_HEADER,
    NetworkPolicy,
    TrustedProxies,
    forwarded_hops,
    parse_address,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = parse_address(text)
    assert address is not None
    return address


@pytest.mark.parametrize(
    ("allow", "deny", "address", "permitted"),
    [
        ((), (), "203.0.113.9", True),
        ((), ("203.0.113.0/24",), "203.0.113.9", False),
        ((), ("203.0.113.0/24",), "198.51.100.1", True),
        (("10.0.0.0/8",), (), "10.1.2.3", True),
        (("10.0.0.0/8",), (), "11.0.0.1", False),
        # Deny wins over allow.
        (("10.0.0.0/8",), ("10.9.0.0/16",), "10.9.1.1", False),
        (("2001:db8::/32",), (), "2001:db8::1", True),
        (("2001:db8::/32",), (), "2001:db9::1", False),
        # An IPv6 rule does not cover an IPv4 client and the reverse.
        (("::/0",), (), "10.0.0.1", False),
        (("0.0.0.0/0",), (), "::1", False),
        # IPv4-mapped addresses and rules are their IPv4 address.
        ((), ("10.0.0.0/8",), "::ffff:10.0.0.1", False),
        (("::ffff:10.0.0.0/104",), (), "10.2.3.4", True),
        # A single address is a /32 or /128; host bits in a CIDR are ignored.
        (("192.0.2.7",), (), "192.0.2.7", True),
        (("192.0.2.7",), (), "192.0.2.8", False),
        (("192.0.2.7/24",), (), "192.0.2.200", True),
    ],
)
def test_policy_decides_by_deny_then_allow(
    allow: tuple[str, ...], deny: tuple[str, ...], address: str, permitted: bool
) -> None:
    policy = NetworkPolicy.from_lists("http", allow, deny)
    assert policy.permits(ip(address)) is permitted
    assert policy.permits_text(address) is permitted


def test_a_peer_that_is_no_address_is_refused_only_when_lists_are_active() -> None:
    assert NetworkPolicy("server").permits_text("unix:/tmp/socket")
    assert not NetworkPolicy.from_lists("server", (), ("10.0.0.0/8",)).permits_text("unknown")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NEXUS_SERVER__ALLOW": "10.0.0.0/33"}, "server.allow: '10.0.0.0/33' is not"),
        ({"NEXUS_HTTP__DENY": "10.0.0.0/8,example.com"}, "http.deny: 'example.com' is not"),
        ({"NEXUS_HTTP__TRUSTED_PROXIES": "proxy"}, "http.trusted_proxies: 'proxy' is not"),
    ],
)
def test_bad_networks_fail_at_load_naming_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


def test_too_many_networks_fail_at_load() -> None:
    many = ",".join(f"10.0.{i // 256}.{i % 256}" for i in range(MAX_RULES + 1))
    with pytest.raises(ConfigError, match=f"at most {MAX_RULES}"):
        load_config(environ={"NEXUS_SERVER__DENY": many})


def test_lists_load_from_toml_and_environment(tmp_path: object) -> None:
    config = load_config(
        environ={
            "NEXUS_SERVER__ALLOW": "10.0.0.0/8, 2001:db8::/32",
            "NEXUS_HTTP__TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    assert config.server.allow == ("10.0.0.0/8", "2001:db8::/32")
    assert config.http.trusted_proxies == ("127.0.0.1",)
    assert config.http.allow == () and config.http.deny == ()


PROXY = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))


@pytest.mark.parametrize(
    ("peer", "hops", "client", "unresolved"),
    [
        # Not from a proxy: the header is the caller's own claim and is ignored.
        ("198.51.100.7", ["203.0.113.1"], "198.51.100.7", ""),
        # From a proxy: the rightmost hop that is not a trusted proxy.
        ("10.0.0.1", ["203.0.113.1"], "203.0.113.1", ""),
        ("10.0.0.1", ["6.6.6.6", "203.0.113.1", "10.0.0.2"], "203.0.113.1", ""),
        # Every hop a proxy: the leftmost one.
        ("10.0.0.1", ["10.0.0.3", "10.0.0.2"], "10.0.0.3", ""),
        # No header from a proxy: unresolved (the proxy's address is not the client's).
        ("10.0.0.1", [], "10.0.0.1", NO_HEADER),
        ("198.51.100.7", [], "198.51.100.7", ""),
        ("10.0.0.1", ["2001:db8::5"], "2001:db8::5", ""),
        # Hops with ports (some proxies write them): the address, never the proxy's.
        ("10.0.0.1", ["203.0.113.1:4711"], "203.0.113.1", ""),
        ("10.0.0.1", ["[2001:db8::5]:4711"], "2001:db8::5", ""),
        ("10.0.0.1", ["[2001:db8::5]"], "2001:db8::5", ""),
        ("10.0.0.1", ["6.6.6.6", "203.0.113.1:80", "10.0.0.2:443"], "203.0.113.1", ""),
        # A hop that is no address stops the walk at the last trusted one, and says so.
        ("10.0.0.1", ["203.0.113.1", "unknown"], "10.0.0.1", "unknown"),
        ("10.0.0.1", ["203.0.113.1", "garbage", "10.0.0.2"], "10.0.0.2", "garbage"),
        ("10.0.0.1", ["_hidden"], "10.0.0.1", "_hidden"),
    ],
)
def test_client_address_walks_forwarded_hops_from_the_right(
    peer: str, hops: list[str], client: str, unresolved: str
) -> None:
    found = PROXY.client_address(ip(peer), hops)
    assert (found.address, found.unresolved) == (ip(client), unresolved)


def test_forwarded_hops_reads_only_the_configured_header() -> None:
    both = [
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2:80"),
        (b"forwarded", b'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8::17]:4711"'),
        (b"x-forwarded-for", b"3.3.3.3,"),
        (b"forwarded", b'For="198.51.100.1:80"'),
    ]
    assert forwarded_hops(both) == ["1.1.1.1", "2.2.2.2:80", "3.3.3.3"]
    assert forwarded_hops(both, "x-forwarded-for") == forwarded_hops(both)
    assert forwarded_hops(both, "forwarded") == [
        "192.0.2.60",
        "[2001:db8::17]:4711",
        "198.51.100.1:80",
    ]
    # The other header is never a fallback: a client could write it past the proxy.
    assert forwarded_hops([(b"forwarded", b"for=1.1.1.1")]) == []
    assert forwarded_hops([(b"x-forwarded-for", b"2.2.2.2")], "forwarded") == []
    assert forwarded_hops([(b"host", b"example.com")]) == []


def test_forwarded_header_is_a_choice() -> None:
    assert load_config(environ={}).http.forwarded_header == "x-forwarded-for"
    config = load_config(environ={"NEXUS_HTTP__FORWARDED_HEADER": "forwarded"})
    assert config.http.forwarded_header == "forwarded"
    with pytest.raises(ConfigError, match=r"http\.forwarded_header"):
        load_config(environ={"NEXUS_HTTP__FORWARDED_HEADER": "x-real-ip"})
