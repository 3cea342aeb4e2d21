"""Authorization, limits, metrics and audit, each over gRPC and REST where it applies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc
from probe.v1 import probe_pb2

from nexus_grpc.config import LimitsConfig
from nexus_grpc.testing import RunningHost, running_host
from tests.security.conftest import REPO, Client

CUSTOMER = ("orders.create:own", "orders.read:own", "orders.update:own")


def bearer(host: RunningHost, subject: str, grants: tuple[str, ...] = CUSTOMER) -> str:
    return f"Bearer {host.token(subject, grants=grants)}"


async def create_order(host: RunningHost, owner: str) -> str:
    stub = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token(owner, grants=CUSTOMER)))
    order = await stub.CreateOrder(
        orders_pb2.CreateOrderRequest(
            order=orders_pb2.Order(
                currency_code="EUR", items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)]
            )
        )
    )
    assert order.customer_id == owner  # the ownership hook filled it in
    return order.id


async def test_a_user_cannot_read_another_users_order(client: Client) -> None:
    order_id = await create_order(client.host, "alice")
    own = await client.get_order(bearer(client.host, "alice"), order_id)
    assert own.code == "OK"
    other = await client.get_order(bearer(client.host, "bob"), order_id)
    assert other.code == "PERMISSION_DENIED"
    # An order that does not exist gets the same answer: ids cannot be probed.
    missing = await client.get_order(bearer(client.host, "bob"), "no-such-order")
    assert missing.code == "PERMISSION_DENIED"
    if client.transport == "rest":
        assert other.http_status == 403
        assert other.body["details"][0]["reason"] == "NOT_OWNER"
    # An admin (scope all) reads any order.
    admin = await client.get_order(bearer(client.host, "root", ("*.*:all",)), order_id)
    assert admin.code == "OK"


async def test_listing_is_narrowed_to_the_callers_orders(secure_host: RunningHost) -> None:
    await create_order(secure_host, "alice")
    await create_order(secure_host, "bob")
    stub = orders_pb2_grpc.OrdersServiceStub(
        secure_host.channel(secure_host.token("bob", grants=CUSTOMER))
    )
    listed = await stub.ListOrders(orders_pb2.ListOrdersRequest())
    assert {o.customer_id for o in listed.orders} == {"bob"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(customer_id="alice"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_non_admin_cannot_call_admin_methods(client: Client) -> None:
    token = bearer(client.host, "alice")
    if client.transport == "grpc":
        outcome = await client.call(
            "/nexus.admin.v1.AdminService/ListPlugins",
            admin_pb2.ListPluginsRequest(),
            admin_pb2.ListPluginsResponse,
            token,
        )
        assert outcome.code == "PERMISSION_DENIED"
        retire = await client.call(
            "/nexus.admin.v1.AdminService/RetireIndexes",
            admin_pb2.RetireIndexesRequest(message_type="nexus.orders.v1.Order"),
            admin_pb2.RetireIndexesResponse,
            token,
        )
        assert retire.code == "PERMISSION_DENIED"
        return
    paths = ("/v1/admin/plugins", "/v1/admin/plugins/orders", "/v1/admin/audit", "/v1/users")
    for path in (*paths, "/v1/admin/indexes"):
        response = await client.http.get(path, headers={"authorization": token})
        assert response.status_code == 403, path
        assert response.json()["details"][0]["reason"] == "PERMISSION_REQUIRED"


async def test_a_method_without_policy_is_denied_even_to_admins(client: Client) -> None:
    admin = bearer(client.host, "root", ("*.*:all",))
    if client.transport == "grpc":
        outcome = await client.call(
            "/probe.v1.UnguardedService/Call",
            probe_pb2.CallRequest(),
            probe_pb2.CallResponse,
            admin,
        )
        assert outcome.code == "PERMISSION_DENIED"
        return
    response = await client.http.post(
        "/probe.v1.UnguardedService/Call", json={}, headers={"authorization": admin}
    )
    assert response.status_code == 403
    assert response.json()["details"][0]["reason"] == "NO_POLICY"


async def test_validation_failures_are_invalid_argument(client: Client) -> None:
    token = bearer(client.host, "alice")
    if client.transport == "grpc":
        stub = orders_pb2_grpc.OrdersServiceStub(client.host.channel())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateOrder(
                orders_pb2.CreateOrderRequest(
                    order=orders_pb2.Order(items=[orders_pb2.LineItem(quantity=0)])
                ),
                metadata=(("authorization", token),),
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    response = await client.http.post(
        "/v1/orders", json={"items": [{"quantity": 0}]}, headers={"authorization": token}
    )
    assert response.status_code == 400
    bad = next(d for d in response.json()["details"] if d["@type"].endswith("BadRequest"))
    assert {v["field"] for v in bad["fieldViolations"]} == {
        "order.items[0].sku",
        "order.items[0].quantity",
    }


@pytest.fixture
async def limited_host(tmp_path: Path) -> RunningHost:
    limits = LimitsConfig(
        rate_classes={
            "default": {"rate": 1000.0, "burst": 1000.0},
            # One token a second: none comes back between the calls that must be
            # refused, even on a slow machine.
            "login": {"rate": 1.0, "burst": 2.0},
        }
    )
    async with running_host(
        plugins=["auth", "orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        http=True,
        limits=limits,
    ) as host:
        yield host  # type: ignore[misc]


async def test_rate_limit_is_reached_and_recovers(limited_host: RunningHost) -> None:
    login = auth_pb2_grpc.AuthServiceStub(limited_host.channel())
    request = auth_pb2.LoginRequest(username="nobody", password="wrong password")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await login.Login(request)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await login.Login(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit of class 'login' reached" in (caught.value.details() or "")
    async with httpx.AsyncClient(base_url=limited_host.http_url) as http:
        limited = await http.post("/v1/auth/login", json={"username": "nobody", "password": "x"})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        await asyncio.sleep(1.05)  # one token a second: one is back
        recovered = await http.post("/v1/auth/login", json={"username": "nobody", "password": "x"})
        assert recovered.status_code == 401


async def test_metrics_count_calls_by_transport_and_code(secure_host: RunningHost) -> None:
    async with httpx.AsyncClient(base_url=secure_host.http_url) as http:
        await http.get("/v1/orders/x")  # 401 over REST
        await http.get(
            "/v1/orders/x", headers={"authorization": bearer(secure_host, "root", ("*.*:all",))}
        )  # 404
        stub = orders_pb2_grpc.OrdersServiceStub(secure_host.channel())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetOrder(orders_pb2.GetOrderRequest(id="x"))  # UNAUTHENTICATED over gRPC
        await http.get("/v2/unknown")
        text = (await http.get("/metrics")).text
    for code, transport in (
        ("Unauthenticated", "rest"),
        ("NotFound", "rest"),
        ("Unauthenticated", "grpc"),
    ):
        line = next(
            (
                row
                for row in text.splitlines()
                if row.startswith("grpc_server_handled_total{")
                and f'grpc_code="{code}"' in row
                and f'transport="{transport}"' in row
                and 'grpc_method="GetOrder"' in row
            ),
            None,
        )
        assert line is not None and line.endswith(" 1.0"), (code, transport)
        for label in (
            'grpc_service="nexus.orders.v1.OrdersService"',
            'grpc_type="unary"',
            'plugin="orders"',
        ):
            assert label in line
    assert 'nexus_server_unknown_method_total{transport="rest"} 1.0' in text
    assert "grpc_server_handling_seconds_bucket" in text


async def test_audit_records_denials_logins_and_admin_actions(secure_host: RunningHost) -> None:
    auth = auth_pb2_grpc.AuthServiceStub(secure_host.channel(secure_host.token("root")))
    await auth.CreateUser(
        auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username="carol", roles=["customer"]),
            password="a long enough password",
        )
    )
    anonymous = auth_pb2_grpc.AuthServiceStub(secure_host.channel())
    tokens = await anonymous.Login(
        auth_pb2.LoginRequest(username="carol", password="a long enough password")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await anonymous.Login(auth_pb2.LoginRequest(username="carol", password="wrong"))
    carol = admin_pb2_grpc.AdminServiceStub(secure_host.channel(tokens.access_token))
    with pytest.raises(grpc.aio.AioRpcError):
        await carol.ListPlugins(admin_pb2.ListPluginsRequest())
    admin = admin_pb2_grpc.AdminServiceStub(secure_host.channel(secure_host.token("root")))
    records = (
        await admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(page_size=100))
    ).records
    seen = {(r.actor, r.action, admin_pb2.Outcome.Name(r.outcome)) for r in records}
    assert ("carol", "auth.login", "OUTCOME_SUCCEEDED") in seen
    assert ("carol", "auth.login", "OUTCOME_DENIED") in seen
    assert ("carol", "call.denied", "OUTCOME_DENIED") in seen
    assert ("root", "admin.call", "OUTCOME_SUCCEEDED") in seen  # the CreateUser
    denial = next(r for r in records if r.action == "call.denied")
    assert denial.target == "/nexus.admin.v1.AdminService/ListPlugins"
    assert denial.request_id and denial.transport == "grpc" and denial.peer
    only_carol = await admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(actor="carol"))
    assert {r.actor for r in only_carol.records} == {"carol"}


async def test_login_refresh_whoami_and_refresh_reuse(secure_host: RunningHost) -> None:
    root = auth_pb2_grpc.AuthServiceStub(secure_host.channel(secure_host.token("root")))
    await root.CreateUser(
        auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username="dave", roles=["customer"]),
            password="another long password",
        )
    )
    anonymous = auth_pb2_grpc.AuthServiceStub(secure_host.channel())
    first = await anonymous.Login(
        auth_pb2.LoginRequest(username="dave", password="another long password")
    )
    me = await auth_pb2_grpc.AuthServiceStub(secure_host.channel(first.access_token)).WhoAmI(
        auth_pb2.WhoAmIRequest()
    )
    assert me.subject == "dave"
    assert set(me.permissions) == {"orders.create:own", "orders.read:own", "orders.update:own"}
    second = await anonymous.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
    assert second.access_token and second.refresh_token != first.refresh_token
    # Replaying a spent refresh token fails and ends every session of the user.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await anonymous.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError):
        await anonymous.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token))
