"""Certificates replaced on disk reach new connections while calls go on; expiry is reported."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.config import LimitsConfig, TlsConfig
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.tls.certs import IssuedCert, TestCA

from .conftest import REPO

CLIENTS = 3
# Calls each client makes at most: bounds the test whatever happens.
MAX_CALLS = 3000


def _server_cert(ca: TestCA) -> IssuedCert:
    return ca.issue(
        "server", dns=("localhost",), ips=("127.0.0.1",), directory=ca.directory / "live"
    )


async def _serial(address: str, trust: bytes, alpn: str) -> int:
    """Serial of the certificate a new connection to ``address`` is shown."""
    context = ssl.create_default_context(cadata=trust.decode())
    context.set_alpn_protocols([alpn])
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.transport.abort()
    return x509.load_der_x509_certificate(der).serial_number


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One keep-alive GET /metrics on an open connection; its status."""
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _until_serial(host: RunningHost, serial: int, *, within: float = 15.0) -> None:
    """Wait until new connections to both ports are shown the certificate ``serial``."""
    assert host.trust is not None
    deadline = time.monotonic() + within
    for address, alpn in ((host.address, "h2"), (host.host.http_address, "http/1.1")):
        while await _serial(address, host.trust, alpn) != serial:
            assert time.monotonic() < deadline, f"{address} still serves the old certificate"
            await asyncio.sleep(0.05)


async def test_a_certificate_rotated_under_load_fails_no_call(tmp_path: Path, ca: TestCA) -> None:
    first = _server_cert(ca)
    tls = TlsConfig(
        cert_file=str(first.cert_file), key_file=str(first.key_file), reload_interval=0.2
    )
    # Six clients share two rate-limit buckets (one peer, one principal): a quiet machine
    # outruns the default 100 calls/s, and this test is about rotation, not rate limits.
    unlimited = {**LimitsConfig().rate_classes, "default": {"rate": 1e6, "burst": 1e6}}
    async with running_host(
        data_dir=tmp_path,
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        http=True,
        tls=tls,
        trust=ca.cert_file.read_bytes(),
        limits=LimitsConfig(rate_classes=unlimited),
    ) as host:
        assert host.trust is not None
        await _until_serial(host, first.serial)
        bearer = {"authorization": f"Bearer {host.token()}"}
        failures: list[str] = []
        calls = [0] * (2 * CLIENTS)
        rotated = asyncio.Event()
        warm = asyncio.Event()  # every client has made 20 calls

        def count(index: int) -> None:
            calls[index] += 1
            if min(calls) >= 20:
                warm.set()

        after = [0] * (2 * CLIENTS)

        async def grpc_client(index: int) -> None:
            stub = health_pb2_grpc.HealthStub(host.channel())
            for _ in range(MAX_CALLS):
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                except grpc.aio.AioRpcError as error:
                    failures.append(f"grpc: {error.code()} {error.details()}")
                count(index)
                if rotated.is_set():
                    after[index] += 1
                    if after[index] >= 50:
                        return

        async def http_client(index: int) -> None:
            async with httpx.AsyncClient(verify=host.ssl_context(), timeout=10) as client:
                for _ in range(MAX_CALLS):
                    try:
                        response = await client.get(f"{host.http_url}/v1/orders", headers=bearer)
                        if response.status_code != 200:
                            failures.append(f"http: {response.status_code}")
                    except httpx.HTTPError as error:
                        failures.append(f"http: {error!r}")
                    count(index)
                    if rotated.is_set():
                        after[index] += 1
                        if after[index] >= 50:
                            return

        # An HTTP connection opened before the rotation, used after it.
        hostname, port = host.host.http_address.rsplit(":", 1)
        context = host.ssl_context()
        reader, writer = await asyncio.open_connection(
            hostname, int(port), ssl=context, server_hostname="localhost"
        )
        assert await _get(reader, writer) == 200
        tasks = [asyncio.create_task(grpc_client(i)) for i in range(CLIENTS)]
        tasks += [asyncio.create_task(http_client(CLIENTS + i)) for i in range(CLIENTS)]
        await asyncio.wait_for(warm.wait(), timeout=30)
        second = _server_cert(ca)  # the same files, replaced (renamed over)
        await _until_serial(host, second.serial)
        rotated.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        assert failures == []
        assert min(after) >= 50
        # The connection from before still has the old certificate, and still works.
        old = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert x509.load_der_x509_certificate(old).serial_number == first.serial
        assert await _get(reader, writer) == 200
        writer.close()


async def test_a_broken_new_file_keeps_the_old_certificate(
    tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    first = _server_cert(ca)
    tls = TlsConfig(cert_file=str(first.cert_file), key_file=str(first.key_file), reload_interval=0)
    async with running_host(
        data_dir=tmp_path, plugins=[], http=True, tls=tls, trust=ca.cert_file.read_bytes()
    ) as host:
        # A new certificate whose key has not been written yet: half a rotation.
        other = ca.issue("other", dns=("localhost",), ips=("127.0.0.1",))
        first.cert_file.write_bytes(other.cert_pem)
        with caplog.at_level(logging.WARNING, logger="nexus.tls"):
            assert await host.host.reload_tls() == 0
        assert "is not the key of the certificate" in caplog.text
        await _until_serial(host, first.serial, within=0)
        first.key_file.write_bytes(other.key_pem)
        assert await host.host.reload_tls() == 2
        await _until_serial(host, other.serial, within=0)


@pytest.mark.parametrize(
    ("when", "message"), [("expired", "expired at"), ("not_yet_valid", "is not valid before")]
)
async def test_a_reload_refuses_a_certificate_out_of_its_validity(
    tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture, when: str, message: str
) -> None:
    first = _server_cert(ca)
    tls = TlsConfig(cert_file=str(first.cert_file), key_file=str(first.key_file), reload_interval=0)
    async with running_host(
        data_dir=tmp_path, plugins=[], http=True, tls=tls, trust=ca.cert_file.read_bytes()
    ) as host:
        # Key and certificate written whole and matching, but not valid now.
        ca.issue(
            "server",
            dns=("localhost",),
            ips=("127.0.0.1",),
            directory=ca.directory / "live",
            **{when: True},
        )
        with caplog.at_level(logging.WARNING, logger="nexus.tls"):
            assert await host.host.reload_tls() == 0
            assert await host.host.reload_tls() == 0
        refusals = [r.getMessage() for r in caplog.records if message in r.getMessage()]
        # Once per port (gRPC and HTTP), not once per poll.
        assert len(refusals) == 2, refusals
        assert all(f"still serving serial {first.serial:x}" in text for text in refusals)
        await _until_serial(host, first.serial, within=0)


async def test_expiry_is_a_metric_and_a_health_warning(tmp_path: Path, ca: TestCA) -> None:
    server = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",), days=10)
    tls = TlsConfig(
        cert_file=str(server.cert_file), key_file=str(server.key_file), expiry_warning_days=14
    )
    async with running_host(
        data_dir=tmp_path, plugins=[], http=True, tls=tls, trust=ca.cert_file.read_bytes()
    ) as host:
        async with httpx.AsyncClient(verify=host.ssl_context(), timeout=10) as client:
            metrics = (await client.get(f"{host.http_url}/metrics")).text
        samples = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("nexus_tls_certificate_expiry_seconds{")
        }
        assert set(samples) == {'port="grpc"', 'port="http"'}
        for seconds in samples.values():
            assert 9 * 86400 < seconds <= 10 * 86400
        health = health_pb2_grpc.HealthStub(host.channel())
        # Inside the warning window: nexus.tls says so, the host as a whole serves on.
        tls_health = await health.Check(health_pb2.HealthCheckRequest(service="nexus.tls"))
        overall = await health.Check(health_pb2.HealthCheckRequest())
        assert tls_health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert overall.status == health_pb2.HealthCheckResponse.SERVING
        # A certificate far from expiry clears the warning.
        renewed = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",), days=90)
        assert renewed.cert_file == server.cert_file
        assert await host.host.reload_tls() == 2
        tls_health = await health.Check(health_pb2.HealthCheckRequest(service="nexus.tls"))
        assert tls_health.status == health_pb2.HealthCheckResponse.SERVING
