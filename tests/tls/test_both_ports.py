"""TLS on the gRPC port and the HTTP port, with clients that only speak TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.testing import running_host
from nexus_grpc.tls.certs import TestCA

from .conftest import REPO


async def test_grpc_and_rest_answer_over_tls_and_refuse_plaintext(
    tmp_path: Path, ca: TestCA
) -> None:
    async with running_host(
        plugins=["orders"], plugin_dirs=[REPO / "plugins"], data_dir=tmp_path, http=True, tls=ca
    ) as host:
        health = health_pb2_grpc.HealthStub(host.channel())
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert host.http_url.startswith("https://")
        token = host.token()
        async with httpx.AsyncClient(verify=host.ssl_context(), timeout=10) as client:
            listed = await client.get(
                f"{host.http_url}/v1/orders", headers={"authorization": f"Bearer {token}"}
            )
        assert listed.status_code == 200, listed.text
        # A plaintext client gets no answer from either port.
        async with grpc.aio.insecure_channel(host.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(plain).Check(
                    health_pb2.HealthCheckRequest(), timeout=3
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://{host.host.http_address}/v1/orders")


async def test_the_grpc_port_negotiates_h2_and_the_http_port_http11(
    tmp_path: Path, ca: TestCA
) -> None:
    async with running_host(data_dir=tmp_path, plugins=[], http=True, tls=ca) as host:
        for address, offered, expected in (
            (host.address, ["h2", "http/1.1"], "h2"),
            (host.host.http_address, ["h2", "http/1.1"], "http/1.1"),
        ):
            context = ssl.create_default_context(cadata=host.trust.decode() if host.trust else None)
            context.set_alpn_protocols(offered)
            hostname, port = address.rsplit(":", 1)
            _, writer = await asyncio.open_connection(
                hostname, int(port), ssl=context, server_hostname="localhost"
            )
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == expected
            # The gRPC server has sent its SETTINGS already: a clean TLS close would
            # meet unread data. Only the handshake matters here.
            writer.transport.abort()
