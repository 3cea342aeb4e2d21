"""A host with [tracing] on exports its spans over OTLP/gRPC to a real receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from nexus_grpc import tracing
from nexus_grpc.config import TracingConfig
from nexus_grpc.testing import running_host

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver keeping every export request."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_spans_reach_an_otlp_receiver_and_stop_flushes_them(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    servicer, endpoint = receiver
    config = TracingConfig(
        enabled=True,
        endpoint=endpoint,
        service_name="shop",
        resource_attributes=("deployment.environment.name=test",),
    )
    async with running_host(plugins=["inventory"], data_dir=tmp_path, tracing=config) as host:
        assert tracing.enabled()
        stub = inventory_pb2_grpc.InventoryServiceStub(host.channel(host.token()))
        await stub.GetStock(
            inventory_pb2.GetStockRequest(sku="PEN-7"), metadata=(("traceparent", TRACEPARENT),)
        )
        # The batch processor's default delay is 5 s: nothing need have been sent yet.
    # Stopping the host flushed the queue before returning.
    assert not tracing.enabled()
    await asyncio.sleep(0)
    spans = [
        (resource_spans.resource, span)
        for request in servicer.requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    names = [span.name for _, span in spans]
    assert "nexus.inventory.v1.InventoryService/GetStock" in names
    resource, span = next(
        (r, s) for r, s in spans if s.name == "nexus.inventory.v1.InventoryService/GetStock"
    )
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    attributes = {a.key: a.value for a in resource.attributes}
    assert attributes["service.name"].string_value == "shop"
    assert attributes["deployment.environment.name"].string_value == "test"
    assert attributes["service.instance.id"].string_value
    assert attributes["process.pid"].int_value > 0
