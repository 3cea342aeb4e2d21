"""Open streams are bounded, and each ends with an in-band UNAVAILABLE when the host drains.

- caps per principal (per peer when anonymous) and in total, on gRPC, REST and gRPC-Web,
  counted across transports: RESOURCE_EXHAUSTED (HTTP 429, Retry-After) beyond;
- the orders feed queues a change only to watchers allowed to see it;
- at shutdown every open stream, on every transport, gets UNAVAILABLE "server shutting
  down" as its final status (gRPC trailers, NDJSON/SSE/JSON-array error item, gRPC-Web
  trailer frame, in-process call), and a `nexus serve` exits long before its grace period.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import LimitsConfig
from nexus_grpc.gateway.grpcweb import encode_frame
from nexus_grpc.plugins.services import Services
from nexus_grpc.testing import RunningHost, running_host
from plugins.orders.feed import ChangeFeed, WatcherTooSlowError
from tests.e2e.conftest import start_serve

REPO = Path(__file__).resolve().parents[2]
WATCH_PATH = "/nexus.orders.v1.OrdersService/WatchOrders"
TRANSPORTS = ["grpc", "ndjson", "sse", "json-array", "grpc-web"]
_ACCEPT = {"ndjson": "application/x-ndjson", "sse": "text/event-stream", "json-array": ""}


def new_order(customer: str) -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id=customer,
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)],
        )
    )


class Watch:
    """One WatchOrders stream (include_existing, so a first message proves it is open)."""

    def __init__(self, transport: str, grpc_address: str, http_url: str, token: str) -> None:
        self.transport = transport
        self._grpc_address = grpc_address
        self._http_url = http_url
        self._token = token
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._http: httpx.AsyncClient | None = None
        self._stream: Any = None
        self._response: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._buffer = b""
        #: Set when the stream was refused before it opened: (code name, message, HTTP).
        self.refused: tuple[str, str, int, httpx.Headers | None] | None = None

    async def open(self, customer: str = "") -> Watch:
        """Start the stream and read its first message, or record how it was refused."""
        request = orders_pb2.WatchOrdersRequest(customer_id=customer, include_existing=True)
        if self.transport == "grpc":
            self._channel = grpc.aio.insecure_channel(self._grpc_address)
            stub = orders_pb2_grpc.OrdersServiceStub(self._channel)
            self._call = stub.WatchOrders(
                request, metadata=(("authorization", f"Bearer {self._token}"),)
            )
            try:
                await asyncio.wait_for(self._call.read(), 10)
            except grpc.aio.AioRpcError as error:
                self.refused = (error.code().name, error.details() or "", 0, None)
            return self
        self._http = httpx.AsyncClient(base_url=self._http_url, timeout=10)
        auth = {"authorization": f"Bearer {self._token}"}
        if self.transport == "grpc-web":
            stream = self._http.stream(
                "POST",
                WATCH_PATH,
                content=encode_frame(0, request.SerializeToString()),
                headers={**auth, "content-type": "application/grpc-web+proto"},
            )
        else:
            query = {"include_existing": "true"}
            if customer:
                query["customer_id"] = customer
            accept = _ACCEPT[self.transport]
            stream = self._http.stream(
                "GET",
                "/v1/orders:watch",
                params=query,
                headers={**auth, **({"accept": accept} if accept else {})},
            )
        # Kept: the response is closed when its context manager is collected.
        self._stream = stream
        self._response = await stream.__aenter__()
        self._chunks = self._response.aiter_raw()
        if self._response.status_code != 200:
            body = json.loads(await self._rest())
            code = next(c.name for c in grpc.StatusCode if c.value[0] == body["code"])
            self.refused = (
                code,
                body["message"],
                self._response.status_code,
                self._response.headers,
            )
            return self
        if self.transport == "grpc-web":
            frames = await self._frames_until(lambda frames: len(frames) >= 1)
            flag, payload = frames[0]
            if flag & 0x80:
                status = _trailers(payload)
                code = next(
                    c.name for c in grpc.StatusCode if str(c.value[0]) == status["grpc-status"]
                )
                self.refused = (code, unquote(status.get("grpc-message", "")), 200, None)
            return self
        marker = b"CHANGE_TYPE_EXISTING"
        while marker not in self._buffer:
            self._buffer += await asyncio.wait_for(anext(self._chunks), 10)
        return self

    async def outcome(self) -> tuple[str, str]:
        """Read to the end: the final status's code name and message."""
        if self.transport == "grpc":
            try:
                while await asyncio.wait_for(self._call.read(), 20) is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as error:
                return error.code().name, error.details() or ""
            return "OK", ""
        if self.transport == "grpc-web":
            frames = await self._frames_until(lambda frames: bool(frames) and frames[-1][0] & 0x80)
            status = _trailers(frames[-1][1])
            code = next(c.name for c in grpc.StatusCode if str(c.value[0]) == status["grpc-status"])
            return code, unquote(status.get("grpc-message", ""))
        text = (self._buffer + await self._rest()).decode()
        if self.transport == "ndjson":
            last = json.loads(text.strip().splitlines()[-1])
        elif self.transport == "sse":
            event = text.strip().split("\n\n")[-1]
            assert event.startswith("event: error\n"), text
            last = json.loads(event.split("data: ", 1)[1])
        else:
            last = json.loads(text)[-1]  # the whole body is one valid JSON array
        error = last["error"]
        code = next(c.name for c in grpc.StatusCode if c.value[0] == error["code"])
        return code, error["message"]

    async def _rest(self) -> bytes:
        assert self._chunks is not None
        body = b""
        async with asyncio.timeout(20):
            async for chunk in self._chunks:
                body += chunk
        return body

    async def _frames_until(self, done: Any) -> list[tuple[int, bytes]]:
        assert self._chunks is not None
        while True:
            frames = _complete_frames(self._buffer)
            if done(frames):
                return frames
            self._buffer += await asyncio.wait_for(anext(self._chunks), 20)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close(None)
        if self._stream is not None:
            await self._stream.__aexit__(None, None, None)
        if self._http is not None:
            await self._http.aclose()


def _complete_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    offset = 0
    while len(data) - offset >= 5:
        length = int.from_bytes(data[offset + 1 : offset + 5], "big")
        if len(data) - offset - 5 < length:
            break
        frames.append((data[offset], data[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    return frames


def _trailers(block: bytes) -> dict[str, str]:
    lines = block.decode("latin-1").strip().split("\r\n")
    return dict(line.split(":", 1) for line in lines)


@pytest.fixture
async def capped_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """Orders with HTTP on, at most 2 streams per principal and 4 in total."""
    async with running_host(
        plugins=["orders"],
        data_dir=tmp_path,
        http=True,
        limits=LimitsConfig(max_streams=4, max_streams_per_principal=2),
    ) as host:
        admin = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token("admin")))
        for customer in ("alice", "bob", "carol", "dave", "erin"):
            await admin.CreateOrder(new_order(customer))
        yield host


def _watch(host: RunningHost, transport: str, subject: str) -> Watch:
    token = host.token(subject, grants=("orders.read:own",))
    return Watch(transport, host.address, host.http_url, token)


async def _wait_open(host: RunningHost, count: int) -> None:
    for _ in range(200):
        if host.host.streams.open == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{host.host.streams.open} streams open, expected {count}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_streams_per_principal_are_capped(capped_host: RunningHost, transport: str) -> None:
    watches = []
    try:
        for _ in range(2):
            watches.append(await _watch(capped_host, transport, "alice").open())
            assert watches[-1].refused is None
        third = await _watch(capped_host, transport, "alice").open()
        watches.append(third)
        assert third.refused is not None
        code, message, http, headers = third.refused
        assert code == "RESOURCE_EXHAUSTED"
        assert "too many open streams for this caller (limit 2)" in message
        if transport in _ACCEPT:
            assert http == 429
            assert headers is not None and headers["retry-after"] == "1"
        # Another principal is not affected.
        other = await _watch(capped_host, transport, "bob").open()
        watches.append(other)
        assert other.refused is None
    finally:
        for watch in watches:
            await watch.close()
    # Closed streams give their slots back.
    await _wait_open(capped_host, 0)
    again = await _watch(capped_host, transport, "alice").open()
    try:
        assert again.refused is None
    finally:
        await again.close()


async def test_the_per_principal_cap_counts_every_transport_together(
    capped_host: RunningHost,
) -> None:
    first = await _watch(capped_host, "grpc", "alice").open()
    second = await _watch(capped_host, "ndjson", "alice").open()
    third = await _watch(capped_host, "grpc-web", "alice").open()
    try:
        assert first.refused is None and second.refused is None
        assert third.refused is not None and third.refused[0] == "RESOURCE_EXHAUSTED"
    finally:
        for watch in (first, second, third):
            await watch.close()


@pytest.mark.parametrize("transport", ["grpc", "sse", "grpc-web"])
async def test_streams_in_total_are_capped(capped_host: RunningHost, transport: str) -> None:
    watches = [
        await _watch(capped_host, transport, subject).open()
        for subject in ("alice", "bob", "carol", "dave")
    ]
    try:
        assert all(watch.refused is None for watch in watches)
        fifth = await _watch(capped_host, transport, "erin").open()
        watches.append(fifth)
        assert fifth.refused is not None
        assert fifth.refused[0] == "RESOURCE_EXHAUSTED"
        assert "too many open streams on this server (limit 4)" in fifth.refused[1]
    finally:
        for watch in watches:
            await watch.close()


async def test_anonymous_streams_are_capped_per_peer(capped_host: RunningHost) -> None:
    channel = capped_host.channel()
    health = health_pb2_grpc.HealthStub(channel)
    watches = []
    try:
        # One at a time: a call starts when it is made, so the order must be certain.
        for _ in range(2):
            watches.append(health.Watch(health_pb2.HealthCheckRequest()))
            first = await asyncio.wait_for(watches[-1].read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
        watches.append(health.Watch(health_pb2.HealthCheckRequest()))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(watches[2].read(), 10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for watch in watches:
            watch.cancel()


async def test_unary_calls_are_not_counted(capped_host: RunningHost) -> None:
    stub = orders_pb2_grpc.OrdersServiceStub(capped_host.channel(capped_host.token("admin")))
    await asyncio.gather(*(stub.CreateOrder(new_order("zoe")) for _ in range(10)))
    assert capped_host.host.streams.open == 0


@pytest.mark.parametrize("transport", ["grpc", "ndjson", "grpc-web"])
async def test_a_stream_opened_once_the_drain_started_is_refused(
    capped_host: RunningHost, transport: str
) -> None:
    open_ = await _watch(capped_host, transport, "alice").open()
    try:
        assert capped_host.host.streams.end_all() == 1  # what the host's stop path calls
        assert await open_.outcome() == ("UNAVAILABLE", "server shutting down")
        late = await _watch(capped_host, transport, "bob").open()
        try:
            assert late.refused is not None
            assert late.refused[:2] == ("UNAVAILABLE", "server shutting down")
            if transport == "ndjson":
                assert late.refused[2] == 503
        finally:
            await late.close()
    finally:
        await open_.close()


# --- the orders feed: filter before queueing, bounded queues --------------------------


def _change(customer: str) -> orders_pb2.WatchOrdersResponse:
    return orders_pb2.WatchOrdersResponse(
        change_type=orders_pb2.CHANGE_TYPE_CREATED,
        order=orders_pb2.Order(id=f"o-{customer}", customer_id=customer),
    )


async def test_a_change_is_queued_only_to_watchers_allowed_to_see_it() -> None:
    feed = ChangeFeed(backlog=4)
    async with feed.subscribe("alice") as alice, feed.subscribe("") as everyone:
        # Far more of bob's changes than alice's queue holds: none of them reach it, so
        # alice is neither slowed nor cut off by them.
        for _ in range(40):
            feed.publish(_change("bob"))
            assert await anext(everyone) == _change("bob")
        assert feed.queued == 40  # the all-customers watcher's copies only
        feed.publish(_change("alice"))
        assert feed.queued == 42
        assert await asyncio.wait_for(anext(alice), 1) == _change("alice")
        assert await anext(everyone) == _change("alice")
    assert feed.subscribers == 0
    feed.publish(_change("alice"))
    assert feed.queued == 42


async def test_a_watcher_too_slow_is_ended_not_buffered() -> None:
    feed = ChangeFeed(backlog=4)
    async with feed.subscribe("alice") as alice:
        for _ in range(10):
            feed.publish(_change("alice"))
        assert feed.subscribers == 0  # cut off at the first change it had no room for
        # Three of the four queued, then the end (one slot made room for the marker).
        for _ in range(3):
            assert await asyncio.wait_for(anext(alice), 1) == _change("alice")
        with pytest.raises(WatcherTooSlowError):
            await asyncio.wait_for(anext(alice), 1)


async def test_watchers_of_other_customers_see_nothing_of_each_other(
    capped_host: RunningHost,
) -> None:
    alice = await _watch(capped_host, "grpc", "alice").open()
    try:
        admin = orders_pb2_grpc.OrdersServiceStub(capped_host.channel(capped_host.token("admin")))
        for _ in range(5):
            await admin.CreateOrder(new_order("bob"))
        mine = await admin.CreateOrder(new_order("alice"))
        change = await asyncio.wait_for(alice._call.read(), 10)
        assert change.order.id == mine.id
    finally:
        await alice.close()


# --- shutdown: every stream ends in band with UNAVAILABLE -----------------------------


async def test_stop_ends_in_process_and_grpc_streams_with_unavailable(tmp_path: Path) -> None:
    async with running_host(plugins=["orders"], data_dir=tmp_path, grace_period=30) as host:
        admin = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token("admin")))
        await admin.CreateOrder(new_order("alice"))
        services = Services(
            host.host.router,
            "watcher",
            ["nexus.orders.v1.OrdersService"],
            permissions=["orders.read:all"],
        )
        inproc = services.client(orders_pb2_grpc.OrdersServiceStub)
        local = inproc.WatchOrders(orders_pb2.WatchOrdersRequest(include_existing=True))
        remote = admin.WatchOrders(orders_pb2.WatchOrdersRequest(include_existing=True))
        for call in (local, remote):
            assert (await asyncio.wait_for(call.read(), 10)).order.customer_id == "alice"
        health = health_pb2_grpc.HealthStub(host.channel()).Watch(health_pb2.HealthCheckRequest())
        assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        await asyncio.wait_for(host.host.stop(), 20)
        assert time.monotonic() - started < 15  # not the 30 s grace period
        # A health watcher is told NOT_SERVING before its stream ends.
        assert (await health.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as health_end:
            await asyncio.wait_for(health.read(), 5)
        assert health_end.value.code() == grpc.StatusCode.UNAVAILABLE
        for call in (local, remote):
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), 5)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ended.value.details() == "server shutting down"


async def test_sigterm_ends_every_transports_stream_in_band(
    tmp_path: Path, probe_stubs: Path
) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    grace = 30
    serve = await asyncio.to_thread(
        start_serve,
        tmp_path,
        probe_stubs,
        [REPO / "plugins", REPO / "tests" / "probe"],
        NEXUS_PLUGINS__DISABLED="inventory",
        NEXUS_SERVER__GRACE_PERIOD=str(grace),
    )
    watches: list[Watch] = []
    try:
        token = await asyncio.to_thread(serve.token)
        async with grpc.aio.insecure_channel(serve.address) as channel:
            auth = (("authorization", f"Bearer {token}"),)
            orders = orders_pb2_grpc.OrdersServiceStub(channel)
            await orders.CreateOrder(new_order("alice"), metadata=auth)
            for transport in TRANSPORTS:
                watch = Watch(transport, serve.address, f"http://{serve.http_address}", token)
                watches.append(await watch.open())
                assert watch.refused is None, (transport, watch.refused)
            probe = probe_pb2_grpc.ProbeServiceStub(channel)
            echo = probe.Echo()
            await echo.write(probe_pb2.EchoRequest(text="hi"))
            assert (await asyncio.wait_for(echo.read(), 10)).text == "hi"
            # A unary call in flight still finishes during the drain.
            slow = asyncio.ensure_future(probe.Sleep(probe_pb2.SleepRequest(millis=1500)))
            await asyncio.sleep(0.3)

            sent = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*(watch.outcome() for watch in watches))
            for transport, outcome in zip(TRANSPORTS, outcomes, strict=True):
                assert outcome == ("UNAVAILABLE", "server shutting down"), transport
            with pytest.raises(grpc.aio.AioRpcError) as echo_end:
                await asyncio.wait_for(echo.read(), 10)
            assert echo_end.value.code() == grpc.StatusCode.UNAVAILABLE
            ended = time.monotonic() - sent
            assert (await asyncio.wait_for(slow, 10)).slept_millis == 1500
        assert await asyncio.to_thread(serve.process.wait, 20) == 0
        exited = time.monotonic() - sent
        # The last line the host logs: everything before it has been read then.
        await asyncio.to_thread(serve.wait_for_log, lambda e: e["message"] == "nexus stopped", 5)
    finally:
        for watch in watches:
            await watch.close()
        serve.close()
    # Generous bounds for a slow machine; before, the streams held the drain for the
    # whole grace period and were then cut.
    assert ended < grace / 3, ended
    assert exited < grace / 2, exited
    for entry in serve.logs:
        assert entry.get("level") not in ("error", "critical"), entry
        assert "Traceback" not in json.dumps(entry), entry
    assert any("ended 6 open stream(s)" in e.get("message", "") for e in serve.logs), serve.logs


async def test_calls_cut_at_the_end_of_the_grace_period_get_a_proper_status(
    tmp_path: Path, probe_stubs: Path
) -> None:
    """A REST or gRPC-Web call still running when the drain runs out gets UNAVAILABLE in
    its own format, not uvicorn's 500 text/plain and a traceback."""
    from probe.v1 import probe_pb2

    serve = await asyncio.to_thread(
        start_serve,
        tmp_path,
        probe_stubs,
        [REPO / "tests" / "probe"],
        NEXUS_SERVER__GRACE_PERIOD="1",
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://{serve.http_address}", timeout=20) as http:
            path = "/probe.v1.ProbeService/Sleep"
            rest = asyncio.ensure_future(http.post(path, json={"millis": 15000}))
            web = asyncio.ensure_future(
                http.post(
                    path,
                    content=encode_frame(
                        0, probe_pb2.SleepRequest(millis=15000).SerializeToString()
                    ),
                    headers={"content-type": "application/grpc-web+proto"},
                )
            )
            await asyncio.sleep(0.5)  # both reach the handler
            serve.process.send_signal(signal.SIGTERM)
            rest_reply, web_reply = await asyncio.gather(rest, web)
        assert rest_reply.status_code == 503
        assert rest_reply.headers["content-type"] == "application/json"
        assert rest_reply.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
        assert rest_reply.json()["message"] == "server shutting down"
        frames = _complete_frames(web_reply.content)
        assert frames and frames[-1][0] & 0x80
        status = _trailers(frames[-1][1])
        assert status["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
        assert unquote(status["grpc-message"]) == "server shutting down"
        assert await asyncio.to_thread(serve.process.wait, 20) == 0
        await asyncio.to_thread(serve.wait_for_log, lambda e: e["message"] == "nexus stopped", 5)
    finally:
        serve.close()
    for entry in serve.logs:
        assert "Exception in ASGI application" not in entry.get("message", ""), entry
        assert "Traceback" not in json.dumps(entry), entry
