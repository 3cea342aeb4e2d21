"""The metrics stage: go-grpc-prometheus series for every call, and GET /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from nexus_grpc.errors import NotFoundError, StatusError
from nexus_grpc.gateway.app import GatewayApp, GatewaySettings
from nexus_grpc.gateway.context import GatewayContext
from nexus_grpc.pipeline import ErrorStage, chain, grpc_method_handler
from nexus_grpc.pipeline.metrics import Metrics, MetricsStage, code_label
from nexus_grpc.routing import Arity, CallHandler, InFlight, MethodInfo, Router


def _probe_service() -> ServiceDescriptor:
    """A service with one method of each arity, added once to the default pool."""
    name = "tests/pipeline/metrics_probe.proto"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto(
            name=name, package="metricsprobe.v1", syntax="proto3"
        )
        proto.message_type.add(name="Msg")
        service = proto.service.add(name="Probe")
        for method, client, server in [
            ("Unary", False, False),
            ("Watch", False, True),
            ("Upload", True, False),
            ("Chat", True, True),
        ]:
            service.method.add(
                name=method,
                input_type=".metricsprobe.v1.Msg",
                output_type=".metricsprobe.v1.Msg",
                client_streaming=client,
                server_streaming=server,
            )
        pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindServiceByName("metricsprobe.v1.Probe")


PROBE = _probe_service()
SERVICE = "metricsprobe.v1.Probe"


def info(method: str, plugin: str = "probe") -> MethodInfo:
    descriptor: MethodDescriptor = PROBE.methods_by_name[method]
    return MethodInfo(f"/{SERVICE}/{method}", plugin, descriptor, Arity.of(descriptor), InFlight())


class FakeContext:
    """Enough of grpc.aio's ServicerContext for the stage; no ``transport`` (gRPC)."""

    def __init__(self, *, time_remaining: float | None = None) -> None:
        self._code: grpc.StatusCode | None = None
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._remaining = time_remaining
        self.written: list[Any] = []

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> None:
        self._code = code
        self._trailing = tuple(trailing)
        raise grpc.aio.AbortError()

    def time_remaining(self) -> float | None:
        return self._remaining

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    async def write(self, message: Any) -> None:
        self.written.append(message)


def rest_context(transport: str = "rest") -> GatewayContext:
    return GatewayContext(transport=transport, metadata=(), peer="ipv4:127.0.0.1:1", deadline=None)


class Samples:
    """Reads one method's series from a Metrics registry."""

    def __init__(
        self, metrics: Metrics, method: str, grpc_type: str, plugin: str = "probe"
    ) -> None:
        self.metrics = metrics
        self.base = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}
        self.plugin = plugin

    def _value(self, name: str, transport: str, **extra: str) -> float:
        labels = {**self.base, **extra, "transport": transport, "plugin": self.plugin}
        value = self.metrics.registry.get_sample_value(name, labels)
        assert value is not None, f"no sample {name}{labels}"
        return value

    def started(self, transport: str = "grpc") -> float:
        return self._value("grpc_server_started_total", transport)

    def handled(self, code: str, transport: str = "grpc") -> float | None:
        labels = {**self.base, "grpc_code": code, "transport": transport, "plugin": self.plugin}
        return self.metrics.registry.get_sample_value("grpc_server_handled_total", labels)

    def received(self, transport: str = "grpc") -> float:
        return self._value("grpc_server_msg_received_total", transport)

    def sent(self, transport: str = "grpc") -> float:
        return self._value("grpc_server_msg_sent_total", transport)

    def durations(self, transport: str = "grpc") -> float:
        return self._value("grpc_server_handling_seconds_count", transport)

    def bucket(self, le: str, transport: str = "grpc") -> float:
        return self._value("grpc_server_handling_seconds_bucket", transport, le=le)

    def in_flight(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "nexus_server_in_flight_calls", {"plugin": self.plugin}
        )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def bind(
    metrics: Metrics, method: str, handler: CallHandler, *, errors: bool = False
) -> CallHandler:
    stages: list[Any] = [MetricsStage(metrics)]
    if errors:
        stages.append(ErrorStage())
    return chain(stages, info(method), handler)


# Unary calls ---------------------------------------------------------------------------


async def test_a_successful_unary_call_counts_started_handled_messages_and_duration(
    metrics: Metrics,
) -> None:
    samples = Samples(metrics, "Unary", "unary")
    in_flight_during: list[float | None] = []

    async def handler(request: Any, context: Any) -> str:
        in_flight_during.append(samples.in_flight())
        return "pong"

    call = bind(metrics, "Unary", handler)
    assert await call("ping", FakeContext()) == "pong"
    assert await call("ping", FakeContext()) == "pong"
    assert samples.started() == 2
    assert samples.handled("OK") == 2
    assert samples.received() == 2
    assert samples.sent() == 2
    assert samples.durations() == 2
    assert samples.bucket("+Inf") == 2
    assert in_flight_during == [1, 1]
    assert samples.in_flight() == 0
    # Other codes appear once they happen; the other transports are there at zero.
    assert samples.handled("NotFound") is None
    assert samples.started("rest") == 0 and samples.started("grpc-web") == 0


async def test_a_status_error_is_counted_with_its_code_after_the_error_stage_aborts(
    metrics: Metrics,
) -> None:
    async def handler(request: Any, context: Any) -> None:
        raise NotFoundError("order", "o-1")

    call = bind(metrics, "Unary", handler, errors=True)
    with pytest.raises(grpc.aio.AbortError):
        await call("ping", FakeContext())
    samples = Samples(metrics, "Unary", "unary")
    assert samples.started() == 1
    assert samples.handled("NotFound") == 1
    assert samples.handled("OK") == 0
    assert samples.received() == 1
    assert samples.sent() == 0  # no response went out
    assert samples.durations() == 1
    assert samples.in_flight() == 0


@pytest.mark.parametrize("errors", [True, False], ids=["error-stage", "bare"])
async def test_an_unexpected_exception_counts_as_internal(metrics: Metrics, errors: bool) -> None:
    async def handler(request: Any, context: Any) -> None:
        raise RuntimeError("bug")

    call = bind(metrics, "Unary", handler, errors=errors)
    with pytest.raises(grpc.aio.AbortError if errors else RuntimeError):
        await call("ping", FakeContext())
    assert Samples(metrics, "Unary", "unary").handled("Internal") == 1


async def test_a_status_error_without_the_error_stage_counts_with_its_own_code(
    metrics: Metrics,
) -> None:
    async def handler(request: Any, context: Any) -> None:
        raise StatusError(grpc.StatusCode.PERMISSION_DENIED, "no")

    with pytest.raises(StatusError):
        await bind(metrics, "Unary", handler)("ping", FakeContext())
    assert Samples(metrics, "Unary", "unary").handled("PermissionDenied") == 1


async def test_an_abort_without_a_code_on_the_context_counts_as_unknown(metrics: Metrics) -> None:
    async def handler(request: Any, context: Any) -> None:
        raise grpc.aio.AbortError()

    with pytest.raises(grpc.aio.AbortError):
        await bind(metrics, "Unary", handler)("ping", FakeContext())
    assert Samples(metrics, "Unary", "unary").handled("Unknown") == 1


@pytest.mark.parametrize(
    ("remaining", "code"),
    [(None, "Canceled"), (5.0, "Canceled"), (0.0, "DeadlineExceeded")],
)
async def test_cancellation_counts_as_canceled_or_deadline_exceeded(
    metrics: Metrics, remaining: float | None, code: str
) -> None:
    async def handler(request: Any, context: Any) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await bind(metrics, "Unary", handler, errors=True)(
            "ping", FakeContext(time_remaining=remaining)
        )
    samples = Samples(metrics, "Unary", "unary")
    assert samples.handled(code) == 1
    assert samples.in_flight() == 0


async def test_a_code_set_on_the_context_is_the_code_counted(metrics: Metrics) -> None:
    async def handler(request: Any, context: Any) -> None:
        context.set_code(grpc.StatusCode.ALREADY_EXISTS)

    await bind(metrics, "Unary", handler)("ping", FakeContext())
    samples = Samples(metrics, "Unary", "unary")
    assert samples.handled("AlreadyExists") == 1
    assert samples.handled("OK") == 0
    assert samples.sent() == 0


async def test_durations_land_in_the_right_buckets(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([10.0, 10.3])
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))

    async def handler(request: Any, context: Any) -> None:
        return None

    call = bind(metrics, "Unary", handler)  # binds the patched clock
    await call("ping", FakeContext())
    samples = Samples(metrics, "Unary", "unary")
    assert samples.bucket("0.25") == 0
    assert samples.bucket("0.5") == 1
    assert samples.bucket("10.0") == 1
    assert samples.bucket("+Inf") == 1
    total = metrics.registry.get_sample_value(
        "grpc_server_handling_seconds_sum",
        {**samples.base, "transport": "grpc", "plugin": "probe"},
    )
    assert total == pytest.approx(0.3)


# Transports ----------------------------------------------------------------------------


async def test_each_transport_is_counted_under_its_own_label(metrics: Metrics) -> None:
    async def handler(request: Any, context: Any) -> str:
        return "pong"

    call = bind(metrics, "Unary", handler)
    await call("ping", FakeContext())
    await call("ping", rest_context("rest"))
    await call("ping", rest_context("rest"))
    await call("ping", rest_context("grpc-web"))
    samples = Samples(metrics, "Unary", "unary")
    assert samples.handled("OK", "grpc") == 1
    assert samples.handled("OK", "rest") == 2
    assert samples.handled("OK", "grpc-web") == 1


async def test_an_unknown_transport_is_counted_as_other_not_as_a_new_label(
    metrics: Metrics,
) -> None:
    async def handler(request: Any, context: Any) -> str:
        return "pong"

    call = bind(metrics, "Unary", handler)
    for transport in ("connect", "websocket"):
        await call("ping", rest_context(transport))
    assert Samples(metrics, "Unary", "unary").handled("OK", "other") == 2
    exposition = metrics.exposition().decode()
    assert 'transport="connect"' not in exposition


def test_unknown_methods_are_counted_per_transport(metrics: Metrics) -> None:
    for transport in ("grpc", "grpc", "rest", "grpc-web", "made-up"):
        metrics.count_unknown(transport)
    value = metrics.registry.get_sample_value
    assert value("nexus_server_unknown_method_total", {"transport": "grpc"}) == 2
    assert value("nexus_server_unknown_method_total", {"transport": "rest"}) == 1
    assert value("nexus_server_unknown_method_total", {"transport": "grpc-web"}) == 1
    assert value("nexus_server_unknown_method_total", {"transport": "other"}) == 1


# Streams -------------------------------------------------------------------------------


async def requests(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_server_streams_count_each_message_written(metrics: Metrics) -> None:
    seen_contexts: list[Any] = []

    async def handler(request: Any, context: Any) -> None:
        seen_contexts.append(context)
        for n in range(3):
            await context.write(n)
        # The proxy delegates everything else, including the transport label.
        assert context.peer() == "ipv4:127.0.0.1:5555"

    context = FakeContext()
    await bind(metrics, "Watch", handler, errors=True)("ping", context)
    samples = Samples(metrics, "Watch", "server_stream")
    assert context.written == [0, 1, 2]
    assert seen_contexts[0] is not context  # a counting proxy, not grpc's class patched
    assert samples.received() == 1
    assert samples.sent() == 3
    assert samples.handled("OK") == 1


async def test_a_failing_server_stream_keeps_the_messages_it_sent(metrics: Metrics) -> None:
    async def handler(request: Any, context: Any) -> None:
        await context.write(1)
        raise StatusError(grpc.StatusCode.UNAVAILABLE, "gone")

    with pytest.raises(grpc.aio.AbortError):
        await bind(metrics, "Watch", handler, errors=True)("ping", FakeContext())
    samples = Samples(metrics, "Watch", "server_stream")
    assert samples.sent() == 1
    assert samples.handled("Unavailable") == 1


async def test_client_streams_count_each_message_received(metrics: Metrics) -> None:
    async def handler(request: Any, context: Any) -> str:
        return ",".join([item async for item in request])

    context = FakeContext()
    result = await bind(metrics, "Upload", handler)(requests("a", "b", "c", "d"), context)
    samples = Samples(metrics, "Upload", "client_stream")
    assert result == "a,b,c,d"
    assert samples.received() == 4
    assert samples.sent() == 1
    assert samples.handled("OK") == 1


async def test_bidi_streams_count_both_ways_on_rest(metrics: Metrics) -> None:
    written: list[Any] = []

    async def writer(message: Any) -> None:
        written.append(message)

    async def handler(request: Any, context: Any) -> None:
        async for item in request:
            await context.write(item.upper())
            await context.write(item)

    context = GatewayContext(
        transport="rest", metadata=(), peer="ipv4:1.2.3.4:5", deadline=None, writer=writer
    )
    await bind(metrics, "Chat", handler)(requests("x", "y"), context)
    samples = Samples(metrics, "Chat", "bidi_stream")
    assert written == ["X", "x", "Y", "y"]
    assert samples.received("rest") == 2
    assert samples.sent("rest") == 4
    assert samples.handled("OK", "rest") == 1
    assert samples.started("grpc") == 0


async def test_unary_calls_get_the_callers_context_untouched(metrics: Metrics) -> None:
    seen: list[Any] = []

    async def handler(request: Any, context: Any) -> None:
        seen.append(context)

    context = FakeContext()
    await bind(metrics, "Unary", handler)("ping", context)
    await bind(metrics, "Upload", handler)(requests(), context)
    assert seen == [context, context]


# Registry ------------------------------------------------------------------------------


async def test_rebinding_a_method_keeps_its_counts_and_hosts_do_not_share_them() -> None:
    first, second = Metrics(), Metrics()

    async def handler(request: Any, context: Any) -> None:
        return None

    await bind(first, "Unary", handler)("ping", FakeContext())
    await bind(first, "Unary", handler)("ping", FakeContext())  # a new routing generation
    assert Samples(first, "Unary", "unary").started() == 2
    assert second.registry.get_sample_value("grpc_server_started_total", {}) is None
    assert (
        Samples(second, "Unary", "unary").metrics.exposition().count(b"grpc_server_started_total{")
        == 0
    )


def test_go_grpc_prometheus_spells_codes_in_camel_case() -> None:
    assert code_label(grpc.StatusCode.OK) == "OK"
    assert code_label(grpc.StatusCode.CANCELLED) == "Canceled"
    assert code_label(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert code_label(grpc.StatusCode.RESOURCE_EXHAUSTED) == "ResourceExhausted"
    assert code_label(grpc.StatusCode.UNAUTHENTICATED) == "Unauthenticated"


def test_the_exposition_has_go_grpc_prometheus_names_and_process_metrics(metrics: Metrics) -> None:
    bind(metrics, "Watch", _noop)
    text = metrics.exposition().decode()
    for name in (
        "# TYPE grpc_server_started_total counter",
        "# TYPE grpc_server_handled_total counter",
        "# TYPE grpc_server_handling_seconds histogram",
        "# TYPE grpc_server_msg_received_total counter",
        "# TYPE grpc_server_msg_sent_total counter",
        "# TYPE nexus_server_in_flight_calls gauge",
        "# TYPE nexus_server_unknown_method_total counter",
        "process_cpu_seconds_total",
        'grpc_server_handling_seconds_bucket{grpc_method="Watch",grpc_service="metricsprobe.v1.Probe",grpc_type="server_stream",le="0.005",plugin="probe",transport="grpc"} 0.0',
    ):
        assert name in text
    bare = Metrics(process_metrics=False).exposition().decode()
    assert "process_cpu_seconds_total" not in bare


def test_buckets_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        Metrics(buckets=(0.1, float("inf")))
    assert Metrics(buckets=(1, 0.5)).buckets == (0.5, 1.0)


async def _noop(request: Any, context: Any) -> None:
    return None


# GET /metrics --------------------------------------------------------------------------


async def test_get_metrics_on_the_http_port_answers_the_exposition(metrics: Metrics) -> None:
    async def handler(request: Any, context: Any) -> str:
        return "pong"

    await bind(metrics, "Unary", handler)("ping", rest_context())
    app = GatewayApp(Router(), GatewaySettings(), metrics=metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        reply = await client.get("/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain; version=")
        assert (
            'grpc_server_handled_total{grpc_code="OK",grpc_method="Unary",'
            'grpc_service="metricsprobe.v1.Probe",grpc_type="unary",plugin="probe",'
            'transport="rest"} 1.0'
        ) in reply.text
        assert (await client.post("/metrics")).status_code == 404


async def test_without_metrics_the_gateway_has_no_metrics_route() -> None:
    app = GatewayApp(Router(), GatewaySettings())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        reply = await client.get("/metrics")
    assert reply.status_code == 404
    assert reply.json()["details"][0]["reason"] == "ROUTE_NOT_FOUND"


# A real grpc.aio server ----------------------------------------------------------------


class ProbeServer:
    """A grpc.aio server on port 0 serving the probe methods through metrics + errors."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.entered = asyncio.Event()
        self.server = grpc.aio.server()
        handlers: dict[str, CallHandler] = {
            "Unary": self._unary,
            "Watch": self._watch,
            "Upload": self._upload,
            "Chat": self._chat,
        }
        method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, handler in handlers.items():
            method = info(name)
            call = chain([MetricsStage(metrics), ErrorStage()], method, handler)
            method_handlers[name] = grpc_method_handler(method.arity, call, None)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, method_handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _unary(self, request: bytes, context: Any) -> bytes:
        if request == b"missing":
            raise NotFoundError("thing", "x")
        if request == b"bug":
            raise RuntimeError("bug")
        if request == b"slow":
            self.entered.set()
            await asyncio.sleep(30)
        return request

    async def _watch(self, request: bytes, context: Any) -> None:
        for _ in range(int(request)):
            await context.write(b"tick")

    async def _upload(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        return b"".join([item async for item in requests])

    async def _chat(self, requests: AsyncIterator[bytes], context: Any) -> None:
        async for item in requests:
            await context.write(item)


@pytest.fixture
async def probe_server(metrics: Metrics) -> AsyncIterator[ProbeServer]:
    server = ProbeServer(metrics)
    await server.server.start()
    try:
        yield server
    finally:
        await server.server.stop(None)


async def _settled(samples: Samples, code: str) -> float | None:
    # The server finishes its bookkeeping a moment after the client sees the status (a
    # deadline's, once grpc core has told the loop: seconds on a loaded machine).
    for _ in range(1000):
        if samples.handled(code):
            break
        await asyncio.sleep(0.01)
    return samples.handled(code)


async def test_a_real_grpc_server_is_counted_for_every_outcome(probe_server: ProbeServer) -> None:
    metrics = probe_server.metrics
    async with grpc.aio.insecure_channel(f"127.0.0.1:{probe_server.port}") as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary", None, None)
        assert await unary(b"hi") == b"hi"
        for request, expected in [
            (b"missing", grpc.StatusCode.NOT_FOUND),
            (b"bug", grpc.StatusCode.INTERNAL),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await unary(request)
            assert failure.value.code() == expected
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unary(b"slow", timeout=0.2)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        probe_server.entered.clear()
        cancelled = unary(b"slow")
        await probe_server.entered.wait()
        cancelled.cancel()
        samples = Samples(metrics, "Unary", "unary")
        assert await _settled(samples, "Canceled") == 1
        assert await _settled(samples, "DeadlineExceeded") == 1

        ticks = [m async for m in channel.unary_stream(f"/{SERVICE}/Watch", None, None)(b"3")]
        assert ticks == [b"tick"] * 3
        upload = channel.stream_unary(f"/{SERVICE}/Upload", None, None)
        assert await upload(iter([b"a", b"b"])) == b"ab"
        chat = channel.stream_stream(f"/{SERVICE}/Chat", None, None)
        assert [m async for m in chat(iter([b"x", b"y", b"z"]))] == [b"x", b"y", b"z"]

    assert samples.started() == 5
    assert samples.handled("OK") == 1
    assert samples.handled("NotFound") == 1
    assert samples.handled("Internal") == 1
    assert samples.sent() == 1
    assert samples.in_flight() == 0
    watch = Samples(metrics, "Watch", "server_stream")
    assert await _settled(watch, "OK") == 1
    assert (watch.received(), watch.sent()) == (1, 3)
    upload_samples = Samples(metrics, "Upload", "client_stream")
    assert await _settled(upload_samples, "OK") == 1
    assert (upload_samples.received(), upload_samples.sent()) == (2, 1)
    chat_samples = Samples(metrics, "Chat", "bidi_stream")
    assert await _settled(chat_samples, "OK") == 1
    assert (chat_samples.received(), chat_samples.sent()) == (3, 3)
