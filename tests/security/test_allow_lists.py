"""Network allow/deny lists on both ports and trusted proxies, against a real host.

Loopback has all of 127.0.0.0/8: clients bound to 127.0.0.2 come from a refused
address, clients on 127.0.0.1 from an allowed one (or a trusted proxy).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc

from nexus_grpc.config import HttpConfig, LimitsConfig, ServerConfig
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.tls.certs import TestCA
from nexus_grpc.transport import socket_filter

REPO = Path(__file__).resolve().parents[2]
#: Seconds a loopback connect may take before it counts as dropped.
CONNECT_WAIT = 0.5
REFUSED = "127.0.0.2"


@pytest.fixture
async def make_host(tmp_path: Path) -> AsyncIterator[Any]:
    hosts: list[Any] = []

    async def start(**options: Any) -> RunningHost:
        context = running_host(
            plugins=["auth"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path / f"data{len(hosts)}",
            **options,
        )
        hosts.append(context)
        return await context.__aenter__()

    yield start
    for context in reversed(hosts):
        await context.__aexit__(None, None, None)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


async def connect_from(source: str, port: int) -> socket.socket | None:
    """A TCP connection from ``source`` to loopback ``port``; None when the SYN goes
    unanswered (a kernel drop)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), CONNECT_WAIT
        )
    except TimeoutError:
        sock.close()
        return None
    return sock


async def send_from(source: str, port: int, data: bytes) -> bytes:
    """What the server answers ``data`` sent from ``source`` (b"" when it reset or closed
    the connection; the reset may already fail the connect)."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
            await asyncio.wait_for(loop.sock_sendall(sock, data), 5)
            return await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def refused_count(host: RunningHost, port: str, reason: str) -> int:
    return host.host.refused.count(port, reason)


async def test_grpc_port_drops_a_refused_peer_in_the_kernel(make_host: Any) -> None:
    host = await make_host(server=ServerConfig(deny=(REFUSED,)))
    port = port_of(host.address)
    # The SYN is dropped: no connection, nothing for grpcio to read or parse.
    assert await connect_from(REFUSED, port) is None
    allowed = await connect_from("127.0.0.1", port)
    assert allowed is not None
    allowed.close()
    reply = await health_pb2_grpc.HealthStub(host.channel()).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpc_calls_are_refused_before_decoding_without_the_kernel_filter(
    make_host: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a system without socket filters: grpcio's socket is not found.
    monkeypatch.setattr(socket_filter, "find_listening_sockets", lambda *a, **k: [])
    caplog.set_level(logging.WARNING, "nexus.network")
    host = await make_host(server=ServerConfig(allow=(REFUSED,)), http=True)
    assert any("no kernel filter on the gRPC port" in r.getMessage() for r in caplog.records)
    stub = auth_pb2_grpc.AuthServiceStub(host.channel())
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # A body the decode stage would refuse: the refusal comes before it.
            await stub.Login(auth_pb2.LoginRequest(username="x", password="y"), timeout=5)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "server.allow/server.deny" in (caught.value.details() or "")
    # Counted once per connection, logged once.
    assert refused_count(host, "grpc", "call_denied") == 1
    # The HTTP port has its own lists (none here).
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        metrics = await client.get("/metrics")
    assert 'nexus_connections_refused_total{port="grpc",reason="call_denied"} 1.0' in metrics.text


async def test_http_port_resets_a_refused_peer_before_reading_a_byte(
    make_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host = await make_host(http=HttpConfig(deny=(REFUSED,)))
    port = port_of(host.host.http_address)
    # Garbage and an oversized header: nothing of it may be parsed or answered.
    junk = b"\x16\x03\x01 NOT HTTP\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    answer = await send_from(REFUSED, port, junk)
    assert answer == b""
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Invalid HTTP request" in m for m in messages)
    assert sum("refused a connection from 127.0.0.2 on the http port" in m for m in messages) == 1
    assert refused_count(host, "http", "denied") == 1
    # httpx from the refused address fails; from an allowed one it is served.
    async with httpx.AsyncClient(
        base_url=host.http_url, transport=httpx.AsyncHTTPTransport(local_address=REFUSED)
    ) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/openapi.json")
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        assert (await client.get("/openapi.json")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'nexus_connections_refused_total{port="http",reason="denied"} 2.0' in metrics


async def test_http_allow_list_refuses_everyone_else(make_host: Any) -> None:
    host = await make_host(http=HttpConfig(allow=(REFUSED,)))
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/openapi.json")
    async with httpx.AsyncClient(
        base_url=host.http_url, transport=httpx.AsyncHTTPTransport(local_address=REFUSED)
    ) as client:
        assert (await client.get("/openapi.json")).status_code == 200


def login_body(name: str) -> dict[str, str]:
    # A user name per client: the auth plugin also throttles failures per user name.
    return {"username": f"nobody-{name}", "password": "wrong"}


async def test_trusted_proxy_forwards_the_client_address(
    make_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.access")
    host = await make_host(
        http=HttpConfig(trusted_proxies=("127.0.0.1",), deny=("203.0.113.0/24",)),
        limits=LimitsConfig(
            rate_classes={
                "default": {"rate": 100, "burst": 200},
                "login": {"rate": 0.001, "burst": 2},
            }
        ),
        access_log=True,
    )
    proxy = httpx.AsyncClient(base_url=host.http_url)
    untrusted = httpx.AsyncClient(
        base_url=host.http_url, transport=httpx.AsyncHTTPTransport(local_address=REFUSED)
    )
    async with proxy, untrusted:

        async def login(client: httpx.AsyncClient, forwarded_for: str) -> int:
            response = await client.post(
                "/v1/auth/login",
                json=login_body(forwarded_for),
                headers={"x-forwarded-for": forwarded_for},
            )
            return response.status_code

        # Through the proxy, the client's own address is the one denied (403, unparsed body).
        denied = await proxy.post(
            "/v1/auth/login",
            json=login_body("denied"),
            headers={"x-forwarded-for": "203.0.113.5, 127.0.0.1"},
        )
        assert denied.status_code == 403
        assert denied.json()["details"][0]["reason"] == "ADDRESS_DENIED"
        assert refused_count(host, "http", "forwarded_denied") == 1
        # A spoofed header from a peer that is no proxy is ignored: not denied, and it
        # cannot pick the rate-limit bucket (one bucket for all its "clients").
        assert [await login(untrusted, f"203.0.113.{n}") for n in range(3)] == [401, 401, 429]
        # Through the proxy, each forwarded client has its own bucket.
        assert [await login(proxy, "198.51.100.1") for _ in range(3)] == [401, 401, 429]
        assert await login(proxy, "198.51.100.2") == 401
        # Hops with ports are addresses too: the denied client, not the proxy, is judged.
        assert await login(proxy, "203.0.113.5:4711") == 403
        assert await login(proxy, "[2001:db8::9]:4711") == 401
        # A hop that is no address while lists are active: refused, never the proxy's pass.
        unknown = await proxy.post(
            "/v1/auth/login", json=login_body("unknown"), headers={"x-forwarded-for": "unknown"}
        )
        assert unknown.status_code == 403
        assert unknown.json()["details"][0]["reason"] == "ADDRESS_UNKNOWN"
        assert "no IP address" in unknown.json()["message"]
        assert refused_count(host, "http", "forwarded_unknown") == 1
        # Forwarded is not the configured header: not read, so it cannot pick the address;
        # and with the configured one missing the client is unknown, not the proxy.
        ignored = await proxy.post(
            "/v1/auth/login",
            json=login_body("ignored"),
            headers={"forwarded": "for=203.0.113.7"},
        )
        assert ignored.status_code == 403
        assert ignored.json()["details"][0]["reason"] == "ADDRESS_UNKNOWN"
        # No forwarding header at all: the same (a proxy dropping it passes for no one).
        bare = await proxy.post("/v1/auth/login", json=login_body("bare"))
        assert bare.status_code == 403
        assert bare.json()["details"][0]["reason"] == "ADDRESS_UNKNOWN"
        assert "no http.forwarded_header" in bare.json()["message"]
        assert refused_count(host, "http", "forwarded_unknown") == 3
    peers = [getattr(r, "peer", "") for r in caplog.records if r.name == "nexus.access"]
    assert "ipv4:198.51.100.2:0" in peers
    assert "ipv6:[2001:db8::9]:0" in peers
    assert all("203.0.113." not in peer for peer in peers)
    assert any(peer.startswith("ipv4:127.0.0.2:") for peer in peers)


async def test_a_proxy_without_a_forwarding_header_is_served_when_no_lists_judge(
    make_host: Any,
) -> None:
    # No allow/deny lists: nothing to judge, so the proxy's address stands for the client.
    host = await make_host(http=HttpConfig(trusted_proxies=("127.0.0.1",)))
    async with httpx.AsyncClient(base_url=host.http_url) as proxy:
        assert (await proxy.get("/openapi.json")).status_code == 200
    assert refused_count(host, "http", "forwarded_unknown") == 0


async def test_a_proxy_writing_forwarded_is_believed_only_there(
    make_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.access")
    host = await make_host(
        http=HttpConfig(
            trusted_proxies=("127.0.0.1",),
            deny=("203.0.113.0/24",),
            forwarded_header="forwarded",
        ),
        access_log=True,
    )
    async with httpx.AsyncClient(base_url=host.http_url) as proxy:

        async def login(headers: dict[str, str]) -> int:
            response = await proxy.post(
                "/v1/auth/login", json=login_body("forwarded"), headers=headers
            )
            return response.status_code

        assert await login({"forwarded": 'for="[2001:db8::9]:4711";proto=https'}) == 401
        assert await login({"forwarded": "for=203.0.113.5"}) == 403
        # The client's own X-Forwarded-For, passed through by the proxy, is not believed:
        # Forwarded names the client (the denied one here), XFF cannot override it.
        assert (
            await login({"forwarded": "for=203.0.113.5", "x-forwarded-for": "198.51.100.1"}) == 403
        )
        assert await login({"forwarded": "for=unknown"}) == 403
    peers = [getattr(r, "peer", "") for r in caplog.records if r.name == "nexus.access"]
    assert "ipv6:[2001:db8::9]:0" in peers
    assert all("198.51.100.1" not in peer for peer in peers)


async def test_refused_peers_never_start_a_tls_handshake(
    make_host: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca = TestCA.create(tmp_path / "pki")
    host = await make_host(
        server=ServerConfig(deny=(REFUSED,)), http=HttpConfig(deny=(REFUSED,)), tls=ca
    )
    # gRPC: the SYN is dropped. HTTP: reset at accept, before a ClientHello is read.
    assert await connect_from(REFUSED, port_of(host.address)) is None
    hello = b"\x16\x03\x01\x00\x05" + b"\x01\x00\x00\x01\x00"
    assert await send_from(REFUSED, port_of(host.host.http_address), hello) == b""
    assert refused_count(host, "http", "denied") == 1
    assert not any("handshake" in r.getMessage().lower() for r in caplog.records)
    async with httpx.AsyncClient(verify=host.ssl_context(), timeout=10) as client:
        assert (await client.get(f"{host.http_url}/openapi.json")).status_code == 200
