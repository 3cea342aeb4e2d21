"""Development mode: an edited plugin is reloaded; a broken edit leaves the previous
version serving and the log says why."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from nexus_grpc.config import HotSwapConfig
from tests.hotswap.helpers import SwapHost, swap_host
from tests.hotswap.plugin_source import write_plugin

pytestmark = pytest.mark.asyncio


async def _until_version(host: SwapHost, version: str) -> str:
    seen = ""
    for _ in range(200):  # 10 s at most
        seen = await host.version()
        if seen == version:
            break
        await asyncio.sleep(0.05)
    return seen


async def test_an_edit_is_reloaded_and_a_broken_one_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = HotSwapConfig(enabled=True, watch=True, watch_debounce=0.05, start_timeout=1.0)
    async with swap_host(tmp_path, hot_swap=settings) as host:
        await asyncio.sleep(0.3)  # the watcher is in place
        write_plugin(host.plugins, "2")
        assert await _until_version(host, "2") == "2"
        with caplog.at_level(logging.ERROR, logger="nexus.plugins"):
            write_plugin(host.plugins, "3", module_extra="def broken(:")
            for _ in range(200):
                if any(r.getMessage().startswith("--reload") for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
        (error,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--reload")]
        assert "previous version serves on" in error and "SyntaxError" in error
        assert await host.version() == "2"
        write_plugin(host.plugins, "4")
        assert await _until_version(host, "4") == "4"
