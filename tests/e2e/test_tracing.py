"""The proof of tracing: one REST call followed across two `nexus serve` processes.

Process "shop" serves orders (inventory disabled), process "stock" serves inventory
(orders disabled); they share the Redis bus and one data directory (one SQLite file,
one signing secret). Both export with the real OTLP exporter to a receiver started by
the test. An order created over REST with a ``traceparent`` header becomes one trace:
the REST server span (a child of the caller's span), the handler's storage statements,
the OrderCreated publish, the inventory consumer span in the other process (linked to
the publish), its StockReserved publish, and the orders consumer span that confirms
the order, back in the first process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.e2e.conftest import REPO, ServeProcess, start_serve
from tests.fixtures.otlp import ReceivedSpan, TraceReceiver, receiving
from tests.fixtures.redis import OwnRedis

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
PRODUCER = trace_pb2.Span.SPAN_KIND_PRODUCER
CONSUMER = trace_pb2.Span.SPAN_KIND_CONSUMER
ORDER_CREATED = "nexus.orders.v1.OrderCreated"
STOCK_RESERVED = "nexus.inventory.v1.StockReserved"
CUSTOMER = "traced-customer-5e1d"  # a value no span may carry
CALLER_TRACE = os.urandom(16)
CALLER_SPAN = os.urandom(8)


@pytest.fixture
def otlp_receiver() -> Iterator[TraceReceiver]:
    yield from receiving()


@pytest.fixture(params=["grpc", "http/protobuf"])
def two_hosts(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    probe_stubs: Path,
    own_redis: OwnRedis,
    otlp_receiver: TraceReceiver,
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """("shop": orders, "stock": inventory), tracing to ``otlp_receiver`` over each
    OTLP protocol."""
    protocol = request.param
    address = otlp_receiver.address if protocol == "grpc" else otlp_receiver.http_address
    started: list[ServeProcess] = []

    def start(disabled: str) -> ServeProcess:
        serve = start_serve(
            tmp_path,  # one data dir: one SQLite file, one signing secret
            probe_stubs,
            [REPO / "plugins"],
            NEXUS_PLUGINS__DISABLED=disabled,
            NEXUS_EVENTS__BACKEND="redis",
            NEXUS_EVENTS__REDIS_URL=own_redis.url,
            NEXUS_LOG__ACCESS="false",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{address}",
            OTEL_SERVICE_NAME="nexus-e2e",
            OTEL_BSP_SCHEDULE_DELAY="100",  # milliseconds: export soon after each span
        )
        started.append(serve)
        return serve

    try:
        yield start("inventory"), start("orders")
        assert otlp_receiver.exports[protocol] > 0  # the spans came over that protocol
    finally:
        for serve in started:
            serve.close()


def settled(client: httpx.Client, order_id: str, seconds: float = 30) -> str:
    """The order's status once it left PENDING."""
    deadline = time.monotonic() + seconds
    while True:
        status = client.get(f"/v1/orders/{order_id}").json()["status"]
        if status != "ORDER_STATUS_PENDING":
            return str(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"order {order_id} still pending after {seconds}s")
        time.sleep(0.1)


class Tree:
    """The spans of one trace, by id, with what the assertions need."""

    def __init__(self, spans: list[ReceivedSpan]) -> None:
        self.spans = spans
        self.by_id = {s.span.span_id: s for s in spans}

    def one(self, name: str, kind: int) -> ReceivedSpan:
        found = [s for s in self.spans if s.name == name and s.span.kind == kind]
        assert len(found) == 1, f"{len(found)} spans {name!r} of kind {kind}"
        return found[0]

    def descends(self, span: ReceivedSpan, ancestor: ReceivedSpan) -> bool:
        parent = span.span.parent_span_id
        while parent:
            if parent == ancestor.span.span_id:
                return True
            above = self.by_id.get(parent)
            if above is None:
                return False
            parent = above.span.parent_span_id
        return False

    def storage_under(self, ancestor: ReceivedSpan) -> list[ReceivedSpan]:
        return [
            s
            for s in self.spans
            if s.span.kind == CLIENT
            and s.attributes.get("db.system.name") == "sqlite"
            and self.descends(s, ancestor)
        ]


def complete(spans: list[ReceivedSpan]) -> bool:
    names = {s.name for s in spans}
    return {f"process {ORDER_CREATED}", f"process {STOCK_RESERVED}"} <= names


def linked_to(span: ReceivedSpan, publish: ReceivedSpan) -> bool:
    return [(link.trace_id, link.span_id) for link in span.span.links] == [
        (publish.span.trace_id, publish.span.span_id)
    ]


def test_one_rest_call_is_one_trace_across_both_processes(
    two_hosts: tuple[ServeProcess, ServeProcess], otlp_receiver: TraceReceiver
) -> None:
    shop, stock = two_hosts
    headers = {"authorization": f"Bearer {shop.token()}"}
    with httpx.Client(base_url=f"http://{stock.http_address}", headers=headers) as client:
        client.put("/v1/stock/PEN-7", json={"available": 10}).raise_for_status()
    traceparent = f"00-{CALLER_TRACE.hex()}-{CALLER_SPAN.hex()}-01"
    with httpx.Client(base_url=f"http://{shop.http_address}", headers=headers) as client:
        created = client.post(
            "/v1/orders",
            json={"customerId": CUSTOMER, "items": [{"sku": "PEN-7", "quantity": 2}]},
            headers={"traceparent": traceparent},
        )
        assert created.status_code == 200, created.text
        assert settled(client, created.json()["id"]) == "ORDER_STATUS_CONFIRMED"

    tree = Tree(otlp_receiver.wait_for(complete, CALLER_TRACE))
    shop_pid, stock_pid = shop.process.pid, stock.process.pid

    # The REST call: a SERVER span, child of the caller's span, in the shop process.
    server = tree.one("nexus.orders.v1.OrdersService/CreateOrder", SERVER)
    assert server.span.parent_span_id == CALLER_SPAN
    assert server.attributes["http.route"] == "/v1/orders"
    assert server.attributes["rpc.service"] == "nexus.orders.v1.OrdersService"
    assert server.resource["process.pid"] == shop_pid
    # The handler's storage statements, children of the call, without bound values.
    statements = tree.storage_under(server)
    assert "INSERT" in {s.attributes["db.operation.name"] for s in statements}
    for span in tree.spans:  # attributes, status message and events alike
        assert CUSTOMER not in str(span.attributes), span.name
        assert CUSTOMER not in str(span.span), span.name

    # The publish, inside the call.
    created_publish = tree.one(f"publish {ORDER_CREATED}", PRODUCER)
    assert tree.descends(created_publish, server)

    # Inventory's handler, in the other process: linked to (and child of) the publish.
    reserve = tree.one(f"process {ORDER_CREATED}", CONSUMER)
    assert reserve.resource["process.pid"] == stock_pid
    assert reserve.resource["service.instance.id"] != server.resource["service.instance.id"]
    assert linked_to(reserve, created_publish)
    assert reserve.span.parent_span_id == created_publish.span.span_id
    assert reserve.attributes["messaging.consumer.group.name"] == "inventory"
    assert reserve.attributes["messaging.destination.name"] == ORDER_CREATED
    assert reserve.attributes["nexus.event.delivery_attempt"] == 1
    assert tree.storage_under(reserve)  # the reservation's statements
    reserved_publish = tree.one(f"publish {STOCK_RESERVED}", PRODUCER)
    assert tree.descends(reserved_publish, reserve)
    assert reserved_publish.resource["process.pid"] == stock_pid

    # Back in the shop process: the orders handler that confirms the order.
    confirm = tree.one(f"process {STOCK_RESERVED}", CONSUMER)
    assert confirm.resource["process.pid"] == shop_pid
    assert linked_to(confirm, reserved_publish)
    assert confirm.attributes["messaging.consumer.group.name"] == "orders"
    assert "UPDATE" in {s.attributes["db.operation.name"] for s in tree.storage_under(confirm)}
