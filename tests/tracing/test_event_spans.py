"""Events carry the trace: PRODUCER spans, the envelope's trace context (through the
outbox too), CONSUMER spans linked to the publish, on the memory and Redis buses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nexus.inventory.v1 import inventory_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from nexus_grpc import tracing
from nexus_grpc.events import Delivery, Envelope, EventBus, MemoryBus, Publisher
from nexus_grpc.events.outbox import OUTBOX_COLLECTION, Outbox
from nexus_grpc.events.redis_bus import RedisBus
from nexus_grpc.events.tracing import ATTEMPT_ATTRIBUTE
from nexus_grpc.storage import Storage
from tests.fixtures.redis import OwnRedis
from tests.tracing._memory import of_kind, parent_id
from tests.tracing.conftest import Spans

EVENT = inventory_pb2.StockReserved.DESCRIPTOR.full_name
DECLARED = frozenset({EVENT})


@pytest.fixture
def memory(spans: Spans) -> InMemorySpanExporter:
    """The in-memory exporter of the ``spans`` fixture (tracing on for the test)."""
    return spans.exporter


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def failing_once(deliveries: list[Delivery]) -> Callable[..., object]:
    async def handle(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        deliveries.append(delivery)
        if delivery.attempt == 1:
            raise RuntimeError("first attempt fails")

    return handle


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def publish_in_a_call(bus: EventBus, publisher: Publisher) -> tuple[int, Envelope]:
    with tracing.tracer().start_as_current_span("call") as call:
        envelope = await publisher.publish(inventory_pb2.StockReserved(order_id="o-1"))
    return call.get_span_context().span_id, envelope


def check_flow(
    exporter: InMemorySpanExporter, call: int, envelope: Envelope, system: str
) -> list[ReadableSpan]:
    """The publish is a child of the call; each handler run a child of and linked to
    the publish; returns the consumer spans."""
    (publish,) = named(exporter, f"publish {EVENT}")
    assert publish.kind is SpanKind.PRODUCER and parent_id(publish) == call
    context = publish.get_span_context()
    assert context is not None
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == system
    assert publish.attributes["messaging.message.id"] == envelope.id
    trace_hex = f"{context.trace_id:032x}"
    assert envelope.trace_context["traceparent"].split("-")[1:3] == [
        trace_hex,
        f"{context.span_id:016x}",
    ]
    consumers = named(exporter, f"process {EVENT}")
    for span in consumers:
        assert span.kind is SpanKind.CONSUMER
        assert parent_id(span) == context.span_id
        assert [link.context.span_id for link in span.links] == [context.span_id]
        assert span.attributes is not None
        assert span.attributes["messaging.consumer.group.name"] == "shop"
        assert span.attributes["messaging.destination.name"] == EVENT
        assert span.attributes["messaging.system"] == system
    return consumers


async def test_memory_bus_handler_runs_are_consumer_spans_linked_to_the_publish(
    memory: InMemorySpanExporter,
) -> None:
    bus = MemoryBus(backoff=0.01)
    deliveries: list[Delivery] = []
    bus.subscribe("shop", EVENT, failing_once(deliveries))
    await bus.start()
    try:
        call, envelope = await publish_in_a_call(bus, Publisher(bus, "inventory", DECLARED))
        await eventually(lambda: len(named(memory, f"process {EVENT}")) == 2)
    finally:
        await bus.stop(grace=1)
    first, second = check_flow(memory, call, envelope, "nexus.memory")
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes[ATTEMPT_ATTRIBUTE], second.attributes[ATTEMPT_ATTRIBUTE]) == (1, 2)
    assert first.status.status_code is StatusCode.ERROR
    # The class, not the message: an unexpected error's text may hold data.
    assert first.status.description == "RuntimeError"
    assert first.attributes["error.type"] == "RuntimeError"
    assert second.status.status_code is StatusCode.UNSET


async def test_redis_bus_publish_has_its_xadd_and_the_consumer_links_to_it(
    memory: InMemorySpanExporter, own_redis: OwnRedis
) -> None:
    bus = RedisBus(own_redis.url, block=0.2, backoff=0.01)
    deliveries: list[Delivery] = []
    bus.subscribe("shop", EVENT, failing_once(deliveries))
    await bus.start()
    try:
        await asyncio.sleep(0.3)  # the group is created at "$": let the worker join first
        call, envelope = await publish_in_a_call(bus, Publisher(bus, "inventory", DECLARED))
        await eventually(lambda: len(named(memory, f"process {EVENT}")) == 2)
    finally:
        await bus.stop(grace=1)
    consumers = check_flow(memory, call, envelope, "nexus.redis")
    attempts = [span.attributes[ATTEMPT_ATTRIBUTE] for span in consumers if span.attributes]
    assert attempts == [1, 2]  # Redis's delivery count
    (publish,) = named(memory, f"publish {EVENT}")
    (xadd,) = [s for s in of_kind(memory, SpanKind.CLIENT) if s.name.startswith("XADD")]
    assert publish.context is not None and parent_id(xadd) == publish.context.span_id
    assert xadd.attributes is not None and xadd.attributes["db.system.name"] == "redis"


async def test_the_trace_context_survives_the_outbox(
    memory: InMemorySpanExporter, tmp_path: Path
) -> None:
    bus = MemoryBus()
    handled: list[Envelope] = []

    async def record(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        handled.append(delivery.envelope)

    bus.subscribe("shop", EVENT, record)
    async with await Storage.connect(f"sqlite:///{tmp_path}/nexus.db") as storage:
        namespace = storage.namespace("plugins/business/inventory")
        # No relay delay; the bus is not started yet, so the event stays in the outbox.
        outbox = Outbox(bus, relay_after=0)
        outbox.register("inventory", namespace, DECLARED)
        publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
        with tracing.tracer().start_as_current_span("call"):
            async with namespace.transaction() as unit:
                envelope = await publisher.publish(
                    inventory_pb2.StockReserved(order_id="o-2"), transaction=unit
                )
                stored = await unit.repository(Envelope, collection=OUTBOX_COLLECTION).get(
                    envelope.id
                )
        assert stored is not None and stored.trace_context["traceparent"]
        assert dict(stored.trace_context) == dict(envelope.trace_context)
        await bus.start()
        try:
            await eventually(lambda: len(handled) == 1)
        finally:
            await bus.stop(grace=1)
    (publish,) = named(memory, f"publish {EVENT}")
    (consumer,) = named(memory, f"process {EVENT}")
    assert publish.context is not None
    assert [link.context.span_id for link in consumer.links] == [publish.context.span_id]


async def test_an_event_without_trace_context_gets_a_root_consumer_span(
    memory: InMemorySpanExporter,
) -> None:
    bus = MemoryBus()
    handled: list[str] = []

    async def record(event: inventory_pb2.StockReserved, delivery: Delivery) -> None:
        handled.append(event.order_id)

    bus.subscribe("shop", EVENT, record)
    await bus.start()
    try:
        from nexus_grpc.events import seal

        with tracing.tracer().start_as_current_span("unrelated"):
            await bus.publish(seal(inventory_pb2.StockReserved(order_id="o-3"), source="x"))
        await eventually(lambda: handled == ["o-3"])
    finally:
        await bus.stop(grace=1)
    (consumer,) = named(memory, f"process {EVENT}")
    assert consumer.parent is None and list(consumer.links) == []


async def test_with_tracing_off_envelopes_carry_no_trace_context() -> None:
    bus = MemoryBus()
    envelope = await Publisher(bus, "inventory", DECLARED).publish(
        inventory_pb2.StockReserved(order_id="o-4")
    )
    assert dict(envelope.trace_context) == {}


async def test_a_refused_publish_is_an_error_span(
    memory: InMemorySpanExporter, tmp_path: Path
) -> None:
    bus = MemoryBus()
    async with await Storage.connect(f"sqlite:///{tmp_path}/nexus.db") as storage:
        outbox = Outbox(bus)
        outbox.register("inventory", storage.namespace("plugins/business/inventory"), DECLARED)
        publisher = Publisher(bus, "inventory", DECLARED, outbox=outbox)
        async with storage.namespace("plugins/business/orders").transaction() as unit:
            with pytest.raises(ValueError, match="only its own"):
                await publisher.publish(
                    inventory_pb2.StockReserved(order_id="o-5"), transaction=unit
                )
    (publish,) = named(memory, f"publish {EVENT}")
    assert publish.status.status_code is StatusCode.ERROR
    assert publish.status.description == "ValueError"
