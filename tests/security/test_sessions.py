"""Identity changes take effect on tokens already issued, at once, on every instance.

Roles changed, user disabled, deleted, or logged out everywhere: the user's access and
refresh tokens stop working within a second, on the instance that made the change
and on another one sharing its storage and Redis. The last administrator cannot be
removed. Over gRPC, REST and the ``nexus users`` command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.options.v1 import options_pb2
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import AuthConfig, CacheConfig
from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from nexus_grpc.testing import RunningHost, running_host
from tests.fixtures.cli import run_cli

PASSWORD = "correct horse battery"
#: The bound the issue asks for is one second; polls stop at twice that so a loaded
#: 2-core machine does not flake, and the Redis path normally takes milliseconds.
PROPAGATION_BOUND = 2.0


@dataclass
class Session:
    """A logged-in user's tokens."""

    access: str
    refresh: str


def stub(host: RunningHost, token: str | None = None) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(host.channel(token))


async def login(host: RunningHost, username: str) -> Session:
    tokens = await stub(host).Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
    return Session(tokens.access_token, tokens.refresh_token)


async def who(host: RunningHost, token: str) -> grpc.StatusCode:
    """The status of WhoAmI with ``token`` on ``host``."""
    try:
        await stub(host).WhoAmI(
            auth_pb2.WhoAmIRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def refused_within(host: RunningHost, token: str, seconds: float) -> float:
    """Seconds until ``token`` is refused on ``host``; fails after ``seconds``."""
    started = time.monotonic()
    for _ in range(1000):
        code = await who(host, token)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return time.monotonic() - started
        assert code == grpc.StatusCode.OK
        if time.monotonic() - started > seconds:
            break
        await asyncio.sleep(0.01)
    raise AssertionError(f"token still accepted after {seconds}s")


async def create_user(host: RunningHost, admin: str, username: str, *roles: str) -> None:
    await stub(host, admin).CreateUser(
        auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username=username, roles=roles), password=PASSWORD
        )
    )


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    async with running_host(plugins=["auth"], data_dir=tmp_path, http=True) as running:
        yield running


def root(host: RunningHost) -> str:
    """An operator token (no user record: not subject to epochs, not an administrator)."""
    return host.token("root", grants=("*.*:all",))


async def test_a_demoted_admin_cannot_use_its_old_token_to_regain_admin(
    host: RunningHost,
) -> None:
    await create_user(host, root(host), "alice", "admin")
    await create_user(host, root(host), "bob", "admin")
    alice = await login(host, "alice")
    bob = await login(host, "bob")
    # Alice's token works, and is cached as good by the host.
    assert await who(host, alice.access) == grpc.StatusCode.OK
    await stub(host, bob.access).SetUserRoles(
        auth_pb2.SetUserRolesRequest(username="alice", roles=["customer"])
    )
    # At once (no poll): the change was made on this instance.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(host, alice.access).SetUserRoles(
            auth_pb2.SetUserRolesRequest(username="alice", roles=["admin"])
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # REST: the same token is refused with 401 and the reason.
    async with httpx.AsyncClient(base_url=host.http_url) as http:
        response = await http.post(
            "/v1/users/alice:setRoles",
            json={"roles": ["admin"]},
            headers={"authorization": f"Bearer {alice.access}"},
        )
        assert response.status_code == 401
        assert response.json()["details"][0]["reason"] == "SESSION_REVOKED"
        # gRPC-Web: the same status in the trailer frame.
        web = await http.post(
            "/nexus.auth.v1.AuthService/SetUserRoles",
            content=encode_frame(
                0,
                auth_pb2.SetUserRolesRequest(username="alice", roles=["admin"]).SerializeToString(),
            ),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "authorization": f"Bearer {alice.access}",
            },
        )
        trailer = decode_frames(web.content)[-1]
        assert trailer[0] == 0x80
        assert b"grpc-status:16" in trailer[1]
    # Her refresh token is void too; a new login gets a customer token.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(host).Refresh(auth_pb2.RefreshRequest(refresh_token=alice.refresh))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    fresh = await login(host, "alice")
    me = await stub(host, fresh.access).WhoAmI(auth_pb2.WhoAmIRequest())
    assert list(me.roles) == ["customer"]
    users = await stub(host, bob.access).ListUsers(auth_pb2.ListUsersRequest())
    assert {u.username: list(u.roles) for u in users.users}["alice"] == ["customer"]


@pytest.mark.parametrize("change", ["disable", "delete", "revoke"])
async def test_disable_delete_and_revoke_void_access_and_refresh_tokens(
    host: RunningHost, change: str
) -> None:
    await create_user(host, root(host), "carol", "customer")
    carol = await login(host, "carol")
    assert await who(host, carol.access) == grpc.StatusCode.OK
    admin = stub(host, root(host))
    if change == "disable":
        user = await admin.DisableUser(auth_pb2.DisableUserRequest(username="carol"))
        assert user.disabled
    elif change == "delete":
        await admin.DeleteUser(auth_pb2.DeleteUserRequest(username="carol"))
    else:
        await admin.RevokeSessions(auth_pb2.RevokeSessionsRequest(username="carol"))
    assert await who(host, carol.access) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(host).Refresh(auth_pb2.RefreshRequest(refresh_token=carol.refresh))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    if change == "revoke":
        # Logged out, not locked out: a new login works.
        assert await who(host, (await login(host, "carol")).access) == grpc.StatusCode.OK
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await login(host, "carol")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_created_again_under_a_deleted_name_does_not_revive_old_tokens(
    host: RunningHost,
) -> None:
    await create_user(host, root(host), "jack", "customer")
    old = await login(host, "jack")
    await stub(host, root(host)).DeleteUser(auth_pb2.DeleteUserRequest(username="jack"))
    assert await who(host, old.access) == grpc.StatusCode.UNAUTHENTICATED  # cached: revoked
    await create_user(host, root(host), "jack", "customer")
    assert await who(host, old.access) == grpc.StatusCode.UNAUTHENTICATED
    assert await who(host, (await login(host, "jack")).access) == grpc.StatusCode.OK


async def test_enabling_a_user_does_not_revive_its_old_tokens(host: RunningHost) -> None:
    await create_user(host, root(host), "dave", "customer")
    dave = await login(host, "dave")
    admin = stub(host, root(host))
    await admin.DisableUser(auth_pb2.DisableUserRequest(username="dave"))
    user = await admin.EnableUser(auth_pb2.EnableUserRequest(username="dave"))
    assert not user.disabled
    assert await who(host, dave.access) == grpc.StatusCode.UNAUTHENTICATED
    assert await who(host, (await login(host, "dave")).access) == grpc.StatusCode.OK


async def test_a_user_can_log_itself_out_everywhere_but_not_others(host: RunningHost) -> None:
    await create_user(host, root(host), "erin", "customer")
    await create_user(host, root(host), "frank", "customer")
    erin, frank = await login(host, "erin"), await login(host, "frank")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(host, erin.access).RevokeSessions(
            auth_pb2.RevokeSessionsRequest(username="frank")
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await who(host, frank.access) == grpc.StatusCode.OK
    # REST, the caller's own binding.
    async with httpx.AsyncClient(base_url=host.http_url) as http:
        response = await http.post(
            "/v1/auth/me:revokeSessions",
            json={},
            headers={"authorization": f"Bearer {erin.access}"},
        )
    assert response.status_code == 200, response.text
    assert await who(host, erin.access) == grpc.StatusCode.UNAUTHENTICATED
    # Audited: who logged whom out.
    admin = admin_pb2_grpc.AdminServiceStub(host.channel(root(host)))
    records = (
        await admin.ListAuditRecords(
            admin_pb2.ListAuditRecordsRequest(page_size=100, action="auth.revoke_sessions")
        )
    ).records
    assert [(r.actor, r.reason, r.transport) for r in records] == [("erin", "erin", "rest")]


async def test_the_last_administrator_cannot_be_removed(host: RunningHost) -> None:
    await create_user(host, root(host), "alice", "admin")
    alice = await login(host, "alice")
    admin = stub(host, alice.access)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: admin.SetUserRoles(auth_pb2.SetUserRolesRequest(username="alice", roles=[])),
        lambda: admin.DisableUser(auth_pb2.DisableUserRequest(username="alice")),
        lambda: admin.DeleteUser(auth_pb2.DeleteUserRequest(username="alice")),
        lambda: admin.PutRole(auth_pb2.PutRoleRequest(role=auth_pb2.Role(name="admin"))),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attempt()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no enabled administrator" in (caught.value.details() or "")
    # REST, with roles null (the example): 400 and the same message.
    async with httpx.AsyncClient(base_url=host.http_url) as http:
        response = await http.post(
            "/v1/users/alice:setRoles",
            json={"roles": None},
            headers={"authorization": f"Bearer {alice.access}"},
        )
    assert response.status_code == 400
    assert response.json()["details"][0]["reason"] == "LAST_ADMINISTRATOR"
    # Nothing changed, and alice's token still works.
    assert await who(host, alice.access) == grpc.StatusCode.OK
    # With a second administrator, alice may step down.
    await create_user(host, alice.access, "bob", "admin")
    await admin.SetUserRoles(auth_pb2.SetUserRolesRequest(username="alice", roles=[]))


async def test_an_administrator_by_two_roles_together_is_the_last_one_too(
    host: RunningHost,
) -> None:
    """users.* from one role and roles.* from another: as much an administrator as
    ``admin``, so the last such user cannot remove itself either."""
    operator = stub(host, root(host))
    for name, permission in (("usermgr", "users.*"), ("rolemgr", "roles.*")):
        await operator.PutRole(
            auth_pb2.PutRoleRequest(
                role=auth_pb2.Role(
                    name=name,
                    grants=[auth_pb2.Grant(permission=permission, scope=options_pb2.SCOPE_ALL)],
                )
            )
        )
    await create_user(host, root(host), "sole", "usermgr", "rolemgr")
    sole = await login(host, "sole")
    admin = stub(host, sole.access)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: admin.SetUserRoles(auth_pb2.SetUserRolesRequest(username="sole", roles=[])),
        # Either role alone is not enough.
        lambda: admin.SetUserRoles(
            auth_pb2.SetUserRolesRequest(username="sole", roles=["usermgr"])
        ),
        lambda: admin.DisableUser(auth_pb2.DisableUserRequest(username="sole")),
        lambda: admin.DeleteUser(auth_pb2.DeleteUserRequest(username="sole")),
        lambda: admin.PutRole(auth_pb2.PutRoleRequest(role=auth_pb2.Role(name="rolemgr"))),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attempt()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no enabled administrator" in (caught.value.details() or "")
    assert await who(host, sole.access) == grpc.StatusCode.OK
    # Swapping the two roles for ``admin`` keeps an administrator: allowed.
    await admin.SetUserRoles(auth_pb2.SetUserRolesRequest(username="sole", roles=["admin"]))
    users = await operator.ListUsers(auth_pb2.ListUsersRequest())
    assert {u.username: list(u.roles) for u in users.users}["sole"] == ["admin"]


async def test_two_admins_demoting_each_other_at_once_leave_one(host: RunningHost) -> None:
    await create_user(host, root(host), "alice", "admin")
    await create_user(host, root(host), "bob", "admin")
    alice, bob = await login(host, "alice"), await login(host, "bob")
    results = await asyncio.gather(
        stub(host, alice.access).SetUserRoles(
            auth_pb2.SetUserRolesRequest(username="bob", roles=["customer"])
        ),
        stub(host, bob.access).SetUserRoles(
            auth_pb2.SetUserRolesRequest(username="alice", roles=["customer"])
        ),
        return_exceptions=True,
    )
    users = await stub(host, root(host)).ListUsers(auth_pb2.ListUsersRequest())
    admins = [u.username for u in users.users if "admin" in u.roles]
    assert len(admins) == 1, results
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    # The second one either found no admin left or its caller's token already void.
    assert len(failures) == 1
    assert failures[0].code() in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_editing_a_role_voids_the_tokens_of_its_holders(host: RunningHost) -> None:
    await create_user(host, root(host), "gina", "customer")
    gina = await login(host, "gina")
    await stub(host, root(host)).PutRole(
        auth_pb2.PutRoleRequest(role=auth_pb2.Role(name="customer"))
    )
    assert await who(host, gina.access) == grpc.StatusCode.UNAUTHENTICATED


async def test_cli_disables_enables_revokes_and_deletes(
    host: RunningHost, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_user(host, root(host), "hank", "customer")
    target = ("--address", host.address, "--token", root(host))
    for action, done in (
        ("revoke", "logged out everywhere"),
        ("disable", "disabled"),
        ("enable", "enabled"),
        ("delete", "deleted"),
    ):
        if action != "enable":  # a disabled user cannot log in; its old token serves
            hank = await login(host, "hank")
        code, out, err = await run_cli(capsys, "users", action, "hank", *target)
        assert code == 0, err
        assert out.strip() == f"nexus users: hank {done}"
        assert await who(host, hank.access) == grpc.StatusCode.UNAUTHENTICATED
    code, _, err = await run_cli(capsys, "users", "delete", "hank", *target)
    assert code == 1
    assert "NOT_FOUND" in err
    code, _, err = await run_cli(
        capsys, "users", "disable", "x", "--address", host.address, "--token", "junk"
    )
    assert code == 1
    assert "UNAUTHENTICATED" in err


# -- two instances ----------------------------------------------------------------------


@pytest.fixture
async def two_hosts(
    tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[RunningHost, RunningHost]]:
    """Two hosts on one SQLite file and one Redis; B trusts its cached epochs for an
    hour, so only the Redis message can tell it of a change in time."""
    cache = CacheConfig(backend="redis", redis_url=redis_url)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            running_host(plugins=["auth"], data_dir=tmp_path, cache=cache)
        )
        b = await stack.enter_async_context(
            running_host(
                plugins=["auth"],
                data_dir=tmp_path,
                cache=cache,
                auth=AuthConfig(session_check_ttl=3600.0),
            )
        )
        yield a, b


@pytest.mark.parametrize("change", ["roles", "disable", "delete", "revoke"])
async def test_a_change_on_one_instance_voids_tokens_on_another_within_a_second(
    two_hosts: tuple[RunningHost, RunningHost], change: str
) -> None:
    a, b = two_hosts
    await create_user(a, root(a), "alice", "admin")
    await create_user(a, root(a), "bob", "admin")
    alice = await login(a, "alice")
    # B has checked alice's token and cached her epoch as good.
    assert await who(b, alice.access) == grpc.StatusCode.OK
    admin = stub(a, (await login(a, "bob")).access)
    if change == "roles":
        await admin.SetUserRoles(auth_pb2.SetUserRolesRequest(username="alice", roles=[]))
    elif change == "disable":
        await admin.DisableUser(auth_pb2.DisableUserRequest(username="alice"))
    elif change == "delete":
        await admin.DeleteUser(auth_pb2.DeleteUserRequest(username="alice"))
    else:
        await admin.RevokeSessions(auth_pb2.RevokeSessionsRequest(username="alice"))
    await refused_within(b, alice.access, PROPAGATION_BOUND)
    # Refreshing on B fails as well.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(b).Refresh(auth_pb2.RefreshRequest(refresh_token=alice.refresh))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_redis_other_instances_notice_within_the_check_ttl(
    tmp_path: Path,
) -> None:
    """The fallback: no channel between the instances, so B reloads after its ttl."""
    async with (
        running_host(plugins=["auth"], data_dir=tmp_path) as a,
        running_host(
            plugins=["auth"], data_dir=tmp_path, auth=AuthConfig(session_check_ttl=0.5)
        ) as b,
    ):
        await create_user(a, root(a), "ivan", "customer")
        ivan = await login(a, "ivan")
        assert await who(b, ivan.access) == grpc.StatusCode.OK
        await stub(a, root(a)).RevokeSessions(auth_pb2.RevokeSessionsRequest(username="ivan"))
        await refused_within(b, ivan.access, 0.5 + PROPAGATION_BOUND)


async def test_an_open_stream_stops_at_its_next_message_once_revoked(tmp_path: Path) -> None:
    """A watch opened before the revocation does not keep sending to the revoked user."""
    async with running_host(plugins=["auth", "orders"], data_dir=tmp_path) as host:
        await create_user(host, root(host), "olga", "customer")
        olga = await login(host, "olga")
        orders = orders_pb2_grpc.OrdersServiceStub(host.channel(olga.access))

        async def create() -> orders_pb2.Order:
            return await orders.CreateOrder(
                orders_pb2.CreateOrderRequest(
                    order=orders_pb2.Order(
                        currency_code="EUR", items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)]
                    )
                )
            )

        first = await create()
        # The watch subscribes to changes before it sends the existing orders: once the
        # first one arrived, the stream is live.
        stream = orders.WatchOrders(
            orders_pb2.WatchOrdersRequest(customer_id="olga", include_existing=True)
        )
        change = await asyncio.wait_for(stream.read(), 10)
        assert change.order.id == first.id
        await stub(host, root(host)).RevokeSessions(auth_pb2.RevokeSessionsRequest(username="olga"))
        # Another order of olga's, created by an operator: the stream must not carry it.
        await orders_pb2_grpc.OrdersServiceStub(host.channel(root(host))).CreateOrder(
            orders_pb2.CreateOrderRequest(
                order=orders_pb2.Order(
                    customer_id="olga",
                    currency_code="EUR",
                    items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)],
                )
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(stream.read(), 10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_first_admin_changes_at_once_on_postgresql_all_succeed(
    tmp_path: Path, postgres_url: str
) -> None:
    """Concurrent first-ever admin-affecting changes (no lock record yet) on PostgreSQL:
    none fails with ALREADY_EXISTS about the lock record, and user creations take the
    lock too."""
    async with running_host(plugins=["auth"], data_dir=tmp_path, storage_url=postgres_url) as pg:
        operator = stub(pg, root(pg))
        calls: list[Awaitable[object]] = []
        for n in range(4):
            calls.append(
                operator.PutRole(
                    auth_pb2.PutRoleRequest(
                        role=auth_pb2.Role(
                            name="customer",
                            grants=[
                                auth_pb2.Grant(
                                    permission="orders.read", scope=options_pb2.SCOPE_OWN
                                )
                            ],
                        )
                    )
                )
            )
            calls.append(
                operator.CreateUser(
                    auth_pb2.CreateUserRequest(
                        user=auth_pb2.User(username=f"admin{n}", roles=["admin"]),
                        password=PASSWORD,
                    )
                )
            )
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, [(e.code(), e.details()) for e in errors]  # type: ignore[attr-defined]
        users = await operator.ListUsers(auth_pb2.ListUsersRequest())
        assert sorted(u.username for u in users.users) == [f"admin{n}" for n in range(4)]


async def test_a_host_without_the_auth_plugin_warns_that_it_cannot_honour_revocation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance running only ``orders`` on the storage of one running ``auth`` has no
    session source: it says so, once, when it accepts its first token that way."""
    caplog.set_level(logging.WARNING, logger="nexus.auth")
    async with (
        running_host(plugins=["auth"], data_dir=tmp_path) as a,
        running_host(plugins=["orders"], data_dir=tmp_path) as b,
    ):
        await create_user(a, root(a), "kate", "customer")
        kate = await login(a, "kate")
        assert await who(a, kate.access) == grpc.StatusCode.OK
        assert not no_source_warnings(caplog)  # the host with the auth plugin has one
        orders = orders_pb2_grpc.OrdersServiceStub(b.channel(kate.access))
        for _ in range(2):
            await orders.ListOrders(orders_pb2.ListOrdersRequest(customer_id="kate"))
        assert len(no_source_warnings(caplog)) == 1, caplog.text
        # What the warning says: B cannot tell that kate was deleted on A.
        await stub(a, root(a)).DeleteUser(auth_pb2.DeleteUserRequest(username="kate"))
        assert await who(a, kate.access) == grpc.StatusCode.UNAUTHENTICATED
        await orders.ListOrders(orders_pb2.ListOrdersRequest(customer_id="kate"))


def no_source_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and "no session source" in record.getMessage()
    ]
