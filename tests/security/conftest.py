"""Hosts and clients for the security tests: the same call over gRPC and over REST."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = REPO / "tests" / "probe"


@dataclass
class Outcome:
    """What a client saw: the gRPC code name and, over REST, the HTTP status and headers."""

    code: str
    http_status: int = 0
    headers: httpx.Headers | None = None
    body: Any = None


@dataclass
class Client:
    """Calls GetOrder (and friends) over one transport with a raw Authorization value."""

    transport: str
    host: RunningHost
    http: httpx.AsyncClient

    async def get_order(
        self, authorization: str | None, order_id: str = "missing-order"
    ) -> Outcome:
        if self.transport == "grpc":
            stub = orders_pb2_grpc.OrdersServiceStub(self.host.channel())
            metadata = (("authorization", authorization),) if authorization is not None else ()
            try:
                await stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), metadata=metadata)
            except grpc.aio.AioRpcError as error:
                return Outcome(error.code().name)
            return Outcome("OK")
        headers = {"authorization": authorization} if authorization is not None else {}
        response = await self.http.get(f"/v1/orders/{order_id}", headers=headers)
        return _rest_outcome(response)

    async def call(
        self, path: str, request: Any, response_type: Any, authorization: str | None
    ) -> Outcome:
        """Any unary method by gRPC path; over REST through its default or annotated route."""
        metadata = (("authorization", authorization),) if authorization is not None else ()
        if self.transport == "grpc":
            method = self.host.channel().unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            try:
                reply = await method(request, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                return Outcome(error.code().name)
            return Outcome("OK", body=reply)
        raise NotImplementedError("use http directly for REST routes")


def _rest_outcome(response: httpx.Response) -> Outcome:
    body = response.json() if response.content else None
    code = "OK"
    if response.status_code != 200:
        code = next(c.name for c in grpc.StatusCode if c.value[0] == body["code"])
    return Outcome(code, response.status_code, response.headers, body)


@pytest.fixture
async def secure_host(tmp_path: Path, probe_stubs: Path) -> AsyncIterator[RunningHost]:
    """Orders, auth and the probe plugin (it has a service without policy), HTTP on."""
    async with running_host(
        plugins=["orders", "auth", "probe"],
        plugin_dirs=[REPO / "plugins", PROBE_DIR],
        data_dir=tmp_path,
        http=True,
    ) as host:
        yield host


@pytest.fixture(params=["grpc", "rest"])
async def client(request: pytest.FixtureRequest, secure_host: RunningHost) -> AsyncIterator[Client]:
    """The same checks over each transport."""
    async with httpx.AsyncClient(base_url=secure_host.http_url, timeout=10) as http:
        yield Client(request.param, secure_host, http)


class Forger:
    """Makes tokens for a host: valid ones, and every kind of broken one."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "nexus",
            "aud": "nexus",
            "sub": "mallory",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "j1",
            "typ": "access",
            "roles": [],
            "perms": ["*.*:all"],
            "team": "",
        }
        for key, value in changes.items():
            if value is _DROP:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def token(self, **changes: Any) -> str:
        return jwt.encode(self.claims(**changes), self.secret, algorithm="HS256")


_DROP = object()
DROP = _DROP


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


@pytest.fixture
def forger(secure_host: RunningHost) -> Forger:
    """A forger holding the host's own HMAC secret (it generated it in its data dir)."""
    secret = Path(secure_host.host.config.data_dir, "jwt-hs256.key").read_bytes()
    return Forger(secret)
