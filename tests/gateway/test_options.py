"""Gateway options: strict query parameters, JSON output shape, default timeout, status table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from nexus_grpc.config import HttpConfig
from nexus_grpc.gateway.status import http_status
from nexus_grpc.testing import running_host
from tests.gateway.conftest import GATEWAY_TESTS


@pytest.fixture
async def configured(
    request: pytest.FixtureRequest, tmp_path: Path, transcode_stubs: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_host(
            plugin_dirs=[GATEWAY_TESTS / "plugins"], data_dir=tmp_path, http=request.param
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        yield client


@pytest.mark.parametrize("configured", [HttpConfig(strict_query=True)], indirect=True)
async def test_strict_mode_rejects_unknown_and_bound_parameters(
    configured: httpx.AsyncClient,
) -> None:
    unknown = await configured.get("/v1/echo/x", params={"bogus": "1"})
    assert unknown.status_code == 400
    assert "unknown query parameter" in unknown.text
    bound = await configured.get("/v1/echo/x", params={"id": "y"})
    assert bound.status_code == 400
    assert "bound by the path or the body" in bound.text
    fine = await configured.get("/v1/echo/x", params={"small": "1"})
    assert fine.json() == {"id": "x", "small": 1}


@pytest.mark.parametrize(
    "configured", [HttpConfig(emit_defaults=True, proto_names=True)], indirect=True
)
async def test_emit_defaults_and_proto_names(configured: httpx.AsyncClient) -> None:
    body = (await configured.get("/v1/items", params={"count": 1})).json()
    assert body == [{"number": 0}]
    echo = (await configured.get("/v1/echo/x")).json()
    assert echo["id"] == "x"
    assert echo["big"] == "0"
    assert echo["tags"] == []
    inspect = (await configured.post("/v1/inspect", json={})).json()
    assert inspect["time_remaining"] == -1


@pytest.mark.parametrize("configured", [HttpConfig(default_timeout=0.2)], indirect=True)
async def test_default_timeout_applies_without_grpc_timeout(configured: httpx.AsyncClient) -> None:
    inspect = (await configured.post("/v1/inspect", json={})).json()
    assert 0 < inspect["timeRemaining"] <= 0.2
    slow = await configured.get("/v1/count/100", params={"pauseMillis": 50})
    assert slow.json()[-1]["error"]["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_status_table_is_the_canonical_mapping() -> None:
    expected = {
        "OK": 200,
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "UNAUTHENTICATED": 401,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
    }
    assert {code.name: http_status(code) for code in grpc.StatusCode} == expected
