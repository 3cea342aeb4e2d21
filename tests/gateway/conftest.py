"""A host with the gateway's test plugin and the bundled plugins, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from nexus_grpc.testing import RunningHost, running_host

GATEWAY_TESTS = Path(__file__).resolve().parent
REPO = GATEWAY_TESTS.parents[1]


@pytest.fixture
async def gateway_host(tmp_path: Path, transcode_stubs: Path) -> AsyncIterator[RunningHost]:
    """A running host with HTTP on, serving the transcode test plugin and orders."""
    async with running_host(
        plugins=["transcode", "orders", "auth"],
        plugin_dirs=[GATEWAY_TESTS / "plugins", REPO / "plugins"],
        data_dir=tmp_path,
        http=True,
    ) as host:
        yield host


@pytest.fixture
async def http(gateway_host: RunningHost) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway."""
    headers = {"authorization": f"Bearer {gateway_host.token()}"}
    async with httpx.AsyncClient(
        base_url=gateway_host.http_url, timeout=10, headers=headers
    ) as client:
        yield client
