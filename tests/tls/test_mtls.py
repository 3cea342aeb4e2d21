"""Mutual TLS: a verified client certificate is a principal the access policies judge.

The orders plugin's ListOrders needs ``orders.read``; ``[auth.clients]`` grants it to one
SPIFFE identity and nothing to another. Both ports, REST and gRPC-Web included.
"""

from __future__ import annotations

import struct
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import AuthConfig, ClientIdentityConfig, HttpConfig, TlsConfig
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.tls.certs import IssuedCert, TestCA

from .conftest import REPO

READER = "spiffe://acme/reporting"
NOBODY = "spiffe://acme/nobody"


def _auth(precedence: str = "token") -> AuthConfig:
    return AuthConfig(
        clients={
            READER: ClientIdentityConfig(grants=("orders.read:all",), roles=("reporting",)),
            NOBODY: ClientIdentityConfig(),
        },
        identity_precedence=precedence,
    )


def _mtls_host(tmp_path: Path, ca: TestCA, precedence: str = "token") -> object:
    return running_host(
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        http=True,
        tls=ca,
        client_auth="require",
        auth=_auth(precedence),
    )


async def _grpc_list(
    host: RunningHost, cert: IssuedCert, token: str | None = None
) -> grpc.StatusCode:
    stub = orders_pb2_grpc.OrdersServiceStub(host.channel(token, client_cert=cert))
    try:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _rest_list(host: RunningHost, cert: IssuedCert, token: str | None = None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(verify=host.ssl_context(cert), timeout=10) as client:
        response = await client.get(f"{host.http_url}/v1/orders", headers=headers)
    return response.status_code


async def _grpc_web_list(host: RunningHost, cert: IssuedCert) -> str:
    body = b"\x00" + struct.pack(">I", 0)
    async with httpx.AsyncClient(verify=host.ssl_context(cert), timeout=10) as client:
        response = await client.post(
            f"{host.http_url}/nexus.orders.v1.OrdersService/ListOrders",
            content=body,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert response.status_code == 200
    return response.headers.get("grpc-status") or _trailer_status(response.content)


def _trailer_status(raw: bytes) -> str:
    while raw:
        flag, length = raw[0], struct.unpack(">I", raw[1:5])[0]
        payload, raw = raw[5 : 5 + length], raw[5 + length :]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "grpc-status":
                    return value.strip()
    return ""


async def test_a_listed_certificate_is_allowed_and_denied_by_policy(
    tmp_path: Path, ca: TestCA
) -> None:
    reader = ca.issue("reporting", uris=(READER,), client=True)
    nobody = ca.issue("nobody", uris=(NOBODY,), client=True)
    async with _mtls_host(tmp_path, ca) as host:
        assert isinstance(host, RunningHost)
        assert await _grpc_list(host, reader) == grpc.StatusCode.OK
        assert await _rest_list(host, reader) == 200
        assert await _grpc_web_list(host, reader) == "0"
        assert await _grpc_list(host, nobody) == grpc.StatusCode.PERMISSION_DENIED
        assert await _rest_list(host, nobody) == 403
        assert await _grpc_web_list(host, nobody) == str(grpc.StatusCode.PERMISSION_DENIED.value[0])


async def test_an_unlisted_certificate_is_no_identity(tmp_path: Path, ca: TestCA) -> None:
    stranger = ca.issue("stranger", uris=("spiffe://acme/stranger",), client=True)
    async with _mtls_host(tmp_path, ca) as host:
        assert isinstance(host, RunningHost)
        stub = orders_pb2_grpc.OrdersServiceStub(host.channel(client_cert=stranger))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListOrders(orders_pb2.ListOrdersRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "spiffe://acme/stranger" in (refused.value.details() or "")
        assert await _rest_list(host, stranger) == 401
        # A token still works on a connection whose certificate names nobody listed.
        assert await _rest_list(host, stranger, host.token()) == 200


@pytest.mark.parametrize(
    ("precedence", "grpc_code", "http_status"),
    [("token", grpc.StatusCode.PERMISSION_DENIED, 403), ("certificate", grpc.StatusCode.OK, 200)],
)
async def test_identity_precedence_decides_between_token_and_certificate(
    tmp_path: Path,
    ca: TestCA,
    precedence: str,
    grpc_code: grpc.StatusCode,
    http_status: int,
) -> None:
    reader = ca.issue("reporting", uris=(READER,), client=True)
    async with _mtls_host(tmp_path, ca, precedence) as host:
        assert isinstance(host, RunningHost)
        # The token may create orders but not read them; the certificate may read.
        token = host.token("writer", grants=("orders.create:own",))
        assert await _grpc_list(host, reader, token) == grpc_code
        assert await _rest_list(host, reader, token) == http_status


async def test_optional_client_certificates_on_the_http_port(tmp_path: Path, ca: TestCA) -> None:
    server = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    reader = ca.issue("reporting", uris=(READER,), client=True)
    http = HttpConfig(
        tls=TlsConfig(
            cert_file=str(server.cert_file),
            key_file=str(server.key_file),
            client_ca_file=str(ca.cert_file),
            client_auth="optional",
        )
    )
    async with running_host(
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        http=http,
        auth=_auth(),
        trust=ca.cert_file.read_bytes(),
    ) as host:
        assert await _rest_list(host, reader) == 200
        async with httpx.AsyncClient(verify=host.ssl_context(), timeout=10) as client:
            anonymous = await client.get(f"{host.http_url}/v1/orders")
            with_token = await client.get(
                f"{host.http_url}/v1/orders", headers={"authorization": f"Bearer {host.token()}"}
            )
        assert anonymous.status_code == 401
        assert with_token.status_code == 200


async def test_a_dns_certificate_identity_is_never_a_user(tmp_path: Path, ca: TestCA) -> None:
    # A certificate whose DNS SAN reads like the user name "alice": its principal is
    # "dns:alice", so it does not own alice's orders.
    impostor = ca.issue("alice", dns=("alice",), client=True)
    auth = AuthConfig(clients={"dns:alice": ClientIdentityConfig(grants=("orders.read:own",))})
    async with running_host(
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        tls=ca,
        client_auth="require",
        auth=auth,
    ) as host:
        alice = host.token("alice", grants=("orders.create:own", "orders.read:own"))
        as_alice = orders_pb2_grpc.OrdersServiceStub(host.channel(alice, client_cert=impostor))
        created = await as_alice.CreateOrder(
            orders_pb2.CreateOrderRequest(
                order=orders_pb2.Order(items=[orders_pb2.LineItem(sku="BOOK-1", quantity=1)])
            ),
            timeout=10,
        )
        assert created.customer_id == "alice"
        as_cert = orders_pb2_grpc.OrdersServiceStub(host.channel(client_cert=impostor))
        listed = await as_cert.ListOrders(orders_pb2.ListOrdersRequest(), timeout=10)
        assert list(listed.orders) == []
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await as_cert.GetOrder(orders_pb2.GetOrderRequest(id=created.id), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await as_cert.ListOrders(orders_pb2.ListOrdersRequest(customer_id="alice"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
