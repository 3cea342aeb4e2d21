"""Loading, unloading and reloading a plugin in a running host, over the admin API."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from swap.v1 import swap_pb2

from nexus_grpc.config import HotSwapConfig
from nexus_grpc.plugins.fingerprint import code_hash
from tests.hotswap.helpers import SwapHost, swap_host
from tests.hotswap.plugin_source import write_plugin

pytestmark = pytest.mark.asyncio


async def _reload(
    host: SwapHost, name: str = "swapper", **fields: object
) -> admin_pb2.PluginChange:
    request = admin_pb2.ReloadPluginRequest(name=name, **fields)  # type: ignore[arg-type]
    return await host.admin.ReloadPlugin(request, timeout=20)


async def test_calls_in_flight_finish_on_the_old_code_and_new_calls_get_the_new(
    tmp_path: Path,
) -> None:
    async with swap_host(tmp_path) as host:
        before = await host.plugin()
        assert before.generation == 1 and before.code_hash.startswith("sha256:")
        slow = asyncio.ensure_future(
            host.swap.Hello(swap_pb2.HelloRequest(name="slow", millis=600), timeout=10)
        )
        stream = host.swap.Count(swap_pb2.CountRequest(n=5, pause_millis=100), timeout=10)
        await asyncio.sleep(0.2)  # both calls are running on version 1
        write_plugin(host.plugins, "2")
        change = await _reload(host)
        assert await host.version() == "2"
        assert (await slow).version == "1"
        assert [reply.version async for reply in stream] == ["1"] * 5
        assert change.plugins == ["swapper"] and change.calls_cut == 0
        assert change.plugin.generation == 2 and change.plugin.version == "2"
        assert change.plugin.code_hash != before.code_hash
        assert change.plugin.contract_hash == before.contract_hash  # same .proto
        assert not change.methods_added and not change.methods_removed


async def test_unload_drains_then_cuts_unavailable_and_the_plugin_disappears(
    tmp_path: Path,
) -> None:
    async with swap_host(tmp_path, http=True) as host:
        url = host.running.http_url
        async with httpx.AsyncClient(base_url=url) as web:
            assert (await web.get("/v1/swap/hello/web")).json()["version"] == "1"
            stuck = asyncio.ensure_future(
                host.swap.Hello(swap_pb2.HelloRequest(name="stuck", millis=5000), timeout=10)
            )
            health = health_pb2_grpc.HealthStub(host.running.channel())
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service="swap.v1.SwapService"), timeout=10
            )
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(0.2)
            change = await host.admin.UnloadPlugin(
                admin_pb2.UnloadPluginRequest(name="swapper", drain_timeout_millis=300), timeout=10
            )
            assert change.calls_cut == 1
            assert change.services_removed == ["swap.v1.SwapService"]
            assert "GET /v1/swap/hello/{name}" in change.http_routes_removed
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await stuck
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "unloaded or replaced" in (cut.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await host.version()
            assert gone.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert (await web.get("/v1/swap/hello/web")).status_code == 404
            assert "/v1/swap/hello/{name}" not in (await web.get("/openapi.json")).json()["paths"]
            gone_status = await watch.read()
            assert gone_status.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            watch.cancel()
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await health.Check(health_pb2.HealthCheckRequest(service="swap.v1.SwapService"))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert (await host.plugin()).state == admin_pb2.PLUGIN_STATE_STOPPED

            loaded = await host.admin.LoadPlugin(
                admin_pb2.LoadPluginRequest(name="swapper"), timeout=10
            )
            assert loaded.methods_added == [
                "/swap.v1.SwapService/Count",
                "/swap.v1.SwapService/Hello",
            ]
            assert loaded.plugin.generation == 2
            assert (await web.get("/v1/swap/hello/web")).json()["version"] == "1"
            assert "/v1/swap/hello/{name}" in (await web.get("/openapi.json")).json()["paths"]
            check = await health.Check(health_pb2.HealthCheckRequest(service="swap.v1.SwapService"))
            assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_new_plugin_folder_loads_and_reflection_lists_it(tmp_path: Path) -> None:
    async with swap_host(tmp_path, write=False) as host:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="swapper"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        write_plugin(host.plugins, "fresh")
        await host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="swapper"), timeout=10)
        assert await host.version() == "fresh"
        grpcurl = _grpcurl()
        listed = await asyncio.create_subprocess_exec(
            grpcurl, "-plaintext", host.running.address, "list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(listed.communicate(), 20)
        assert listed.returncode == 0, err.decode()
        assert "swap.v1.SwapService" in out.decode().split()


def _grpcurl() -> str:
    import shutil
    import sys

    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert found is not None, "grpcurl is installed with the dev dependencies"
    return found


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ({"module_extra": "raise ImportError('no such dependency')"}, "import failed"),
        ({"start": "raise RuntimeError('cannot open the ledger')"}, "cannot open the ledger"),
        ({"health": "return False"}, "health not SERVING within"),
    ],
    ids=["import", "start-hook", "health"],
)
async def test_a_failed_upgrade_leaves_the_old_version_serving(
    tmp_path: Path, broken: dict[str, str], cause: str
) -> None:
    settings = HotSwapConfig(enabled=True, drain_timeout=1.0, start_timeout=0.5)
    async with swap_host(tmp_path, hot_swap=settings) as host:
        before = await host.plugin()
        write_plugin(host.plugins, "2", **broken)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _reload(host)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert cause in (refused.value.details() or "")
        assert await host.version() == "1"
        after = await host.plugin()
        assert after.generation == before.generation and after.code_hash == before.code_hash
        assert after.state == admin_pb2.PLUGIN_STATE_SERVING and cause in after.swap_error
        write_plugin(host.plugins, "3")  # fixed: the next reload goes through
        assert (await _reload(host)).plugin.generation == 2
        assert await host.version() == "3"


async def test_dependencies_refuse_or_cascade(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "1", name="needy", serves=False, requires=("swapper",))
    async with swap_host(tmp_path) as host:
        assert (await host.plugin("needy")).state == admin_pb2.PLUGIN_STATE_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await host.admin.UnloadPlugin(admin_pb2.UnloadPluginRequest(name="swapper"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "required by 'needy'" in (refused.value.details() or "")
        change = await host.admin.UnloadPlugin(
            admin_pb2.UnloadPluginRequest(name="swapper", cascade=True)
        )
        assert list(change.plugins) == ["needy", "swapper"]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="needy"))
        assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "requires plugin 'swapper'" in (missing.value.details() or "")
        await host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="swapper"))
        await host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="needy"))
        assert (await host.plugin("needy")).state == admin_pb2.PLUGIN_STATE_SERVING


async def test_reload_over_rest(tmp_path: Path) -> None:
    async with swap_host(tmp_path, http=True) as host:
        write_plugin(host.plugins, "2")
        headers = {"authorization": f"Bearer {host.running.token('operator')}"}
        async with httpx.AsyncClient(base_url=host.running.http_url, headers=headers) as web:
            response = await web.post("/v1/admin/plugins/swapper:reload", json={}, timeout=20)
            assert response.status_code == 200, response.text
            assert response.json()["plugin"]["generation"] == "2"
            anonymous = await web.post(
                "/v1/admin/plugins/swapper:reload", json={}, headers={"authorization": ""}
            )
            assert anonymous.status_code == 401
        assert await host.version() == "2"


async def test_loading_code_needs_its_own_permission_and_is_audited(tmp_path: Path) -> None:
    async with swap_host(tmp_path) as host:
        reader = host.running.token("reader", grants=("admin.read:all", "plugins.unload:all"))
        limited = admin_pb2_grpc.AdminServiceStub(host.running.channel(reader))
        write_plugin(host.plugins, "2")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await limited.ReloadPlugin(admin_pb2.ReloadPluginRequest(name="swapper"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as denied_load:
            await limited.LoadPlugin(admin_pb2.LoadPluginRequest(name="swapper"))
        assert denied_load.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await host.version() == "1"
        change = await _reload(host)
        records = await host.admin.ListAuditRecords(
            admin_pb2.ListAuditRecordsRequest(action="plugins.reload")
        )
        (record,) = records.records
        assert record.actor == "operator" and record.target == "swapper"
        assert record.outcome == admin_pb2.OUTCOME_SUCCEEDED
        assert change.plugin.code_hash.removeprefix("sha256:") in record.reason


async def test_the_hash_allow_list_and_the_expected_hash_refuse_other_code(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    first = code_hash(write_plugin(tmp_path / "v1", "1"))
    settings = HotSwapConfig(enabled=True, allowed_hashes=(f"sha256:{first}",))
    async with swap_host(tmp_path, hot_swap=settings) as host:
        folder = write_plugin(plugins, "2")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _reload(host)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "allowed_hashes" in (refused.value.details() or "")
        write_plugin(plugins, "1")  # back to the allowed code
        assert code_hash(folder) == first
        wrong = hashlib.sha256(b"other").hexdigest()
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await _reload(host, expected_code_hash=wrong)
        assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not the expected" in (mismatch.value.details() or "")
        change = await _reload(host, expected_code_hash=f"sha256:{first}")
        assert change.plugin.code_hash == f"sha256:{first}"


async def test_hot_swap_switched_off_refuses_every_change(tmp_path: Path) -> None:
    async with swap_host(tmp_path, hot_swap=HotSwapConfig()) as host:
        for call in (
            host.admin.ReloadPlugin(admin_pb2.ReloadPluginRequest(name="swapper")),
            host.admin.UnloadPlugin(admin_pb2.UnloadPluginRequest(name="swapper")),
            host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="swapper")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "hot swap is off" in (refused.value.details() or "")
        assert await host.version() == "1"


async def test_a_plugin_name_is_never_a_path(tmp_path: Path) -> None:
    async with swap_host(tmp_path) as host:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await host.admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="../../tmp/evil"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_leftover_threads_of_the_old_version_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leaky = (
        "stop = threading.Event()\n"
        "threading.Thread(target=lambda: stop.wait(5), name='poller', daemon=True).start()\n"
        "TASKS.append(asyncio.get_running_loop().create_task(tick(), name='ticker'))"
    )
    ticking = "TASKS = []\n\nasync def tick() -> None:\n    await asyncio.sleep(3)\n"
    async with swap_host(tmp_path) as host:
        write_plugin(host.plugins, "2", start=leaky, module_extra=ticking)
        await _reload(host)
        write_plugin(host.plugins, "3")
        with caplog.at_level(logging.WARNING, logger="nexus.plugins"):
            await _reload(host)
        warnings = [r.getMessage() for r in caplog.records if " left " in r.getMessage()]
        assert len(warnings) == 2 and all("generation 2" in w for w in warnings)
        assert "task 'ticker' running tick" in warnings[0]
        assert "thread 'poller'" in warnings[1]
