"""The contract and the behaviour agree at the REST edge (issue 9, class 16).

A registered custom verb at the end of a path is the verb, never part of a variable:
``PATCH /v1/orders/abc:cancel`` (only ``POST /v1/orders/{id}:cancel`` exists) is 405,
not ``UpdateOrder(id="abc:cancel")``, and OPTIONS and ``Allow`` list only the methods
that apply to that exact path. Violations name the request's own fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc

from nexus_grpc.config import HttpConfig
from nexus_grpc.testing import RunningHost, running_host
from tests.security.conftest import REPO

ORIGIN = "https://app.example"


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    async with running_host(
        plugins=["orders", "auth"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        http=HttpConfig(cors_origins=(ORIGIN,)),
    ) as host:
        yield host


@pytest.fixture
async def http(host: RunningHost) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=host.http_url,
        timeout=10,
        headers={"authorization": f"Bearer {host.token()}"},
    ) as client:
        yield client


async def _create(http: httpx.AsyncClient, order_id: str) -> None:
    created = await http.post(
        f"/v1/orders?orderId={order_id}",
        json={"customerId": "c", "currencyCode": "EUR", "items": [{"sku": "PEN-7", "quantity": 1}]},
    )
    assert created.status_code == 200, created.text


async def test_a_verb_of_another_method_is_405_not_a_variable(http: httpx.AsyncClient) -> None:
    await _create(http, "abc")
    patched = await http.patch(
        "/v1/orders/abc:cancel?updateMask=note", json={"note": "changed through the verb"}
    )
    assert patched.status_code == 405, patched.text
    assert patched.headers["allow"] == "POST"
    assert patched.json()["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    got = await http.get("/v1/orders/abc:cancel")
    assert got.status_code == 405
    assert (await http.get("/v1/orders/abc")).json().get("note", "") == ""
    # The verb's own method still works.
    cancelled = await http.post("/v1/orders/abc:cancel", json={"reason": "test"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "ORDER_STATUS_CANCELLED"


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/orders/abc:cancel", "POST, OPTIONS"),
        ("/v1/orders/abc", "GET, PATCH, OPTIONS"),
        ("/v1/orders", "GET, POST, OPTIONS"),
        ("/nexus.orders.v1.OrdersService/GetOrder", "POST, OPTIONS"),
        ("/v1/nothing", "OPTIONS"),
    ],
)
async def test_a_preflight_grants_only_the_methods_of_that_path(
    http: httpx.AsyncClient, path: str, methods: str
) -> None:
    preflight = await http.options(
        path,
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-methods"] == methods


async def test_options_without_a_preflight_lists_what_applies(http: httpx.AsyncClient) -> None:
    response = await http.options("/v1/orders/abc:cancel")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_a_missing_role_is_named_under_the_requests_own_field(host: RunningHost) -> None:
    auth = auth_pb2_grpc.AuthServiceStub(host.channel(host.token()))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await auth.CreateUser(
            auth_pb2.CreateUserRequest(
                user=auth_pb2.User(username="dora", roles=["nope"]),
                password="a long enough password",
            ),
            timeout=10,
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("user.roles[0]: role 'nope' does not exist")
