"""Hot swap under the conditions that go wrong: callers that leave, failures after the
import, files that change or cannot be hashed, slow event handlers, dependents, a
watcher facing broken edits, and slow drains."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path

import grpc
import pytest
from nexus.admin.v1 import admin_pb2
from swap.v1 import swap_pb2

from nexus_grpc.config import HotSwapConfig
from nexus_grpc.plugins.fingerprint import UnhashableFileError, code_hash
from tests.hotswap.helpers import SwapHost, swap_host
from tests.hotswap.plugin_source import write_plugin

pytestmark = pytest.mark.asyncio

STOP = """

def stop(ctx: PluginContext) -> None:
    with open({marker!r}, "a") as out:
        out.write(VERSION + "\\n")


plugin = Plugin(services=[SwapService], on_start=start, health=healthy, on_stop=stop)
"""

SLOW_LISTENER = """

class Listener:
    def __init__(self, ctx: PluginContext) -> None:
        self._seen = ctx.config.get("seen")

    @subscribe(OrderCreated)
    async def on_order(self, event: OrderCreated, delivery: Any) -> None:
        self._seen.append(("start", VERSION))
        await asyncio.sleep({seconds})
        self._seen.append(("end", VERSION))


def stop(ctx: PluginContext) -> None:
    ctx.config["seen"].append(("stop", VERSION))


plugin = Plugin(services=[SwapService], subscribers=[Listener], on_start=start,
                health=healthy, on_stop=stop)
"""


def write_with_stop(root: Path, version: str, marker: Path, start: str = "pass") -> Path:
    """A swapper version whose stop hook appends its version to ``marker``."""
    folder = write_plugin(root, version, start=start)
    init = folder / "__init__.py"
    init.write_text(init.read_text() + STOP.format(marker=str(marker)))
    return folder


def write_slow_listener(root: Path, version: str, seconds: float = 1.0) -> None:
    """A swapper version whose event handler takes ``seconds``."""
    folder = write_plugin(root, version, consumes=True)
    init = folder / "__init__.py"
    init.write_text(init.read_text() + SLOW_LISTENER.format(seconds=seconds))


def stopped(marker: Path) -> list[str]:
    """The versions whose stop hook ran, in order."""
    return marker.read_text().split() if marker.exists() else []


async def reload(host: SwapHost, deadline: float = 20) -> admin_pb2.PluginChange:
    request = admin_pb2.ReloadPluginRequest(name="swapper")
    return await host.admin.ReloadPlugin(request, timeout=deadline)


async def audit_records(host: SwapHost, action: str) -> list[admin_pb2.AuditRecord]:
    page = await host.admin.ListAuditRecords(
        admin_pb2.ListAuditRecordsRequest(action=action), timeout=5
    )
    return list(page.records)


async def until(check: object, seconds: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` is true."""
    assert callable(check)
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {seconds}s")


async def test_a_failed_start_puts_the_serving_modules_back(tmp_path: Path) -> None:
    settings = HotSwapConfig(enabled=True, drain_timeout=1.0, start_timeout=0.5)
    async with swap_host(tmp_path, hot_swap=settings) as host:
        write_plugin(host.plugins, "2", start="raise RuntimeError('nope')")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reload(host)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "nope" in (refused.value.details() or "")
        assert await host.version() == "1"
        # The old generation's lazy imports get its own modules, not the failed ones.
        assert importlib.import_module("nexus_plugins.swapper").VERSION == "1"


async def test_files_changed_by_the_start_hook_roll_the_reload_back(tmp_path: Path) -> None:
    marker = tmp_path / "stopped.txt"
    async with swap_host(tmp_path) as host:
        folder = host.plugins / "swapper"
        start = f"import pathlib\npathlib.Path({str(folder / 'written.txt')!r}).write_text('x')"
        write_with_stop(host.plugins, "2", marker, start=start)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reload(host)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "changed while it was being loaded" in (refused.value.details() or "")
        assert await host.version() == "1"
        assert sys.modules["nexus_plugins.swapper"].VERSION == "1"
        assert stopped(marker) == ["2"]  # the new version was started, so it is stopped


async def test_a_cancelled_reload_completes_retires_the_old_version_and_is_audited(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stopped.txt"
    settings = HotSwapConfig(enabled=True, drain_timeout=5.0, start_timeout=1.0)
    (tmp_path / "plugins").mkdir()
    write_with_stop(tmp_path / "plugins", "1", marker)
    async with swap_host(tmp_path, hot_swap=settings, write=False) as host:
        slow = asyncio.ensure_future(
            host.swap.Hello(swap_pb2.HelloRequest(name="slow", millis=1500), timeout=10)
        )
        await asyncio.sleep(0.2)
        write_with_stop(host.plugins, "2", marker)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await reload(host, deadline=0.8)  # the drain outlasts the caller
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await host.version() == "2"
        assert (await slow).version == "1"
        await until(lambda: stopped(marker) == ["1"])
        records = []
        for _ in range(40):
            records = await audit_records(host, "plugins.reload")
            if records:
                break
            await asyncio.sleep(0.05)
        assert [r.outcome for r in records] == [admin_pb2.OUTCOME_SUCCEEDED]
        assert "generation 2" in records[0].reason


async def test_a_file_vanishing_mid_swap_is_a_refusal_with_rollback_and_audit(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stopped.txt"
    async with swap_host(tmp_path) as host:
        dangling = host.plugins / "swapper" / "dangling"
        start = f"import os\nos.symlink('/nonexistent-target', {str(dangling)!r})"
        write_with_stop(host.plugins, "2", marker, start=start)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await reload(host)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "symbolic link" in (failed.value.details() or "")
        assert await host.version() == "1"
        assert sys.modules["nexus_plugins.swapper"].VERSION == "1"
        assert stopped(marker) == ["2"]
        records = await audit_records(host, "plugins.reload")
        assert [r.outcome for r in records] == [admin_pb2.OUTCOME_FAILED]


async def test_the_old_versions_event_handler_ends_before_its_stop_hook(tmp_path: Path) -> None:
    from nexus.orders.v1 import events_pb2

    from nexus_grpc.events import seal

    seen: list[tuple[str, str]] = []
    (tmp_path / "plugins").mkdir()
    write_slow_listener(tmp_path / "plugins", "1")
    async with swap_host(tmp_path, write=False, plugin_config={"swapper": {"seen": seen}}) as host:
        await host.running.host.bus.publish(seal(events_pb2.OrderCreated(), source="t"))
        await until(lambda: ("start", "1") in seen)
        write_slow_listener(host.plugins, "2")
        await reload(host)
        await until(lambda: ("stop", "1") in seen)
        assert seen.index(("end", "1")) < seen.index(("stop", "1")), seen


async def test_an_event_handler_past_the_drain_timeout_is_cut_before_the_stop_hook(
    tmp_path: Path,
) -> None:
    from nexus.orders.v1 import events_pb2

    from nexus_grpc.events import seal

    seen: list[tuple[str, str]] = []
    settings = HotSwapConfig(enabled=True, drain_timeout=0.3, start_timeout=1.0)
    (tmp_path / "plugins").mkdir()
    write_slow_listener(tmp_path / "plugins", "1", seconds=30)
    async with swap_host(
        tmp_path, write=False, hot_swap=settings, plugin_config={"swapper": {"seen": seen}}
    ) as host:
        await host.running.host.bus.publish(seal(events_pb2.OrderCreated(), source="t"))
        await until(lambda: ("start", "1") in seen)
        write_slow_listener(host.plugins, "2", seconds=0)
        change = await reload(host)
        assert change.calls_cut == 1
        assert ("stop", "1") in seen and ("end", "1") not in seen
        assert await host.version() == "2"
        # The cut delivery failed, so the bus hands the event to the new version.
        await until(lambda: ("end", "2") in seen, 10)


async def test_a_reload_dropping_a_service_a_dependent_requires_is_refused(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "1", name="needy", serves=False, requires=("swap.v1.SwapService",))
    async with swap_host(tmp_path) as host:
        assert (await host.plugin("needy")).state == admin_pb2.PLUGIN_STATE_SERVING
        write_plugin(host.plugins, "2", serves=False)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reload(host)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert "'needy'" in details and "swap.v1.SwapService" in details
        assert await host.version() == "1"
        assert (await host.plugin("needy")).state == admin_pb2.PLUGIN_STATE_SERVING


async def test_a_hanging_health_check_is_bounded_by_start_timeout(tmp_path: Path) -> None:
    settings = HotSwapConfig(enabled=True, drain_timeout=1.0, start_timeout=0.5)
    async with swap_host(tmp_path, hot_swap=settings) as host:
        write_plugin(host.plugins, "2", health="return asyncio.Event().wait()")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reload(host, deadline=4)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "start_timeout" in (refused.value.details() or "")
        assert await host.version() == "1"


async def test_a_slow_drain_holds_up_no_other_swap(tmp_path: Path) -> None:
    settings = HotSwapConfig(enabled=True, drain_timeout=10.0, start_timeout=1.0)
    async with swap_host(tmp_path, hot_swap=settings) as host:
        slow = asyncio.ensure_future(
            host.swap.Hello(swap_pb2.HelloRequest(name="slow", millis=2500), timeout=10)
        )
        await asyncio.sleep(0.2)
        write_plugin(host.plugins, "2")
        first = asyncio.ensure_future(reload(host))  # drains the slow call of version 1
        for _ in range(40):
            if await host.version() == "2":
                break
            await asyncio.sleep(0.05)
        write_plugin(host.plugins, "3")
        second = await reload(host)
        assert second.plugins == ["swapper"] and not first.done()
        assert await host.version() == "3"
        assert (await slow).version == "1"
        assert (await first).calls_cut == 0


async def test_the_watcher_logs_broken_edits_and_keeps_watching(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = HotSwapConfig(enabled=True, watch=True, watch_debounce=0.05, start_timeout=1.0)
    async with swap_host(tmp_path, hot_swap=settings) as host:
        await asyncio.sleep(0.3)
        folder = host.plugins / "swapper"
        with caplog.at_level(logging.INFO, logger="nexus.plugins"):
            (folder / "manifest.toml").write_text('name = "swapper"\nversion = \n')
            await until(
                lambda: any(
                    "manifest is broken" in r.getMessage() and str(folder) in r.getMessage()
                    for r in caplog.records
                )
            )
            dangling = folder / "dangling"
            start = f"import os\nos.symlink('/nonexistent-target', {str(dangling)!r})"
            write_plugin(host.plugins, "2", start=start)
            await until(lambda: any("symbolic link" in r.getMessage() for r in caplog.records), 10)
        dangling.unlink(missing_ok=True)
        write_plugin(host.plugins, "3")
        seen = ""
        for _ in range(200):
            seen = await host.version()
            if seen == "3":
                break
            await asyncio.sleep(0.05)
        assert seen == "3"
        watching = host.running.host._watching
        assert watching is not None and not watching.done()


async def test_the_code_hash_refuses_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, "1")
    code_hash(folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "extra.py").write_text("VALUE = 1\n")
    os.symlink(outside, folder / "linked")
    with pytest.raises(UnhashableFileError, match="symbolic link"):
        code_hash(folder)
    (folder / "linked").unlink()
    (folder / "compiled.pyc").write_bytes(b"\x00" * 16)
    with pytest.raises(UnhashableFileError, match="bytecode outside __pycache__"):
        code_hash(folder)


async def test_stopping_the_host_mid_swap_waits_for_the_swap_then_stops_all(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stopped.txt"
    began = tmp_path / "began.txt"
    settings = HotSwapConfig(enabled=True, watch=True, watch_debounce=0.05, start_timeout=1.0)
    (tmp_path / "plugins").mkdir()
    write_with_stop(tmp_path / "plugins", "1", marker)
    async with swap_host(tmp_path, hot_swap=settings, write=False) as host:
        await asyncio.sleep(0.3)
        start = f"import pathlib\npathlib.Path({str(began)!r}).touch()\nawait asyncio.sleep(1.0)"
        write_with_stop(host.plugins, "2", marker, start=start)
        await until(began.exists, 10)
        # Leaving the block stops the host while the watcher's swap is in its start hook.
    assert stopped(marker) == ["1", "2"]
