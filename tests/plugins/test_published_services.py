"""Published services: one plugin calls another's gRPC service in-process, through the
same pipeline, with the caller's identity, deadline and request id."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import orders_pb2_grpc
from probe.v1 import probe_pb2, probe_pb2_grpc
from transcode.v1 import transcode_pb2, transcode_pb2_grpc

from nexus_grpc import PluginContext
from nexus_grpc.access.policy import Access, EffectivePolicy
from nexus_grpc.auth.principal import Principal, current_principal, principal_var
from nexus_grpc.config import AuthConfig
from nexus_grpc.errors import StatusError
from nexus_grpc.logs import request_id_var
from nexus_grpc.pipeline import build_stages
from nexus_grpc.pipeline.auth import AuthStage
from nexus_grpc.pipeline.context import CallContext, CurrentCall, current_call_var
from nexus_grpc.pipeline.observe import ObserveStage
from nexus_grpc.plugins.services import (
    Services,
    UndeclaredServiceError,
    outside_calls,
    plugin_principal,
)
from nexus_grpc.routing import Arity, InFlight, MethodInfo, Router
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.transport.servicers import bind_servicer, build_routes

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = Path(__file__).resolve().parent / "published"
PLUGIN_DIRS = [PUBLISHED, REPO / "plugins", REPO / "tests" / "gateway" / "plugins"]

Scenario = Callable[[PluginContext], Awaitable[Any]]


async def _nothing(ctx: PluginContext) -> None:
    return None


@dataclass
class Harness:
    """Shared with the caller plugin (as its ``harness`` setting)."""

    #: What the caller's ProbeService/Sleep runs inside the call.
    inside_call: Scenario = _nothing
    #: What each scenario returned or raised.
    outcomes: list[Any] = field(default_factory=list)
    #: The caller's context, set by its start hook.
    context: PluginContext | None = None
    #: What the start hook's calls answered.
    at_start: Any = None
    #: (subject, request id) the event handler's calls carried.
    events: list[tuple[str, str]] = field(default_factory=list)

    @property
    def services(self) -> Services:
        assert self.context is not None and self.context.services is not None
        return self.context.services


@dataclass
class Shop:
    host: RunningHost
    harness: Harness

    async def inside_call(
        self,
        scenario: Scenario,
        *,
        token: str | None = None,
        seconds: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """Run ``scenario`` in the caller plugin, inside a gRPC call made with ``token``
        and a deadline ``seconds`` away."""
        self.harness.inside_call = scenario
        self.harness.outcomes.clear()
        probe = probe_pb2_grpc.ProbeServiceStub(self.host.channel(token))
        await probe.Sleep(probe_pb2.SleepRequest(), timeout=seconds, metadata=metadata)
        [outcome] = self.harness.outcomes
        return outcome


#: The operator's approval of the caller plugin's manifest ``permissions``.
GRANTED = AuthConfig(plugin_permissions={"caller": ("inventory.manage:all",)})


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    harness = Harness()
    async with running_host(
        plugins=["caller", "inventory", "auth", "transcode"],
        plugin_dirs=PLUGIN_DIRS,
        data_dir=tmp_path,
        plugin_config={"caller": {"harness": harness}},
        auth=GRANTED,
        access_log=True,
    ) as host:
        assert host.host.plugins.record("caller").state == "SERVING"  # type: ignore[union-attr]
        yield Shop(host, harness)


async def test_a_plugin_asking_for_permissions_the_operator_did_not_grant_fails(
    tmp_path: Path,
) -> None:
    async with running_host(
        plugins=["caller", "inventory", "auth", "transcode"],
        plugin_dirs=PLUGIN_DIRS,
        data_dir=tmp_path,
        plugin_config={"caller": {"harness": Harness()}},
        auth=AuthConfig(plugin_permissions={"caller": ("inventory.read:all",)}),
    ) as host:
        record = host.host.plugins.record("caller")
        assert record is not None and record.state == "FAILED"
        assert "asks for inventory.manage:all, which the operator has not granted" in record.error
        assert '`caller = ["inventory.manage:all"]` under [auth.plugin_permissions]' in (
            record.error
        )


async def _whoami(ctx: PluginContext, *, as_plugin: bool = False) -> Any:
    assert ctx.services is not None
    auth = ctx.services.client(auth_pb2_grpc.AuthServiceStub, as_plugin=as_plugin)
    try:
        return await auth.WhoAmI(auth_pb2.WhoAmIRequest())
    except grpc.aio.AioRpcError as error:
        return error


async def _inspect(ctx: PluginContext) -> Any:
    assert ctx.services is not None
    transcode = ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub)
    return await transcode.Inspect(transcode_pb2.InspectRequest())


async def _read_all(call: Any, into: list[int]) -> None:
    async for message in call:
        into.append(message.value)


def _inproc_handled(host: RunningHost, method: str) -> float | None:
    return host.host.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "nexus.inventory.v1.InventoryService",
            "grpc_method": method,
            "grpc_code": "OK",
            "transport": "inproc",
            "plugin": "inventory",
        },
    )


# Identity -------------------------------------------------------------------------------


async def test_a_call_made_inside_a_users_call_carries_the_users_identity(shop: Shop) -> None:
    token = shop.host.token("alice", grants=["inventory.read:own"], roles=["customer"])
    me = await shop.inside_call(_whoami, token=token)
    assert (me.subject, list(me.roles), list(me.permissions)) == (
        "alice",
        ["customer"],
        ["inventory.read:own"],
    )


async def test_the_callees_policy_judges_the_caller_and_its_audit_records_the_denial(
    shop: Shop,
) -> None:
    async def stock_up(ctx: PluginContext) -> Any:
        assert ctx.services is not None
        inventory = ctx.services.client(inventory_pb2_grpc.InventoryServiceStub)
        stock = await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1"))
        try:
            await inventory.SetStock(inventory_pb2.SetStockRequest(sku="BOOK-1", available=5))
        except grpc.aio.AioRpcError as error:
            return stock, error
        raise AssertionError("bob may not manage the inventory")

    stock, error = await shop.inside_call(
        stock_up, token=shop.host.token("bob", grants=["orders.read:own"])
    )
    assert stock == inventory_pb2.Stock(sku="BOOK-1")  # authenticated is enough for reading
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "permission inventory.manage with scope all is required"
    admin = admin_pb2_grpc.AdminServiceStub(shop.host.channel(shop.host.token()))
    audit = await admin.ListAuditRecords(
        admin_pb2.ListAuditRecordsRequest(actor="bob", action="call.denied")
    )
    assert [(r.target, r.transport, r.peer) for r in audit.records] == [
        ("/nexus.inventory.v1.InventoryService/SetStock", "inproc", "inproc:caller")
    ]


async def test_an_anonymous_caller_stays_anonymous(shop: Shop) -> None:
    # ProbeService is public: the outer call is served without a token, and the plugin's
    # own identity does not stand in for the missing one.
    error = await shop.inside_call(_whoami)
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_outside_any_call_the_plugin_calls_as_itself_with_its_declared_permissions(
    shop: Shop,
) -> None:
    # The start hook ran outside any call, after the services it requires were serving.
    me, stock = shop.harness.at_start
    assert me.subject == "plugin:caller" and stock.sku == "BOOK-1"
    services = shop.harness.services
    me = await services.client(auth_pb2_grpc.AuthServiceStub).WhoAmI(auth_pb2.WhoAmIRequest())
    assert (me.subject, list(me.roles), list(me.permissions)) == (
        "plugin:caller",
        ["plugin"],
        ["inventory.manage:all"],
    )
    inventory = services.client(inventory_pb2_grpc.InventoryServiceStub)
    stock = await inventory.SetStock(inventory_pb2.SetStockRequest(sku="BOOK-1", available=7))
    assert stock.available == 7
    # Nothing beyond what the manifest lists: listing users needs users.read.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services.client(auth_pb2_grpc.AuthServiceStub).ListUsers(auth_pb2.ListUsersRequest())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_as_plugin_acts_on_the_plugins_authority_inside_a_users_call(shop: Shop) -> None:
    async def restock(ctx: PluginContext) -> Any:
        assert ctx.services is not None
        inventory = ctx.services.client(inventory_pb2_grpc.InventoryServiceStub, as_plugin=True)
        stock = await inventory.SetStock(inventory_pb2.SetStockRequest(sku="BOOK-2", available=3))
        return stock, await _whoami(ctx, as_plugin=True)

    stock, me = await shop.inside_call(
        restock, token=shop.host.token("bob", grants=["orders.read:own"])
    )
    assert stock.available == 3
    assert me.subject == "plugin:caller"


async def test_an_event_handler_calls_as_the_plugin_with_the_events_correlation_id(
    shop: Shop,
) -> None:
    async def publish(ctx: PluginContext) -> None:
        assert ctx.events is not None
        await ctx.events.publish(inventory_pb2.StockReserved(order_id="o-1"))

    # Published inside alice's call; handled by the plugin on its own authority.
    await shop.inside_call(
        publish,
        token=shop.host.token("alice", grants=["*.*:all"]),
        metadata=(("x-request-id", "req-7"),),
    )
    for _ in range(200):
        if shop.harness.events:
            break
        await asyncio.sleep(0.01)
    assert shop.harness.events == [("plugin:caller", "req-7")]


async def test_a_task_that_outlives_its_call_calls_as_the_plugin(shop: Shop) -> None:
    ended = CurrentCall(CallContext(transport="grpc", metadata=(), peer="t", deadline=None))
    ended.active = False
    token = current_call_var.set(ended)
    try:
        me = await _whoami(shop.harness.context)  # type: ignore[arg-type]
    finally:
        current_call_var.reset(token)
    assert me.subject == "plugin:caller"


async def test_a_request_iterator_runs_as_the_caller_not_inside_the_callees_call(
    shop: Shop,
) -> None:
    # The caller's iterator is the caller's code: a call it makes carries bob, even when
    # the stream it feeds goes on the plugin's own authority.
    async def scenario(ctx: PluginContext) -> Any:
        seen: list[Any] = []

        async def requests() -> AsyncIterator[transcode_pb2.SumRequest]:
            me = await _whoami(ctx)
            seen.append(getattr(me, "subject", me))
            yield transcode_pb2.SumRequest(value=1)

        assert ctx.services is not None
        transcode = ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub, as_plugin=True)
        summed = await transcode.Sum(requests())
        return summed.total, seen

    total, seen = await shop.inside_call(
        scenario, token=shop.host.token("bob", grants=["orders.read:own"])
    )
    assert (total, seen) == (1, ["bob"])


async def test_a_call_carrying_the_callers_principal_ends_with_the_call(shop: Shop) -> None:
    kept: dict[str, Any] = {}

    async def open_streams(ctx: PluginContext) -> None:
        assert ctx.services is not None
        transcode = ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub)
        kept["as bob"] = transcode.Chat()
        own = ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub, as_plugin=True)
        kept["as the plugin"] = own.Chat()

    await shop.inside_call(open_streams, token=shop.host.token("bob", grants=["orders.read:own"]))
    # Bob's call is over: nothing may go on in his name.
    as_bob = kept["as bob"]
    assert await asyncio.wait_for(as_bob.code(), 5) == grpc.StatusCode.CANCELLED
    assert await as_bob.details() == "the call it was made in ended"
    with pytest.raises(asyncio.InvalidStateError):
        await as_bob.write(transcode_pb2.ChatRequest(text="still bob?"))
    # Work on the plugin's own authority may outlive the call.
    as_plugin = kept["as the plugin"]
    await as_plugin.write(transcode_pb2.ChatRequest(text="mine"))
    assert (await as_plugin.read()).text == "MINE"
    await as_plugin.done_writing()
    assert await as_plugin.code() == grpc.StatusCode.OK


async def test_an_event_handler_never_runs_as_the_user_whose_call_published_the_event() -> None:
    seen: list[Any] = []

    async def handler() -> None:
        seen.append((current_principal(), current_call_var.get()))

    context = CallContext(transport="grpc", metadata=(), peer="t", deadline=None)
    principal = principal_var.set(Principal("alice"))
    call = current_call_var.set(CurrentCall(context))
    try:
        await outside_calls(handler)()
        assert current_principal() == Principal("alice")  # restored afterwards
    finally:
        current_call_var.reset(call)
        principal_var.reset(principal)
    assert seen == [(None, None)]


def test_a_plugin_cannot_swap_its_identity_for_another(shop: Shop) -> None:
    services = shop.harness.services
    assert services.identity == plugin_principal("caller", ["inventory.manage:all"])
    with pytest.raises(AttributeError):
        services.identity = plugin_principal("auth", ["users.manage:all"])  # type: ignore[misc]


async def test_network_metadata_cannot_pose_as_an_in_process_principal(shop: Shop) -> None:
    # Only the host's in-process context carries a principal; metadata of that name is
    # just metadata, and an anonymous network caller stays anonymous.
    auth = auth_pb2_grpc.AuthServiceStub(shop.host.channel())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(("inproc_principal", "admin"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


class _Lenient:
    """A context answering any attribute (as a permissive test double or proxy might)."""

    def __getattr__(self, name: str) -> Any:
        return f"whatever {name}"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def test_only_a_principal_in_the_in_process_attribute_authenticates() -> None:
    method = transcode_pb2.DESCRIPTOR.services_by_name["TranscodeService"].methods_by_name["Echo"]
    path = "/transcode.v1.TranscodeService/Echo"
    info = MethodInfo(
        path,
        "transcode",
        method,
        Arity.UNARY_UNARY,
        InFlight(),
        policy=EffectivePolicy(path, Access.AUTHENTICATED),
    )

    async def handler(request: Any, context: Any) -> Any:
        return current_principal()

    class _Verifier:
        async def verify(self, token: str, *, token_type: str = "access") -> Principal:
            raise AssertionError("no token was sent")

    authenticate = AuthStage(_Verifier(), None).bind(info, handler)
    with pytest.raises(StatusError) as caught:
        await authenticate(transcode_pb2.EchoRequest(), _Lenient())
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


# Errors, validation, requirements -------------------------------------------------------


async def test_the_callees_validation_errors_come_back_as_invalid_argument_with_details(
    shop: Shop,
) -> None:
    inventory = shop.harness.services.client(inventory_pb2_grpc.InventoryServiceStub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inventory.SetStock(inventory_pb2.SetStockRequest(sku="no spaces!", available=-1))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("sku: must match ")
    status = rpc_status.from_call(error)
    assert status is not None
    violations = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations = {v.field: v.description for v in bad.field_violations}
    assert set(violations) == {"sku", "available"}
    assert violations["available"] == "must be at least 0"
    assert "x-request-id" in dict(error.trailing_metadata())


def test_a_service_the_manifest_does_not_require_gets_no_client(shop: Shop) -> None:
    with pytest.raises(UndeclaredServiceError) as caught:
        shop.harness.services.client(orders_pb2_grpc.OrdersServiceStub)
    assert str(caught.value) == (
        "plugin 'caller' calls nexus.orders.v1.OrdersService, which its manifest does not "
        f"require; add it to `requires` in {PUBLISHED / 'caller' / 'manifest.toml'}"
    )


async def test_a_required_service_no_plugin_serves_fails_the_plugin_with_the_reason(
    tmp_path: Path,
) -> None:
    async with running_host(
        plugins=["needy", "auth"], plugin_dirs=PLUGIN_DIRS, data_dir=tmp_path
    ) as host:
        record = host.host.plugins.record("needy")
        assert record is not None and record.state == "FAILED"
        assert record.error == (
            f"plugin 'needy' ({PUBLISHED / 'needy' / 'manifest.toml'}): requires service "
            "acme.missing.v1.NothingService, which no plugin serves (plugins serving: auth); "
            "add the plugin that serves it or remove the service from `requires`"
        )


async def test_a_plugin_whose_required_service_is_not_served_fails_with_the_providers_state(
    tmp_path: Path,
) -> None:
    async with running_host(
        plugins=["caller", "auth", "transcode"],
        plugin_dirs=PLUGIN_DIRS,
        data_dir=tmp_path,
        plugin_config={"caller": {"harness": Harness()}},
        auth=GRANTED,
    ) as host:
        record = host.host.plugins.record("caller")
        assert record is not None and record.state == "FAILED"
        assert (
            "requires service nexus.inventory.v1.InventoryService of plugin 'inventory', "
            "which is disabled"
        ) in record.error


async def test_a_stopped_provider_makes_calls_unavailable(shop: Shop) -> None:
    inventory = shop.harness.services.client(inventory_pb2_grpc.InventoryServiceStub)
    shop.host.host.router.remove_plugin("inventory")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# Deadline and request id ----------------------------------------------------------------


async def test_the_callers_deadline_goes_with_the_call(shop: Shop) -> None:
    async def inspect_twice(ctx: PluginContext) -> Any:
        assert ctx.services is not None
        transcode = ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub)
        inherited = await transcode.Inspect(transcode_pb2.InspectRequest())
        # timeout= can shorten the deadline, never extend it.
        shortened = await transcode.Inspect(transcode_pb2.InspectRequest(), timeout=1.0)
        capped = await transcode.Inspect(transcode_pb2.InspectRequest(), timeout=60.0)
        return inherited, shortened, capped

    inherited, shortened, capped = await shop.inside_call(inspect_twice, seconds=5.0)
    # grpc re-bases the outer deadline when the call arrives: it may read a bit over 5 s.
    assert 4.0 < inherited.time_remaining <= 5.1
    assert 0.5 < shortened.time_remaining <= 1.0
    assert 4.0 < capped.time_remaining <= 5.1
    assert inherited.transport == "inproc"
    # Outside any call there is no deadline unless the call sets one.
    assert (await _inspect(shop.harness.context)).time_remaining == -1  # type: ignore[arg-type]


async def test_a_deadline_that_passes_ends_the_call_with_deadline_exceeded(shop: Shop) -> None:
    transcode = shop.harness.services.client(transcode_pb2_grpc.TranscodeServiceStub)
    call = transcode.Count(transcode_pb2.CountRequest(n=100, pause_millis=20), timeout=0.3)
    received: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _read_all(call, received)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1 <= len(received) < 100
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_call_made_after_the_callers_deadline_fails_at_once(shop: Shop) -> None:
    # The call being served has run out of time: nothing is called.
    expired = CallContext(transport="grpc", metadata=(), peer="t", deadline=time.monotonic() - 1)
    handled = _inproc_handled(shop.host, "GetStock")  # by the start hook
    token = current_call_var.set(CurrentCall(expired))
    try:
        inventory = shop.harness.services.client(inventory_pb2_grpc.InventoryServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1"))
    finally:
        current_call_var.reset(token)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _inproc_handled(shop.host, "GetStock") == handled  # the callee never saw it


async def test_the_request_id_goes_with_the_call(shop: Shop) -> None:
    seen = await shop.inside_call(_inspect, metadata=(("x-request-id", "req-42"),))
    assert seen.metadata["x-request-id"] == "req-42"
    # An event handler's calls carry the event's correlation id.
    token = request_id_var.set("event-7")
    try:
        seen = await _inspect(shop.harness.context)  # type: ignore[arg-type]
    finally:
        request_id_var.reset(token)
    assert seen.metadata["x-request-id"] == "event-7"


# Metrics, streams, cancellation ---------------------------------------------------------


async def test_in_process_calls_are_counted_under_the_inproc_transport(shop: Shop) -> None:
    inventory = shop.harness.services.client(inventory_pb2_grpc.InventoryServiceStub)
    before = _inproc_handled(shop.host, "GetStock") or 0  # the start hook made one
    for _ in range(3):
        await inventory.GetStock(inventory_pb2.GetStockRequest(sku="BOOK-1"))
    assert _inproc_handled(shop.host, "GetStock") == before + 3
    exposition = shop.host.host.metrics.exposition().decode()
    assert 'grpc_method="SetStock",transport="inproc"' not in exposition  # no call, no series


async def test_every_arity_works_with_generated_stubs(shop: Shop) -> None:
    transcode = shop.harness.services.client(transcode_pb2_grpc.TranscodeServiceStub)
    counted = [m.value async for m in transcode.Count(transcode_pb2.CountRequest(n=3))]
    assert counted == [1, 2, 3]

    summed = await transcode.Sum(transcode_pb2.SumRequest(value=v) for v in (1, 2, 3))
    assert (summed.total, summed.count) == (6, 3)

    writing = transcode.Sum()
    for value in (10, 20):
        await writing.write(transcode_pb2.SumRequest(value=value))
    await writing.done_writing()
    assert (await writing).total == 30

    async def lines() -> AsyncIterator[transcode_pb2.ChatRequest]:
        for text in ("a", "b"):
            yield transcode_pb2.ChatRequest(text=text)

    assert [r.text async for r in transcode.Chat(lines())] == ["A", "B"]

    chat = transcode.Chat()
    await chat.write(transcode_pb2.ChatRequest(text="hi"))
    assert (await chat.read()).text == "HI"
    await chat.done_writing()
    assert await chat.read() is grpc.aio.EOF
    assert await chat.code() == grpc.StatusCode.OK

    # Metadata comes back as from a network call.
    call = transcode.Inspect(transcode_pb2.InspectRequest())
    await call
    assert dict(await call.initial_metadata()) == {"x-initial": "yes"}
    assert dict(await call.trailing_metadata()) == {"x-trailer": "done"}


async def test_an_error_after_streamed_messages_ends_the_stream_with_its_status(
    shop: Shop,
) -> None:
    transcode = shop.harness.services.client(transcode_pb2_grpc.TranscodeServiceStub)
    received: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _read_all(transcode.Count(transcode_pb2.CountRequest(n=5, fail_after=2)), received)
    assert received == [1, 2]
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.details() == "stopped after 2"


async def test_cancelling_the_call_cancels_the_callee(shop: Shop) -> None:
    transcode = shop.harness.services.client(transcode_pb2_grpc.TranscodeServiceStub)
    call = transcode.Count(transcode_pb2.CountRequest(n=1000, pause_millis=10))
    assert (await call.read()).value == 1
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert call.cancelled() and call.done()
    with pytest.raises(asyncio.CancelledError):
        await call.read()


# The channel alone: copies ----------------------------------------------------------------


class _Keeper(transcode_pb2_grpc.TranscodeServiceServicer):
    """Changes the request it got and keeps the response it returned."""

    def __init__(self) -> None:
        self.returned: list[transcode_pb2.EchoRequest] = []

    async def Echo(self, request: transcode_pb2.EchoRequest, context: Any) -> Any:
        request.tags.append("changed by the callee")
        response = transcode_pb2.EchoRequest(id=request.id, tags=request.tags)
        self.returned.append(response)
        return response


async def test_neither_side_can_change_the_others_messages() -> None:
    keeper = _Keeper()
    router = Router()
    [binding] = bind_servicer(keeper)
    stages = build_stages(observe=ObserveStage(access_log=False))
    router.add(build_routes(binding, plugin="keeper", stages=stages, in_flight=InFlight()))
    services = Services(router, "caller", ["transcode.v1.TranscodeService"])
    transcode = services.client(transcode_pb2_grpc.TranscodeServiceStub)

    request = transcode_pb2.EchoRequest(id="1", tags=["mine"])
    response = await transcode.Echo(request)
    assert list(request.tags) == ["mine"]  # the callee changed its own copy
    assert list(response.tags) == ["mine", "changed by the callee"]
    keeper.returned[0].tags.append("later")  # the callee keeps and changes its response
    response.id = "changed by the caller"
    assert list(response.tags) == ["mine", "changed by the callee"]
    assert keeper.returned[0].id == "1"


# The channel alone: cancellation, abandoned calls, back-pressure ------------------------


class _Streams(transcode_pb2_grpc.TranscodeServiceServicer):
    """Streams as long as asked, and notes how each call ended."""

    def __init__(self) -> None:
        self.produced = 0
        self.ended: list[tuple[str, str, bool]] = []
        self.done = asyncio.Event()

    def _end(self, method: str, how: str, context: Any) -> None:
        self.ended.append((method, how, context.cancelled()))
        self.done.set()

    async def Echo(self, request: transcode_pb2.EchoRequest, context: Any) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self._end("Echo", "cancelled", context)
            raise
        return request

    async def Count(self, request: transcode_pb2.CountRequest, context: Any) -> None:
        try:
            for value in range(1, request.n + 1):
                await context.write(transcode_pb2.CountResponse(value=value))
                self.produced += 1
        except asyncio.CancelledError:
            self._end("Count", "cancelled", context)
            raise

    async def Sum(self, request_iterator: Any, context: Any) -> Any:
        total = 0
        try:
            async for request in request_iterator:
                total += request.value
        except asyncio.CancelledError:
            self._end("Sum", "cancelled", context)
            raise
        return transcode_pb2.SumResponse(total=total)


def _standalone(servicer: Any) -> tuple[Any, InFlight]:
    """A stub of ``servicer`` served by a router of its own, through the pipeline."""
    router = Router()
    in_flight = InFlight()
    [binding] = bind_servicer(servicer)
    stages = build_stages(observe=ObserveStage(access_log=False))
    router.add(build_routes(binding, plugin="streams", stages=stages, in_flight=in_flight))
    services = Services(router, "caller", ["transcode.v1.TranscodeService"])
    return services.client(transcode_pb2_grpc.TranscodeServiceStub), in_flight


def _loop_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_an_abandoned_stream_is_cancelled_and_leaves_no_task_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streams = _Streams()
    transcode, in_flight = _standalone(streams)
    call = transcode.Count(transcode_pb2.CountRequest(n=1_000_000))
    async for _ in call:
        break  # the reader gives up, and drops the call
    del call
    gc.collect()
    await asyncio.wait_for(streams.done.wait(), 5)
    assert streams.ended == [("Count", "cancelled", True)]
    assert streams.produced < 100  # back-pressure held the writer
    assert in_flight.count == 0
    # A writer of requests that gives up without done_writing() is cancelled too.
    streams.done.clear()
    writing = transcode.Sum()
    await writing.write(transcode_pb2.SumRequest(value=1))
    await asyncio.sleep(0.01)  # the callee reads it, and waits for more
    del writing
    gc.collect()
    await asyncio.wait_for(streams.done.wait(), 5)
    assert streams.ended[-1] == ("Sum", "cancelled", True)
    assert _loop_errors(caplog) == []


async def test_cancelling_a_blocked_write_cancels_the_call() -> None:
    streams = _Streams()
    transcode, in_flight = _standalone(streams)
    call = transcode.Sum()

    async def write_forever() -> None:
        while True:
            await call.write(transcode_pb2.SumRequest(value=1))

    async def stall(request_iterator: Any, context: Any) -> Any:
        await asyncio.sleep(30)  # reads nothing: the writer waits

    streams.Sum = stall  # type: ignore[method-assign]
    writer = asyncio.ensure_future(write_forever())
    await asyncio.sleep(0.05)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.CANCELLED
    assert call.cancelled() and call.done() and in_flight.count == 0


async def test_cancelling_the_task_awaiting_a_call_cancels_the_call() -> None:
    streams = _Streams()
    transcode, in_flight = _standalone(streams)
    call = transcode.Echo(transcode_pb2.EchoRequest(id="1"))
    waiter = asyncio.ensure_future(call)
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert streams.ended[0][:2] == ("Echo", "cancelled")
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert call.cancelled() and in_flight.count == 0


async def test_a_request_iterator_that_raises_cancels_the_call_as_grpc_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streams = _Streams()
    transcode, in_flight = _standalone(streams)

    def requests() -> Any:
        yield transcode_pb2.SumRequest(value=1)
        raise ValueError("the caller's bug")

    call = transcode.Sum(requests())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 5)
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert streams.ended == [("Sum", "cancelled", True)] and in_flight.count == 0
    # The caller's bug is logged as the caller's, not as the callee's internal error.
    assert not [r for r in caplog.records if r.name == "nexus.errors"]
    [logged] = [r for r in caplog.records if r.name == "nexus.services"]
    assert logged.levelno == logging.WARNING
    assert "the caller's bug" in caplog.text


async def test_an_in_process_call_refused_by_auth_is_logged_as_anonymous_not_as_its_caller(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    # Inside alice's call the plugin calls WhoAmI with a bad token of its own: the
    # callee's task must not carry alice into the access log of a call it refused.
    async def bad_token(ctx: PluginContext) -> Any:
        assert ctx.services is not None
        auth = ctx.services.client(auth_pb2_grpc.AuthServiceStub)
        try:
            await auth.WhoAmI(
                auth_pb2.WhoAmIRequest(), metadata=(("authorization", "Bearer garbage"),)
            )
        except grpc.aio.AioRpcError as error:
            return error
        return None

    with caplog.at_level(logging.INFO, logger="nexus.access"):
        error = await shop.inside_call(bad_token, token=shop.host.token("alice"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    [line] = [
        record
        for record in caplog.records
        if record.name == "nexus.access"
        and getattr(record, "method", "") == "/nexus.auth.v1.AuthService/WhoAmI"
    ]
    assert line.principal == "anonymous"  # type: ignore[attr-defined]


async def test_an_in_process_call_past_its_deadline_carries_the_request_id(shop: Shop) -> None:
    async def slow(ctx: PluginContext) -> Any:
        assert ctx.services is not None
        transcode = ctx.services.client(transcode_pb2_grpc.TranscodeServiceStub)
        chat = transcode.Chat(timeout=0.05)  # a stream whose requests never come
        return await chat.code(), await chat.trailing_metadata()

    code, trailing = await shop.inside_call(
        slow,
        token=shop.host.token("alice"),
        metadata=(("x-request-id", "req-dl"),),
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dict(trailing or ())["x-request-id"] == "req-dl"
