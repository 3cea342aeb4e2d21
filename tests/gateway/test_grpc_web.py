"""gRPC-Web on the HTTP port: binary and text modes, unary and server streaming, CORS."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from transcode.v1 import transcode_pb2 as pb

from nexus_grpc.config import HttpConfig
from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from nexus_grpc.testing import running_host
from tests.gateway.conftest import GATEWAY_TESTS


def trailers(payload: bytes) -> dict[str, str]:
    lines = payload.decode().split("\r\n")
    return {k: v for k, _, v in (line.partition(":") for line in lines if line)}


async def call(
    http: httpx.AsyncClient, path: str, message: bytes, *, text: bool = False
) -> tuple[list[bytes], dict[str, str]]:
    body = encode_frame(0, message)
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    response = await http.post(
        path,
        content=base64.b64encode(body) if text else body,
        headers={"content-type": content_type, "x-grpc-web": "1"},
    )
    assert response.status_code == 200
    raw = response.content
    if text:
        assert response.headers["content-type"] == "application/grpc-web-text+proto"
        raw = decode_text(raw)
    frames = decode_frames(raw)
    messages = [payload for flag, payload in frames if flag == 0]
    trailer = [payload for flag, payload in frames if flag == 0x80]
    assert len(trailer) == 1 and frames[-1][0] == 0x80
    return messages, trailers(trailer[0])


def decode_text(raw: bytes) -> bytes:
    # Each frame is base64-encoded on its own, so padding may appear mid-body; base64
    # works in 4-character groups, and decoding group by group handles that.
    return b"".join(base64.b64decode(raw[i : i + 4]) for i in range(0, len(raw), 4))


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
async def test_unary_call(http: httpx.AsyncClient, text: bool) -> None:
    messages, status = await call(
        http,
        "/transcode.v1.TranscodeService/Echo",
        pb.EchoRequest(id="web", big=5).SerializeToString(),
        text=text,
    )
    assert status["grpc-status"] == "0"
    assert [pb.EchoRequest.FromString(m) for m in messages] == [pb.EchoRequest(id="web", big=5)]


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
async def test_server_streaming_call(http: httpx.AsyncClient, text: bool) -> None:
    messages, status = await call(
        http,
        "/transcode.v1.TranscodeService/Count",
        pb.CountRequest(n=3).SerializeToString(),
        text=text,
    )
    assert status["grpc-status"] == "0"
    assert [pb.CountResponse.FromString(m).value for m in messages] == [1, 2, 3]


async def test_errors_are_in_the_trailer_frame(http: httpx.AsyncClient) -> None:
    messages, status = await call(
        http,
        "/transcode.v1.TranscodeService/Inspect",
        pb.InspectRequest(fail_code=5, fail_message="no such thing: 100%").SerializeToString(),
    )
    assert messages == []
    assert status["grpc-status"] == "5"
    assert unquote(status["grpc-message"]) == "no such thing: 100%"
    assert "grpc-status-details-bin" in status
    assert status["x-trailer"] == "done"


async def test_stream_error_after_messages(http: httpx.AsyncClient) -> None:
    messages, status = await call(
        http,
        "/transcode.v1.TranscodeService/Count",
        pb.CountRequest(n=5, fail_after=2).SerializeToString(),
    )
    assert len(messages) == 2
    assert status["grpc-status"] == "11"


async def test_metadata_and_transport(http: httpx.AsyncClient) -> None:
    body = encode_frame(0, pb.InspectRequest().SerializeToString())
    response = await http.post(
        "/transcode.v1.TranscodeService/Inspect",
        content=body,
        headers={
            "content-type": "application/grpc-web+proto",
            "tenant": "acme",
        },
    )
    assert response.headers["x-initial"] == "yes"
    frames = decode_frames(response.content)
    reply = pb.InspectResponse.FromString(frames[0][1])
    assert reply.transport == "grpc-web"
    assert reply.metadata["tenant"] == "acme"


async def test_unknown_method_and_malformed_body(http: httpx.AsyncClient) -> None:
    _, status = await call(http, "/nope.v1.Nope/Nothing", b"")
    assert status["grpc-status"] == "12"
    response = await http.post(
        "/transcode.v1.TranscodeService/Echo",
        content=b"\x00\x00\x00\x00\x09abc",
        headers={"content-type": "application/grpc-web+proto"},
    )
    frames = decode_frames(response.content)
    assert trailers(frames[-1][1])["grpc-status"] == "3"


@pytest.fixture
async def cors_client(tmp_path: Path, transcode_stubs: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_host(
            plugin_dirs=[GATEWAY_TESTS / "plugins"],
            data_dir=tmp_path,
            http=HttpConfig(cors_origins=("https://app.example",)),
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        yield client


async def test_cors_allows_configured_origins_only(cors_client: httpx.AsyncClient) -> None:
    preflight = await cors_client.options(
        "/transcode.v1.TranscodeService/Echo",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-grpc-web, x-evil",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-headers"] == "content-type, x-grpc-web"
    actual = await cors_client.post(
        "/transcode.v1.TranscodeService/Echo",
        content=encode_frame(0, b""),
        headers={"content-type": "application/grpc-web+proto", "origin": "https://app.example"},
    )
    assert actual.headers["access-control-allow-origin"] == "https://app.example"
    assert "grpc-status" in actual.headers["access-control-expose-headers"]
    other = await cors_client.get("/v1/echo/x", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
