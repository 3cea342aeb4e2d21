"""The paths the gateway answers itself cannot be taken by a plugin's HTTP binding.

A plugin binding ``GET /{name}`` matches ``/healthz``, ``/readyz``, ``/metrics`` and
``/openapi.json``: the gateway answers those first, so an orchestrator's probe never
reaches a plugin. A binding on exactly one of those paths is a load error.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

from nexus_grpc.codegen import generate
from nexus_grpc.testing import running_host

HERE = Path(__file__).resolve().parent / "reserved"


def _compile() -> Path:
    out = Path(tempfile.mkdtemp(prefix="nexus-reserved-stubs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    generate(HERE / "proto", out)
    sys.path.insert(0, str(out))
    return out


_compile()


async def test_a_catch_all_route_does_not_shadow_the_reserved_paths(tmp_path: Path) -> None:
    async with (
        running_host(
            plugins=["catchall"],
            plugin_dirs=[HERE / "plugins"],
            data_dir=tmp_path,
            http=True,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        # The route is live: any other one-segment path reaches the plugin.
        other = await client.get("/hello")
        assert other.status_code == 200, other.text
        assert other.json() == {"name": "hello"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}
        alive = await client.get("/healthz")
        assert alive.json() == {"status": "alive"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        openapi = await client.get("/openapi.json")
        assert openapi.status_code == 200
        assert "/{name}" in openapi.json()["paths"]
        # Other methods on a reserved path reach no plugin route either.
        post = await client.post("/healthz", json={})
        assert post.status_code == 404
        assert post.json()["message"] == "no route for POST /healthz"


async def test_a_binding_on_a_reserved_path_fails_the_plugin_with_a_clear_error(
    tmp_path: Path,
) -> None:
    async with (
        running_host(
            plugins=["squatter", "catchall"],
            plugin_dirs=[HERE / "plugins"],
            data_dir=tmp_path,
            http=True,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        record = host.host.plugins.record("squatter")
        assert record is not None and record.state == "FAILED"
        assert "HTTP binding on a path the host answers itself" in record.error
        assert "/reservedtest.v1.SquatterService/Health: GET /healthz" in record.error
        # The other plugin serves; the probe is the host's.
        assert (await client.get("/healthz")).json() == {"status": "alive"}
        assert (await client.get("/hello")).json() == {"name": "hello"}
