"""Handshakes the host refuses, and the certificates clients refuse."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.config import HttpConfig, TlsConfig
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.tls.certs import IssuedCert, TestCA


async def _grpc_ok(address: str, trust: bytes, cert: IssuedCert | None = None) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(
        trust, cert.key_pem if cert else None, cert.cert_pem if cert else None
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def _https_ok(url: str, context: ssl.SSLContext) -> bool:
    async with httpx.AsyncClient(verify=context, timeout=5) as client:
        try:
            response = await client.get(f"{url}/metrics")
        except httpx.HTTPError:
            return False
    return response.status_code == 200


def _context(trust: bytes, cert: IssuedCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=trust.decode())
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


async def _handshake(address: str, context: ssl.SSLContext, alpn: str = "http/1.1") -> str:
    """The TLS version negotiated, or raises ssl.SSLError / ConnectionError."""
    context.set_alpn_protocols([alpn])
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname="localhost"
    )
    version = str(writer.get_extra_info("ssl_object").version())
    writer.transport.abort()
    return version


async def test_clients_refuse_a_server_from_another_ca_and_an_expired_one(
    tmp_path: Path, ca: TestCA, other_ca: TestCA
) -> None:
    trusted = ca.cert_file.read_bytes()
    async with running_host(data_dir=tmp_path, plugins=[], http=True, tls=other_ca) as host:
        assert await _grpc_ok(host.address, trusted) == grpc.StatusCode.UNAVAILABLE
        assert not await _https_ok(host.http_url, _context(trusted))
        # Control: the CA that did sign it works.
        assert await _grpc_ok(host.address, other_ca.cert_file.read_bytes()) == grpc.StatusCode.OK
    # An expired server certificate is not served at all: start-up and reloads refuse
    # it (test_config, test_rotation).


async def test_mutual_tls_refuses_missing_foreign_and_expired_client_certificates(
    tmp_path: Path, ca: TestCA, other_ca: TestCA
) -> None:
    good = ca.issue("good", uris=("spiffe://acme/good",), client=True)
    foreign = other_ca.issue("foreign", uris=("spiffe://acme/good",), client=True)
    expired = ca.issue("expired", uris=("spiffe://acme/good",), client=True, expired=True)
    async with running_host(
        data_dir=tmp_path, plugins=[], http=True, tls=ca, client_auth="require"
    ) as host:
        trust = ca.cert_file.read_bytes()
        assert await _grpc_ok(host.address, trust, good) == grpc.StatusCode.OK
        assert await _https_ok(host.http_url, _context(trust, good))
        for cert in (None, foreign, expired):
            assert await _grpc_ok(host.address, trust, cert) == grpc.StatusCode.UNAVAILABLE
            assert not await _https_ok(host.http_url, _context(trust, cert))


def _old_client(trust: bytes, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = _context(trust)
    # Python's defaults refuse TLS < 1.2 on the client side too: allow it, so that the
    # refusal seen is the server's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def test_tls_1_0_and_1_1_are_refused_on_both_ports(tmp_path: Path, ca: TestCA) -> None:
    async with running_host(data_dir=tmp_path, plugins=[], http=True, tls=ca) as host:
        assert host.trust is not None
        for address, alpn in ((host.address, "h2"), (host.host.http_address, "http/1.1")):
            for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
                with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
                    await _handshake(address, _old_client(host.trust, old), alpn)
                # The server's answer (an alert or a reset), not the client library
                # declining to offer the version.
                assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)
            # The same client, allowed 1.2, gets through: the refusal was the version.
            assert (
                await _handshake(address, _old_client(host.trust, ssl.TLSVersion.TLSv1_2), alpn)
                == "TLSv1.2"
            )
            assert await _handshake(address, _context(host.trust), alpn) == "TLSv1.3"


async def test_min_version_1_3_refuses_tls_1_2_on_the_http_port(tmp_path: Path, ca: TestCA) -> None:
    server = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    http = HttpConfig(
        tls=TlsConfig(
            cert_file=str(server.cert_file), key_file=str(server.key_file), min_version="1.3"
        )
    )
    async with running_host(
        data_dir=tmp_path, plugins=[], http=http, trust=ca.cert_file.read_bytes()
    ) as host:
        assert host.trust is not None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(
                host.host.http_address, _old_client(host.trust, ssl.TLSVersion.TLSv1_2)
            )
        assert await _handshake(host.host.http_address, _context(host.trust)) == "TLSv1.3"


async def test_a_handshake_that_never_completes_is_closed(tmp_path: Path, ca: TestCA) -> None:
    http = HttpConfig(header_timeout=0.5)
    async with running_host(data_dir=tmp_path, plugins=[], http=http, tls=ca) as host:
        assert isinstance(host, RunningHost)
        hostname, port = host.host.http_address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(hostname, int(port))
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, never finished
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        writer.close()


async def test_the_header_timeout_holds_over_tls(tmp_path: Path, ca: TestCA) -> None:
    http = HttpConfig(header_timeout=0.5)
    async with running_host(data_dir=tmp_path, plugins=[], http=http, tls=ca) as host:
        assert host.trust is not None
        hostname, port = host.host.http_address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(
            hostname, int(port), ssl=_context(host.trust), server_hostname="localhost"
        )
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: local")  # headers never finished
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        writer.close()
