"""The host in-process: dispatch, pipeline errors, health, admin, broken plugins."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from nexus_grpc.plugins.manager import StrictModeError
from nexus_grpc.testing import running_host

PROBE_DIR = Path(__file__).resolve().parent.parent / "probe"
REPO_PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

pytestmark = pytest.mark.usefixtures("probe_stubs")

# A valid servicer for the probe contract, for plugins written inside tests.
SERVICER = (
    "from probe.v1 import probe_pb2, probe_pb2_grpc\n"
    "class ProbeService(probe_pb2_grpc.ProbeServiceServicer):\n"
    "    async def Sleep(self, request, context):\n"
    "        return probe_pb2.SleepResponse()\n"
)


def write_plugin(root: Path, name: str, manifest: str, code: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(manifest)
    (folder / "__init__.py").write_text(code)
    return folder


def probe_copy(root: Path, name: str = "probe_plugin") -> None:
    shutil.copytree(PROBE_DIR / "probe_plugin", root / name)


async def test_probe_calls_pass_through_dispatcher_and_pipeline(tmp_path: Path) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    async with running_host(plugin_dirs=[PROBE_DIR], data_dir=tmp_path) as host:
        stub = probe_pb2_grpc.ProbeServiceStub(host.channel())
        call = stub.Sleep(probe_pb2.SleepRequest(millis=1), metadata=(("x-request-id", "req-123"),))
        assert (await call).slept_millis == 1
        # The request id trails failed calls only (the crash test below).
        assert "x-request-id" not in dict(await call.trailing_metadata())

        replies = [
            r.text async for r in stub.Echo(iter([probe_pb2.EchoRequest(text=t) for t in "abc"]))
        ]
        assert replies == ["a", "b", "c"]


async def test_unexpected_exception_is_internal_without_details_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    async with running_host(plugin_dirs=[PROBE_DIR], data_dir=tmp_path) as host:
        stub = probe_pb2_grpc.ProbeServiceStub(host.channel())
        with (
            caplog.at_level(logging.ERROR, logger="nexus.errors"),
            pytest.raises(grpc.aio.AioRpcError) as caught,
        ):
            await stub.Crash(
                probe_pb2.CrashRequest(secret="hunter2"), metadata=(("x-request-id", "r-9"),)
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request id r-9)"
    assert "hunter2" not in str(error.trailing_metadata())
    assert dict(error.trailing_metadata())["x-request-id"] == "r-9"
    logged = [r for r in caplog.records if r.name == "nexus.errors"]
    assert logged and logged[0].request_id == "r-9"  # type: ignore[attr-defined]
    assert "hunter2" in caplog.text  # the operator's log has the exception


async def test_method_in_contract_but_not_implemented_is_unimplemented(tmp_path: Path) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    async with running_host(plugin_dirs=[PROBE_DIR], data_dir=tmp_path) as host:
        stub = probe_pb2_grpc.ProbeServiceStub(host.channel())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Missing(probe_pb2.MissingRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "declared in the contract but plugin 'probe' does not implement it" in (
        caught.value.details() or ""
    )
    status = status_pb2.Status.FromString(
        dict(caught.value.trailing_metadata())["grpc-status-details-bin"]
    )
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "METHOD_NOT_IMPLEMENTED"


async def test_unknown_method_is_unimplemented(tmp_path: Path) -> None:
    async with running_host(plugin_dirs=[], data_dir=tmp_path) as host:
        call = host.channel().unary_unary("/nope.v1.Nope/Nothing")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_reports_overall_and_per_service(tmp_path: Path) -> None:
    async with running_host(plugin_dirs=[PROBE_DIR, "plugins"], data_dir=tmp_path) as host:
        health = health_pb2_grpc.HealthStub(host.channel())
        for service in ("", "probe.v1.ProbeService", "nexus.orders.v1.OrdersService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="unknown.v1.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(host.host.stop())
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


async def test_plugin_raising_at_import_does_not_take_the_host_down(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    probe_copy(plugins)
    write_plugin(
        plugins,
        "broken",
        'name = "broken"\nversion = "1"\ncategory = "business"\ndescription = "x"\n'
        'services = ["broken.v1.BrokenService"]\n',
        "x = 1\nraise ZeroDivisionError('boom at import')\n",
    )
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "data") as host:
        admin = admin_pb2_grpc.AdminServiceStub(host.channel(host.token()))
        listed = {
            p.name: p for p in (await admin.ListPlugins(admin_pb2.ListPluginsRequest())).plugins
        }
        assert listed["probe"].state == admin_pb2.PLUGIN_STATE_SERVING
        broken = listed["broken"]
        assert broken.state == admin_pb2.PLUGIN_STATE_FAILED
        assert "import failed: ZeroDivisionError: boom at import" in broken.error
        assert f"{plugins / 'broken' / '__init__.py'}:2" in broken.error
        assert [(s.name, s.serving) for s in broken.services] == [
            ("broken.v1.BrokenService", False)
        ]
        health = health_pb2_grpc.HealthStub(host.channel())
        reply = await health.Check(health_pb2.HealthCheckRequest(service="broken.v1.BrokenService"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_strict_mode_refuses_to_start_with_a_failed_plugin(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "broken", 'name = "broken"\n', "")
    with pytest.raises(StrictModeError, match="required field 'category' is missing"):
        async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d", strict=True):
            pass


@pytest.mark.parametrize(
    ("manifest_extra", "code", "expected"),
    [
        (
            'services = ["probe.v1.ProbeService", "probe.v1.OtherService"]',
            SERVICER + "from nexus_grpc import Plugin\nplugin = Plugin(services=[ProbeService])\n",
            "the manifest lists service probe.v1.OtherService but no servicer in Plugin.services implements it",
        ),
        (
            "services = []",
            SERVICER + "from nexus_grpc import Plugin\nplugin = Plugin(services=[ProbeService])\n",
            "serves probe.v1.ProbeService which the manifest does not list",
        ),
        (
            'services = ["probe.v1.ProbeService"]',
            SERVICER,
            "entry 'plugin' names nothing: define `plugin = Plugin(services=[...])`",
        ),
        (
            'services = ["probe.v1.ProbeService"]',
            "from probe.v1 import probe_pb2_grpc\nfrom nexus_grpc import Plugin\n"
            "class Sync(probe_pb2_grpc.ProbeServiceServicer):\n"
            "    def Sleep(self, request, context):\n        return None\n"
            "plugin = Plugin(services=[Sync])\n",
            "Sync.Sleep must be `async def`",
        ),
        (
            'services = ["probe.v1.ProbeService"]\nrequires = ["ghost"]',
            "",
            "requires plugin 'ghost', which was not found",
        ),
        (
            'services = ["probe.v1.ProbeService"]',
            SERVICER + "from nexus_grpc import Plugin\n"
            "async def start(ctx):\n    raise OSError('no disk')\n"
            "plugin = Plugin(services=[ProbeService], on_start=start)\n",
            "start failed: OSError: no disk",
        ),
    ],
    ids=[
        "service-not-implemented",
        "service-not-declared",
        "no-entry",
        "sync-method",
        "missing-requirement",
        "start-raises",
    ],
)
async def test_invalid_plugin_fails_with_a_precise_message(
    tmp_path: Path, manifest_extra: str, code: str, expected: str
) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "zz_bad",
        f'name = "zz_bad"\nversion = "1"\ncategory = "business"\ndescription = "x"\n{manifest_extra}\n',
        code,
    )
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d") as host:
        record = host.host.plugins.record("zz_bad")
        assert record is not None
        assert record.state == "FAILED"
        assert expected in record.error


async def test_two_plugins_cannot_serve_the_same_service(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    probe_copy(plugins)
    write_plugin(
        plugins,
        "zz_copy",
        'name = "zz_copy"\nversion = "1"\ncategory = "business"\ndescription = "x"\n'
        'services = ["probe.v1.ProbeService"]\n',
        SERVICER + "from nexus_grpc import Plugin\nplugin = Plugin(services=[ProbeService])\n",
    )
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d") as host:
        record = host.host.plugins.record("zz_copy")
        assert record is not None and record.state == "FAILED"
        assert "service probe.v1.ProbeService is served by plugin 'probe' already" in record.error


async def test_a_failed_requirement_fails_its_dependents(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "base",
        'name = "base"\nversion = "1"\ncategory = "business"\ndescription = "x"\n',
        "raise ImportError('nope')\n",
    )
    write_plugin(
        plugins,
        "child",
        'name = "child"\nversion = "1"\ncategory = "business"\ndescription = "x"\nrequires = ["base"]\n',
        "from nexus_grpc import Plugin\nplugin = Plugin()\n",
    )
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d") as host:
        child = host.host.plugins.record("child")
        assert child is not None and child.state == "FAILED"
        assert "requires plugin 'base', which is failed" in child.error


async def test_start_and_stop_hooks_receive_the_context(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "hooks",
        'name = "hooks"\nversion = "1"\ncategory = "analytics"\ndescription = "x"\n',
        "from nexus_grpc import Plugin\nseen = []\n"
        "async def start(ctx):\n    seen.append(('start', ctx.name, ctx.category, dict(ctx.config)))\n"
        "def stop(ctx):\n    seen.append(('stop', ctx.name))\n"
        "plugin = Plugin(on_start=start, on_stop=stop)\n",
    )
    async with running_host(
        plugin_dirs=[plugins], data_dir=tmp_path / "d", plugin_config={"hooks": {"level": 3}}
    ):
        import sys

        seen = sys.modules["nexus_plugins.hooks"].seen
        assert seen == [("start", "hooks", "analytics", {"level": 3})]
    assert seen[-1] == ("stop", "hooks")


async def test_admin_get_plugin_and_not_found(tmp_path: Path) -> None:
    async with running_host(plugin_dirs=["plugins"], data_dir=tmp_path) as host:
        admin = admin_pb2_grpc.AdminServiceStub(host.channel(host.token()))
        orders = await admin.GetPlugin(admin_pb2.GetPluginRequest(name="orders"))
        assert orders.category == admin_pb2.CATEGORY_BUSINESS
        assert orders.version == "1.0.0"
        assert [(s.name, s.serving) for s in orders.services] == [
            ("nexus.orders.v1.OrdersService", True)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.GetPlugin(admin_pb2.GetPluginRequest(name="ghost"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "plugin 'ghost' not found"


async def test_bundled_plugins_serve_once_when_also_in_the_plugin_folder(tmp_path: Path) -> None:
    async with running_host(plugin_dirs=[REPO_PLUGINS], bundled=["*"], data_dir=tmp_path) as host:
        records = {r.name: r for r in host.host.plugins.records()}
        assert sorted(records) == ["auth", "inventory", "orders"]
        assert {r.state for r in records.values()} == {"SERVING"}, [
            r.error for r in records.values()
        ]
        health = health_pb2_grpc.HealthStub(host.channel())
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="nexus.orders.v1.OrdersService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_bundled_plugins_serve_without_a_plugin_folder(tmp_path: Path) -> None:
    async with running_host(plugin_dirs=[], bundled=["orders"], data_dir=tmp_path) as host:
        records = host.host.plugins.records()
        assert [(r.name, r.state) for r in records] == [("orders", "SERVING")]
        assert records[0].source.startswith("bundled plugin orders")
