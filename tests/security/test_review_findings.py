"""Regression tests for the second security review's findings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.access.policy import Access, EffectivePolicy
from nexus_grpc.auth.principal import Grant, Principal, Scope, principal_var
from nexus_grpc.config import AuthConfig, LimitsConfig
from nexus_grpc.errors import StatusError
from nexus_grpc.gateway.grpcweb import encode_frame
from nexus_grpc.pipeline.auth import AccessStage
from nexus_grpc.routing import Arity, InFlight, MethodInfo
from nexus_grpc.testing import RunningHost, running_host
from tests.security.conftest import REPO

CUSTOMER = ("orders.create:own", "orders.read:own", "orders.update:own")


async def test_a_customer_cannot_hand_an_order_to_another_customer(
    secure_host: RunningHost,
) -> None:
    stub = orders_pb2_grpc.OrdersServiceStub(
        secure_host.channel(secure_host.token("mallory", grants=CUSTOMER))
    )
    order = await stub.CreateOrder(
        orders_pb2.CreateOrderRequest(
            order=orders_pb2.Order(
                currency_code="EUR", items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)]
            )
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateOrder(
            orders_pb2.UpdateOrderRequest(
                order=orders_pb2.Order(id=order.id, customer_id="alice", note="gift"),
                update_mask=field_mask_pb2.FieldMask(paths=["customer_id", "note"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_confirmed_orders_items_cannot_change(tmp_path: Path) -> None:
    async with running_host(
        plugins=["orders", "inventory"], plugin_dirs=[REPO / "plugins"], data_dir=tmp_path
    ) as host:
        channel = host.channel(host.token())
        await inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(
            inventory_pb2.SetStockRequest(sku="PEN-7", available=1)
        )
        orders = orders_pb2_grpc.OrdersServiceStub(channel)
        order = await orders.CreateOrder(
            orders_pb2.CreateOrderRequest(
                order=orders_pb2.Order(
                    customer_id="c",
                    currency_code="EUR",
                    items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)],
                )
            )
        )
        for _ in range(100):
            current = await orders.GetOrder(orders_pb2.GetOrderRequest(id=order.id))
            if current.status == orders_pb2.ORDER_STATUS_CONFIRMED:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orders.UpdateOrder(
                orders_pb2.UpdateOrderRequest(
                    order=orders_pb2.Order(
                        id=order.id, items=[orders_pb2.LineItem(sku="PEN-7", quantity=10000)]
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["items"]),
                )
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        note = await orders.UpdateOrder(
            orders_pb2.UpdateOrderRequest(
                order=orders_pb2.Order(id=order.id, note="still fine"),
                update_mask=field_mask_pb2.FieldMask(paths=["note"]),
            )
        )
        assert note.note == "still fine"


async def test_a_flood_of_bad_tokens_does_not_flood_the_audit_log(secure_host: RunningHost) -> None:
    async with httpx.AsyncClient(base_url=secure_host.http_url) as http:
        for _ in range(80):
            response = await http.get("/v1/orders/x", headers={"authorization": "Bearer junk"})
            assert response.status_code == 401
    admin = admin_pb2_grpc.AdminServiceStub(secure_host.channel(secure_host.token("root")))
    records = await admin.ListAuditRecords(
        admin_pb2.ListAuditRecordsRequest(action="call.denied", page_size=1000)
    )
    assert 0 < len(records.records) <= 30


async def test_grpc_web_stream_ends_when_the_client_leaves(secure_host: RunningHost) -> None:
    record = secure_host.host.plugins.record("orders")
    assert record is not None
    body = encode_frame(0, orders_pb2.WatchOrdersRequest().SerializeToString())
    async with httpx.AsyncClient(base_url=secure_host.http_url) as http:
        await http.post(
            "/v1/orders",
            json={
                "customerId": "w",
                "currencyCode": "EUR",
                "items": [{"sku": "PEN-7", "quantity": 1}],
            },
            headers={"authorization": f"Bearer {secure_host.token()}"},
        )
        async with http.stream(
            "POST",
            "/nexus.orders.v1.OrdersService/WatchOrders",
            content=encode_frame(
                0, orders_pb2.WatchOrdersRequest(include_existing=True).SerializeToString()
            ),
            headers={
                "content-type": "application/grpc-web+proto",
                "authorization": f"Bearer {secure_host.token()}",
            },
        ) as response:
            async for _ in response.aiter_bytes():
                break
            assert record.in_flight.count == 1
    assert body
    assert await record.in_flight.wait_idle(5)


async def test_x_forwarded_for_does_not_change_the_rate_limit_key(tmp_path: Path) -> None:
    limits = LimitsConfig(
        rate_classes={
            "default": {"rate": 1000.0, "burst": 1000.0},
            "login": {"rate": 0.1, "burst": 2.0},
        }
    )
    async with (
        running_host(
            plugins=["auth"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path,
            http=True,
            limits=limits,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as http,
    ):
        codes = [
            (
                await http.post(
                    "/v1/auth/login",
                    json={"username": "u", "password": "p"},
                    headers={"x-forwarded-for": f"10.0.0.{i}"},
                )
            ).status_code
            for i in range(4)
        ]
    assert codes == [401, 401, 429, 429]


async def test_streamed_requests_get_no_scoped_grants() -> None:
    from nexus.orders.v1 import orders_pb2 as pb

    called: list[Any] = []

    async def owns(check: Any) -> bool:
        called.append(check)
        return True

    async def handler(request: Any, context: Any) -> str:
        return "handled"

    descriptor = pb.DESCRIPTOR.services_by_name["OrdersService"].methods_by_name["GetOrder"]
    info = MethodInfo(
        "/x.v1.S/Stream",
        "p",
        descriptor,
        Arity.STREAM_UNARY,
        InFlight(),
        policy=EffectivePolicy(
            path="/x.v1.S/Stream",
            access=Access.PERMISSION,
            resource="orders",
            action="read",
            scope=Scope.OWN,
        ),
        ownership=owns,
        category="business",
    )
    bound = AccessStage(None).bind(info, handler)
    principal_var.set(Principal("alice", grants=frozenset({Grant("orders", "read", Scope.OWN)})))
    with pytest.raises(StatusError) as caught:
        await bound(object(), object())
    assert caught.value.reason == "NOT_OWNER"
    assert called == []
    principal_var.set(Principal("root", grants=frozenset({Grant("orders", "read", Scope.ALL)})))
    assert await bound(object(), object()) == "handled"


async def test_only_listed_plugins_get_the_token_issuer(tmp_path: Path) -> None:
    folder = tmp_path / "plugins" / "rogue"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        'name = "rogue"\nversion = "1"\ncategory = "security"\ndescription = "x"\n'
    )
    (folder / "__init__.py").write_text(
        "from nexus_grpc import Plugin\nseen = []\n"
        "def start(ctx):\n    seen.append(ctx.tokens)\n"
        "plugin = Plugin(on_start=start)\n"
    )
    async with running_host(plugin_dirs=[tmp_path / "plugins"], data_dir=tmp_path / "d"):
        import sys

        assert sys.modules["nexus_plugins.rogue"].seen == [None]


def _plugin_recording_tokens(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        f'name = "{name}"\nversion = "1"\ncategory = "security"\ndescription = "x"\n'
    )
    (folder / "__init__.py").write_text(
        "from nexus_grpc import Plugin\nseen = []\n"
        "def start(ctx):\n    seen.append(ctx.tokens)\n"
        "plugin = Plugin(on_start=start)\n"
    )
    return root


async def test_a_plugin_merely_named_auth_gets_no_token_issuer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    # By default only the bundled auth plugin mints tokens: an installed plugin that calls
    # itself "auth" could otherwise make itself an admin.
    plugins = _plugin_recording_tokens(tmp_path / "plugins", "auth")
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d"):
        assert sys.modules["nexus_plugins.auth"].seen == [None]
    del sys.modules["nexus_plugins.auth"]
    # Named by the operator, it gets the issuer, and the start-up log says so.
    with caplog.at_level("WARNING", logger="nexus.plugins"):
        async with running_host(
            plugin_dirs=[plugins],
            data_dir=tmp_path / "e",
            auth=AuthConfig(issuer_plugins=("auth",)),
        ):
            assert sys.modules["nexus_plugins.auth"].seen[0] is not None
    del sys.modules["nexus_plugins.auth"]
    assert f"plugin 'auth' ({plugins / 'auth'}) may mint tokens for any user" in caplog.text


async def test_the_bundled_auth_plugin_gets_the_token_issuer(tmp_path: Path) -> None:
    async with running_host(
        plugins=["auth"], bundled=["auth"], plugin_dirs=(), data_dir=tmp_path
    ) as host:
        record = host.host.plugins.record("auth")
        assert record is not None and record.context is not None
        assert record.context.tokens is not None


async def test_issuer_plugins_add_to_the_bundled_auth_plugin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    # Listing another plugin gives it the issuer too; the bundled auth plugin keeps its
    # own (logins, session revocation), it is not replaced.
    plugins = _plugin_recording_tokens(tmp_path / "plugins", "minter")
    with caplog.at_level("WARNING", logger="nexus.plugins"):
        async with running_host(
            plugins=["auth", "minter"],
            bundled=["auth"],
            plugin_dirs=[plugins],
            data_dir=tmp_path / "d",
            auth=AuthConfig(issuer_plugins=("minter",)),
        ) as host:
            record = host.host.plugins.record("auth")
            assert record is not None and record.context is not None
            assert record.context.tokens is not None
            assert record.state == "SERVING"
            assert sys.modules["nexus_plugins.minter"].seen[0] is not None
            # The bundled auth plugin answers logins (a wrong password, not a failed plugin).
            stub = auth_pb2_grpc.AuthServiceStub(host.channel())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Login(auth_pb2.LoginRequest(username="nobody", password="wrong"))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    del sys.modules["nexus_plugins.minter"]
    assert f"plugin 'minter' ({plugins / 'minter'}) may mint tokens for any user" in caplog.text
    assert "plugin 'auth'" not in caplog.text


async def test_user_managers_cannot_hand_out_roles(secure_host: RunningHost) -> None:
    helpdesk = auth_pb2_grpc.AuthServiceStub(
        secure_host.channel(secure_host.token("helpdesk", grants=("users.manage:all",)))
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await helpdesk.CreateUser(
            auth_pb2.CreateUserRequest(
                user=auth_pb2.User(username="evil", roles=["admin"]),
                password="long enough password",
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    plain = await helpdesk.CreateUser(
        auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username="plain"), password="long enough password"
        )
    )
    assert list(plain.roles) == []


async def test_a_parameter_given_under_two_spellings_is_refused(secure_host: RunningHost) -> None:
    async with httpx.AsyncClient(
        base_url=secure_host.http_url, headers={"authorization": f"Bearer {secure_host.token()}"}
    ) as http:
        response = await http.get("/v1/orders", params=[("pageSize", "1"), ("page_size", "2000")])
    assert response.status_code == 400
    assert "given more than once" in response.text


async def test_grpc_web_does_not_forward_proxy_headers(
    tmp_path: Path, transcode_stubs: Path
) -> None:
    from transcode.v1 import transcode_pb2 as pb

    from nexus_grpc.gateway.grpcweb import decode_frames

    async with (
        running_host(
            plugins=["transcode"],
            plugin_dirs=[REPO / "tests" / "gateway" / "plugins"],
            data_dir=tmp_path,
            http=True,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as http,
    ):
        response = await http.post(
            "/transcode.v1.TranscodeService/Inspect",
            content=encode_frame(0, pb.InspectRequest().SerializeToString()),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-forwarded-for": "6.6.6.6",
                "tenant": "acme",
            },
        )
    reply = pb.InspectResponse.FromString(decode_frames(response.content)[0][1])
    assert reply.metadata["tenant"] == "acme"
    assert "x-forwarded-for" not in reply.metadata
