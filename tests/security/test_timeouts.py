"""Grpc-Timeout of zero is a deadline already passed, and gRPC-Web has REST's default.

A zero timeout (``0S``, ``0m``, ``0u``, ``0n``) once removed the deadline on REST and
gRPC-Web; grpc core reads it as expired and answers DEADLINE_EXCEEDED without calling
the handler. gRPC-Web once ignored ``http.default_timeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from transcode.v1 import transcode_pb2 as pb

from nexus_grpc.config import HttpConfig
from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from nexus_grpc.testing import RunningHost, running_host
from tests.gateway.conftest import GATEWAY_TESTS
from tests.security.h2client import RawH2, grpc_frame

INSPECT = "/transcode.v1.TranscodeService/Inspect"
ZEROS = ["0S", "0m", "0u", "0n", "00000000H"]
DEFAULT_TIMEOUT = 30.0


@pytest.fixture
async def host(tmp_path: Path, transcode_stubs: Path) -> AsyncIterator[RunningHost]:
    async with running_host(
        plugins=["transcode"],
        plugin_dirs=[GATEWAY_TESTS / "plugins"],
        data_dir=tmp_path,
        http=HttpConfig(default_timeout=DEFAULT_TIMEOUT),
    ) as running:
        yield running


@pytest.fixture
async def http(host: RunningHost) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {host.token()}"}
    async with httpx.AsyncClient(base_url=host.http_url, timeout=10, headers=headers) as client:
        yield client


async def grpc_web_inspect(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[pb.InspectResponse | None, dict[str, str]]:
    response = await http.post(
        INSPECT,
        content=encode_frame(0, pb.InspectRequest().SerializeToString()),
        headers={"content-type": "application/grpc-web+proto", **headers},
    )
    assert response.status_code == 200
    frames = decode_frames(response.content)
    messages = [payload for flag, payload in frames if flag == 0]
    lines = frames[-1][1].decode().split("\r\n")
    trailers = {k: v for k, _, v in (line.partition(":") for line in lines if line)}
    reply = pb.InspectResponse.FromString(messages[0]) if messages else None
    return reply, trailers


@pytest.mark.parametrize("zero", ZEROS)
async def test_zero_grpc_timeout_is_expired_on_rest(http: httpx.AsyncClient, zero: str) -> None:
    response = await http.post("/v1/inspect", json={}, headers={"grpc-timeout": zero})
    assert response.status_code == 504, response.text
    assert response.json()["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


@pytest.mark.parametrize("zero", ZEROS)
async def test_zero_grpc_timeout_is_expired_on_grpc_web(http: httpx.AsyncClient, zero: str) -> None:
    reply, trailers = await grpc_web_inspect(http, {"grpc-timeout": zero})
    assert reply is None
    assert trailers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])


@pytest.mark.parametrize("zero", ZEROS)
async def test_zero_grpc_timeout_is_expired_on_native_grpc(host: RunningHost, zero: str) -> None:
    # The reference behaviour the gateway matches: grpc core, driven by a raw client
    # because grpcio's own client refuses to send an expired call.
    client = await RawH2.connect(host.address)
    try:
        stream = await client.open_call(
            INSPECT,
            body=grpc_frame(pb.InspectRequest().SerializeToString()),
            end=True,
            grpc_timeout=zero,
            metadata=(("authorization", f"Bearer {host.token()}"),),
        )
        assert await client.wait(lambda: client.stream_ended(stream), 10)
        assert client.streams[stream].grpc_status == "4"
    finally:
        await client.close()


async def test_small_grpc_timeout_still_runs_the_call(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/inspect", json={}, headers={"grpc-timeout": "20S"})
    assert response.status_code == 200, response.text
    assert 0 < response.json()["timeRemaining"] <= 20


async def test_grpc_web_applies_http_default_timeout(http: httpx.AsyncClient) -> None:
    reply, trailers = await grpc_web_inspect(http, {})
    assert trailers["grpc-status"] == "0"
    assert reply is not None
    assert 0 < reply.time_remaining <= DEFAULT_TIMEOUT


async def test_rest_applies_http_default_timeout(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/inspect", json={})
    assert response.status_code == 200, response.text
    assert 0 < response.json()["timeRemaining"] <= DEFAULT_TIMEOUT
