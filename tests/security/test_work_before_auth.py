"""No work before authentication, and undecodable requests are statuses like any other.

A request body is read and decoded only once the caller is authenticated and within
its rate limit, on every transport: REST and gRPC-Web bodies are left unread when the
call is refused (the server answers while the client is still sending), and native
gRPC bytes are parsed by the pipeline, not by grpcio. Bytes that are not the method's
message get INVALID_ARGUMENT with a plain message — counted, access-logged, rate
limited, and without a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from nexus_grpc.config import LimitsConfig
from nexus_grpc.gateway.grpcweb import encode_frame
from nexus_grpc.testing import RunningHost, running_host

REPO = Path(__file__).resolve().parents[2]
GATEWAY_PLUGINS = REPO / "tests" / "gateway" / "plugins"

GET_ORDER = "/nexus.orders.v1.OrdersService/GetOrder"
CREATE_ORDER = "/nexus.orders.v1.OrdersService/CreateOrder"
SUM = "/transcode.v1.TranscodeService/Sum"
#: Field 1, length-delimited, with a length running past the end: never a valid message.
BAD_BYTES = b"\x0a\xff\xff\x01abc"
#: Declared body size: under the 4 MiB body limit, far over loopback socket buffers'
#: first fill, so a server that reads bodies before checking would wait for the rest.
DECLARED = 3_500_000
#: What the client actually sends of it before waiting for the answer.
SENT = 64 * 1024
ANSWER_WITHIN = 10.0


def _limits(burst: float) -> LimitsConfig:
    """Every class with ``burst`` tokens and (practically) no refill."""
    bucket = {"rate": 0.001, "burst": burst}
    return LimitsConfig(rate_classes={"default": bucket, "login": bucket})


@pytest.fixture
async def orders_host(tmp_path: Path, transcode_stubs: Path) -> AsyncIterator[RunningHost]:
    """Orders (methods needing a token), the public transcode service, HTTP on, access log."""
    async with running_host(
        plugins=["orders", "auth", "transcode"],
        plugin_dirs=[REPO / "plugins", GATEWAY_PLUGINS],
        data_dir=tmp_path,
        http=True,
        limits=_limits(5),
        access_log=True,
    ) as host:
        yield host


async def _partial_post(
    host: RunningHost, path: str, content_type: str, authorization: str | None
) -> bytes:
    """POST declaring a large body, send only its start, and return what the server says.

    The answer must come while most of the body is still unsent: the server decided
    without reading it. A server that reads first never answers (the client waits for
    it), and the call times out.
    """
    address = host.host.http_address
    hostname, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(hostname, int(port))
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {DECLARED}\r\n"
        )
        if authorization is not None:
            head += f"authorization: {authorization}\r\n"
        writer.write(head.encode() + b"\r\n" + b"0" * SENT)
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)
        if content_type.startswith("application/grpc-web"):
            # The status is in the trailer frame of the body.
            while b"grpc-status:" not in response or not response.split(b"grpc-status:")[1].count(
                b"\r\n"
            ):
                chunk = await asyncio.wait_for(reader.read(4096), ANSWER_WITHIN)
                if not chunk:
                    break
                response += chunk
        return response
    finally:
        writer.close()


def _grpc_web_status(response: bytes) -> str:
    return response.split(b"grpc-status:", 1)[1].split(b"\r\n", 1)[0].decode()


async def test_rest_refuses_unauthenticated_body_without_reading_it(
    orders_host: RunningHost,
) -> None:
    response = await _partial_post(orders_host, "/v1/orders", "application/json", None)
    assert response.startswith(b"HTTP/1.1 401"), response[:200]


async def test_grpc_web_refuses_unauthenticated_body_without_reading_it(
    orders_host: RunningHost,
) -> None:
    response = await _partial_post(orders_host, CREATE_ORDER, "application/grpc-web+proto", None)
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert _grpc_web_status(response) == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


@pytest.mark.parametrize("transport", ["rest", "grpc-web"])
async def test_rate_limited_caller_body_is_not_read(tmp_path: Path, transport: str) -> None:
    async with running_host(
        plugins=["orders", "auth"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        http=True,
        limits=_limits(1),
    ) as host:
        bearer = f"Bearer {host.token()}"
        async with httpx.AsyncClient(base_url=host.http_url, timeout=10) as http:
            # The caller's one token goes on an ordinary call.
            first = await http.get("/v1/orders/missing", headers={"authorization": bearer})
            assert first.status_code == 404
        if transport == "rest":
            response = await _partial_post(host, "/v1/orders", "application/json", bearer)
            assert response.startswith(b"HTTP/1.1 429"), response[:200]
        else:
            response = await _partial_post(host, CREATE_ORDER, "application/grpc-web+proto", bearer)
            assert _grpc_web_status(response) == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])


async def test_grpc_web_undecodable_message_is_invalid_argument(
    orders_host: RunningHost,
) -> None:
    async with httpx.AsyncClient(base_url=orders_host.http_url, timeout=10) as http:
        response = await http.post(
            GET_ORDER,
            content=encode_frame(0, BAD_BYTES),
            headers={
                "content-type": "application/grpc-web+proto",
                "authorization": f"Bearer {orders_host.token()}",
            },
        )
    assert b"grpc-status:3\r\n" in response.content
    assert b"request is not a valid nexus.orders.v1.GetOrderRequest message" in response.content


def _raw_unary(
    host: RunningHost, path: str, token: str | None = None
) -> grpc.aio.UnaryUnaryMultiCallable:  # type: ignore[type-arg]
    # No serializers: the bytes go on the wire as they are.
    return host.channel(token).unary_unary(path)


async def test_undecodable_grpc_message_is_invalid_argument_counted_logged_without_traceback(
    orders_host: RunningHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    call = _raw_unary(orders_host, GET_ORDER, orders_host.token())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(BAD_BYTES)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        caught.value.details() == "request is not a valid nexus.orders.v1.GetOrderRequest message"
    )

    # The status goes out when the call is aborted; the access line is written as the
    # handler unwinds, a moment later (under load, after the client has the status).
    for _ in range(1000):  # up to 10 s
        access = [r for r in caplog.records if r.name == "nexus.access"]
        if access:
            break
        await asyncio.sleep(0.01)
    assert [(getattr(r, "method", ""), getattr(r, "code", "")) for r in access] == [
        (GET_ORDER, "InvalidArgument")
    ]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in caplog.records)

    async with httpx.AsyncClient(base_url=orders_host.http_url, timeout=10) as http:
        exposition = (await http.get("/metrics")).text
    counted = [
        line
        for line in exposition.splitlines()
        if line.startswith("grpc_server_handled_total{")
        and 'grpc_method="GetOrder"' in line
        and 'grpc_code="InvalidArgument"' in line
        and 'transport="grpc"' in line
    ]
    assert len(counted) == 1 and counted[0].endswith(" 1.0"), counted


async def test_undecodable_grpc_messages_are_rate_limited(orders_host: RunningHost) -> None:
    call = _raw_unary(orders_host, GET_ORDER, orders_host.token())
    codes = []
    for _ in range(10):  # burst 5
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(BAD_BYTES)
        codes.append(caught.value.code())
    assert codes[:5] == [grpc.StatusCode.INVALID_ARGUMENT] * 5
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]


async def test_undecodable_grpc_message_without_token_is_unauthenticated(
    orders_host: RunningHost,
) -> None:
    # Authentication comes before decoding: an anonymous caller learns nothing about
    # the request type and costs no parsing.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _raw_unary(orders_host, GET_ORDER)(BAD_BYTES)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_client_stream_with_one_undecodable_message(
    orders_host: RunningHost, caplog: pytest.LogCaptureFixture
) -> None:
    from transcode.v1 import transcode_pb2 as pb

    good = pb.SumRequest(value=2).SerializeToString()

    async def requests() -> AsyncIterator[bytes]:
        yield good
        yield BAD_BYTES
        yield good

    call = orders_host.channel().stream_unary(SUM)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(requests())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request is not a valid transcode.v1.SumRequest message"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    # The same stream without the bad message goes through the same path.
    reply = await orders_host.channel().stream_unary(
        SUM, response_deserializer=pb.SumResponse.FromString
    )(iter([good, good]))
    assert (reply.total, reply.count) == (4, 2)
