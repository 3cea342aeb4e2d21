"""The server span of each transport, W3C propagation, refusal spans and log fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nexus_grpc.config import HttpConfig, LimitsConfig
from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from nexus_grpc.logs import JsonFormatter, TextFormatter
from nexus_grpc.plugins.services import Services
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.tracing import tracer
from nexus_grpc.tracing.http import HttpCall
from nexus_grpc.tracing.stage import ServerSpanStage
from tests.tracing.conftest import Spans
from tests.validation.test_rules import pb, valtest_method  # noqa: F401  (fixture)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
GET_STOCK = "nexus.inventory.v1.InventoryService/GetStock"
SET_STOCK = "nexus.inventory.v1.InventoryService/SetStock"
WATCH_ORDERS = "nexus.orders.v1.OrdersService/WatchOrders"
PROBE_DIR = Path(__file__).resolve().parent.parent / "probe"


def hex_trace(span: trace.Span | object) -> str:
    context = span.get_span_context() if isinstance(span, trace.Span) else span.context  # type: ignore[attr-defined]
    return format(context.trace_id, "032x")


def assert_child_of_caller(span: object) -> None:
    assert format(span.context.trace_id, "032x") == TRACE_ID  # type: ignore[attr-defined]
    assert span.parent is not None and span.parent.is_remote  # type: ignore[attr-defined]
    assert format(span.parent.span_id, "016x") == PARENT_ID  # type: ignore[attr-defined]


@pytest.fixture
async def host(tmp_path: Path, spans: Spans) -> object:
    async with running_host(
        plugins=["inventory"], data_dir=tmp_path, http=True, access_log=True
    ) as running:
        yield running


async def test_grpc_call_has_a_server_span_child_of_the_callers_traceparent(
    host: RunningHost, spans: Spans
) -> None:
    stub = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token()))
    await stub.GetStock(
        inventory_pb2.GetStockRequest(sku="PEN-7"),
        metadata=(("traceparent", TRACEPARENT), ("tracestate", "vendor=1")),
    )
    span = spans.one(GET_STOCK)
    assert span.kind is SpanKind.SERVER
    assert_child_of_caller(span)
    assert span.context.trace_state.get("vendor") == "1"
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "nexus.inventory.v1.InventoryService",
        "rpc.method": "GetStock",
        "rpc.grpc.status_code": 0,
        "nexus.plugin": "inventory",
        "nexus.transport": "grpc",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "nexus"


async def test_grpc_call_without_traceparent_starts_a_trace(
    host: RunningHost, spans: Spans
) -> None:
    stub = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token()))
    await stub.GetStock(inventory_pb2.GetStockRequest(sku="PEN-7"))
    span = spans.one(GET_STOCK)
    assert span.parent is None
    assert span.context.trace_id != 0


async def test_rest_call_has_rpc_and_http_attributes_with_the_route_template(
    host: RunningHost, spans: Spans
) -> None:
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        response = await client.get(
            "/v1/stock/PEN-7",
            headers={"authorization": f"Bearer {host.token()}", "traceparent": TRACEPARENT},
        )
    assert response.status_code == 200
    span = spans.one(GET_STOCK)
    assert span.kind is SpanKind.SERVER
    assert_child_of_caller(span)
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/v1/stock/{sku}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.scheme"] == "http"
    assert attributes["rpc.method"] == "GetStock"
    assert attributes["nexus.transport"] == "rest"


async def test_grpc_web_call_has_a_server_span(host: RunningHost, spans: Spans) -> None:
    body = encode_frame(0, inventory_pb2.GetStockRequest(sku="PEN-7").SerializeToString())
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        response = await client.post(
            "/" + GET_STOCK,
            content=body,
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "authorization": f"Bearer {host.token()}",
                "traceparent": TRACEPARENT,
            },
        )
    assert response.status_code == 200
    assert b"grpc-status:0" in decode_frames(response.content)[-1][1]
    span = spans.one(GET_STOCK)
    assert_child_of_caller(span)
    attributes = dict(span.attributes or {})
    assert attributes["nexus.transport"] == "grpc-web"
    assert attributes["http.request.method"] == "POST"
    assert "http.route" not in attributes


async def test_in_process_call_is_a_child_of_the_calling_span(
    host: RunningHost, spans: Spans
) -> None:
    services = Services(host.host.router, "tester", ["nexus.inventory.v1.InventoryService"])
    stub = inventory_pb2_grpc.InventoryServiceStub(services.channel())
    with tracer().start_as_current_span("caller") as caller:
        await stub.GetStock(inventory_pb2.GetStockRequest(sku="PEN-7"))
    span = spans.one(GET_STOCK)
    assert span.parent is not None
    assert span.parent.span_id == caller.get_span_context().span_id
    assert span.context.trace_id == caller.get_span_context().trace_id
    assert dict(span.attributes or {})["nexus.transport"] == "inproc"


async def test_auth_refusal_is_a_child_span_and_the_call_span_is_not_an_error(
    host: RunningHost, spans: Spans
) -> None:
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        response = await client.get("/v1/stock/PEN-7", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 401
    server = spans.one(GET_STOCK)
    refusal = spans.one("nexus.auth")
    assert refusal.parent is not None and refusal.parent.span_id == server.context.span_id
    assert refusal.status.status_code is StatusCode.ERROR
    attributes = dict(refusal.attributes or {})
    assert attributes["nexus.stage"] == "auth"
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert attributes["nexus.refusal.reason"]
    server_attributes = dict(server.attributes or {})
    assert server_attributes["http.response.status_code"] == 401
    assert server_attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    # A caller's mistake, not the server's: the semantic conventions leave it unset.
    assert server.status.status_code is StatusCode.UNSET


async def test_access_and_validation_refusals_are_recorded_by_their_stage(
    host: RunningHost, spans: Spans
) -> None:
    unprivileged = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token(grants=())))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await unprivileged.SetStock(inventory_pb2.SetStockRequest(sku="PEN-7", available=1))
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    access = spans.one("nexus.access")
    assert access.parent is not None
    assert access.parent.span_id == (await spans.ended(SET_STOCK)).context.span_id
    assert spans.named("nexus.auth") == []

    stub = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token()))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.GetStock(inventory_pb2.GetStockRequest(sku="no such sku!"))
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    validation = spans.one("nexus.validation")
    assert dict(validation.attributes or {})["nexus.stage"] == "validation"
    assert validation.parent is not None
    assert validation.parent.span_id == (await spans.ended(GET_STOCK)).context.span_id


async def test_a_call_that_passes_every_stage_has_no_refusal_span(
    host: RunningHost, spans: Spans
) -> None:
    stub = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token()))
    await stub.SetStock(inventory_pb2.SetStockRequest(sku="PEN-7", available=3))
    # Storage statements (CLIENT spans) aside, the server span is the only one.
    assert [span.name for span in spans.all() if span.kind is not SpanKind.CLIENT] == [SET_STOCK]


async def test_log_records_of_a_call_carry_its_trace_and_span_ids(
    host: RunningHost, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    stub = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token()))
    with caplog.at_level(logging.INFO, logger="nexus.access"):
        await stub.GetStock(
            inventory_pb2.GetStockRequest(sku="PEN-7"), metadata=(("traceparent", TRACEPARENT),)
        )
    span = spans.one(GET_STOCK)
    [record] = [r for r in caplog.records if r.name == "nexus.access"]
    assert record.trace_id == TRACE_ID  # type: ignore[attr-defined]
    assert record.span_id == format(span.context.span_id, "016x")  # type: ignore[attr-defined]
    assert record.request_id  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["trace_id"] == TRACE_ID and entry["span_id"] == record.span_id  # type: ignore[attr-defined]
    assert entry["request_id"] == record.request_id  # type: ignore[attr-defined]
    assert f"trace_id={TRACE_ID}" in TextFormatter().format(record)


def test_records_outside_a_span_have_no_trace_fields(spans: Spans) -> None:
    record = logging.getLogger("nexus.test").makeRecord(
        "nexus.test", logging.INFO, __file__, 1, "outside", (), None
    )
    assert not hasattr(record, "trace_id")
    with tracer().start_as_current_span("inside") as span:
        inside = logging.getLogRecordFactory()(
            "nexus.test", logging.INFO, __file__, 1, "inside", (), None
        )
    assert inside.trace_id == hex_trace(span)  # type: ignore[attr-defined]


async def test_with_tracing_off_the_pipeline_has_no_tracing_stage(tmp_path: Path) -> None:
    async with running_host(plugins=["inventory"], data_dir=tmp_path, http=True) as running:
        assert not any(isinstance(stage, ServerSpanStage) for stage in running.host._stages)
        assert all(type(stage).__name__ != "RefusalSpans" for stage in running.host._stages)
        record = logging.getLogRecordFactory()(
            "nexus.test", logging.INFO, __file__, 1, "off", (), None
        )
        assert not hasattr(record, "trace_id")


async def test_rest_span_has_the_http_status_the_gateway_answered(
    tmp_path: Path, spans: Spans
) -> None:
    async with (
        running_host(
            plugins=["inventory"], data_dir=tmp_path, http=HttpConfig(max_body_bytes=64)
        ) as running,
        httpx.AsyncClient(base_url=running.http_url) as client,
    ):
        response = await client.put(
            "/v1/stock/PEN-7",
            json={"available": 1, "padding": "x" * 200},
            headers={"authorization": f"Bearer {running.token()}"},
        )
    assert response.status_code == 413
    attributes = dict(spans.one(SET_STOCK).attributes or {})
    assert attributes["http.response.status_code"] == 413
    assert attributes["http.route"] == "/v1/stock/{sku}"


async def test_rate_limit_refusal_is_a_child_span(tmp_path: Path, spans: Spans) -> None:
    limits = LimitsConfig(
        rate_classes={**LimitsConfig().rate_classes, "default": {"rate": 0.001, "burst": 1}}
    )
    async with running_host(plugins=["inventory"], data_dir=tmp_path, limits=limits) as running:
        stub = inventory_pb2_grpc.InventoryServiceStub(running.channel(running.token()))
        await stub.GetStock(inventory_pb2.GetStockRequest(sku="PEN-7"))
        with pytest.raises(grpc.aio.AioRpcError) as throttled:
            await stub.GetStock(inventory_pb2.GetStockRequest(sku="PEN-7"))
    assert throttled.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    refusal = spans.one("nexus.rate_limit")
    second = [
        s
        for s in spans.named(GET_STOCK)
        if refusal.parent and s.context.span_id == refusal.parent.span_id
    ]
    assert len(second) == 1
    assert (
        dict(second[0].attributes or {})["rpc.grpc.status_code"]
        == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    )


@pytest.mark.usefixtures("probe_stubs")
async def test_a_handler_crash_marks_the_span_as_an_error_and_is_no_refusal(
    tmp_path: Path, spans: Spans
) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    async with running_host(plugin_dirs=[PROBE_DIR], data_dir=tmp_path) as running:
        stub = probe_pb2_grpc.ProbeServiceStub(running.channel())
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await stub.Crash(probe_pb2.CrashRequest(secret="s3cret"))
    assert crashed.value.code() is grpc.StatusCode.INTERNAL
    span = spans.one("probe.v1.ProbeService/Crash")
    assert span.status.status_code is StatusCode.ERROR
    assert "s3cret" not in (span.status.description or "")
    assert dict(span.attributes or {})["error.type"] == "INTERNAL"
    assert [s.name for s in spans.all() if s.name.startswith("nexus.")] == []


async def test_grpc_web_span_records_http_200_even_when_the_call_fails(
    host: RunningHost, spans: Spans
) -> None:
    body = encode_frame(0, inventory_pb2.GetStockRequest(sku="PEN-7").SerializeToString())
    async with httpx.AsyncClient(base_url=host.http_url) as client:
        response = await client.post(  # no token: UNAUTHENTICATED, in the trailers
            "/" + GET_STOCK,
            content=body,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert response.status_code == 200
    assert b"grpc-status:16" in decode_frames(response.content)[-1][1]
    attributes = dict(spans.one(GET_STOCK).attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert attributes["http.response.status_code"] == 200


async def test_rest_stream_failing_after_its_first_message_records_the_200_it_sent(
    tmp_path: Path, spans: Spans
) -> None:
    async with running_host(plugins=["orders"], data_dir=tmp_path, http=True) as running:
        admin = orders_pb2_grpc.OrdersServiceStub(running.channel(running.token("admin")))
        await admin.CreateOrder(
            orders_pb2.CreateOrderRequest(
                order=orders_pb2.Order(
                    customer_id="alice",
                    currency_code="EUR",
                    items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)],
                )
            )
        )
        async with (
            httpx.AsyncClient(base_url=running.http_url) as client,
            client.stream(
                "GET",
                "/v1/orders:watch",
                params={"include_existing": "true"},
                headers={
                    "authorization": f"Bearer {running.token('admin')}",
                    "accept": "application/x-ndjson",
                },
            ) as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert "CHANGE_TYPE_EXISTING" in await anext(lines)
            assert running.host.streams.end_all() == 1  # UNAVAILABLE, after the 200
            rest = [line async for line in lines]
    assert "UNAVAILABLE" in rest[-1] or '"code":14' in rest[-1].replace(" ", "")
    attributes = dict(spans.one(WATCH_ORDERS).attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert attributes["http.response.status_code"] == 200


class _BadTrailersContext:
    """A REST call's context whose handler left status details that do not parse."""

    transport = "rest"

    def __init__(self) -> None:
        self.http_call = HttpCall("GET", "/v1/things/{id}", "http")

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "no such thing"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", b"\xff\xff not a google.rpc.Status"),)


async def test_bad_status_details_neither_leave_the_span_open_nor_the_context_attached(
    pb: Any,  # noqa: F811
    spans: Spans,
) -> None:
    async def handler(request: object, context: object) -> str:
        return "answered"

    method = valtest_method(pb, "Unary")
    traced = ServerSpanStage().bind(method, handler)
    before = trace.get_current_span()
    assert await traced(object(), _BadTrailersContext()) == "answered"
    assert trace.get_current_span() is before
    span = spans.one(method.path.lstrip("/"))
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == 404
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


class _RecordingPropagator(TextMapPropagator):
    """A propagator of a header of its own ("x-vendor-trace"), recording what it read."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def extract(self, carrier: Any, context: Any = None, getter: Any = default_getter) -> Any:
        values = getter.get(carrier, "x-vendor-trace")
        self.seen.append(values[0] if values else None)
        return context if context is not None else otel_context.Context()

    def inject(self, carrier: Any, context: Any = None, setter: Any = default_setter) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return {"x-vendor-trace"}


async def test_the_configured_propagators_fields_are_passed_on(
    tmp_path: Path, spans: Spans
) -> None:
    vendor = _RecordingPropagator()
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), vendor]))
    try:
        async with running_host(plugins=["inventory"], data_dir=tmp_path, http=True) as running:
            stub = inventory_pb2_grpc.InventoryServiceStub(running.channel(running.token()))
            await stub.GetStock(
                inventory_pb2.GetStockRequest(sku="PEN-7"),
                metadata=(("x-vendor-trace", "over-grpc"),),
            )
            async with httpx.AsyncClient(base_url=running.http_url) as client:
                response = await client.get(
                    "/v1/stock/PEN-7",
                    headers={
                        "authorization": f"Bearer {running.token()}",
                        "x-vendor-trace": "over-rest",
                    },
                )
            assert response.status_code == 200
    finally:
        propagate.set_global_textmap(previous)
    assert "over-grpc" in vendor.seen and "over-rest" in vendor.seen
