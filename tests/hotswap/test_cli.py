"""``nexus plugins load|unload|reload`` against a running host, as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.swap import SWAP_STUBS
from tests.hotswap.helpers import swap_host
from tests.hotswap.plugin_source import write_plugin

pytestmark = pytest.mark.asyncio

NEXUS = str(Path(sys.executable).parent / "nexus")


async def _nexus(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        NEXUS,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SWAP_STUBS)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_reload_unload_and_load_print_what_changed(tmp_path: Path) -> None:
    async with swap_host(tmp_path, http=True) as host:
        remote = ("--address", host.running.address, "--token", host.running.token("operator"))
        write_plugin(host.plugins, "2")
        code, out, err = await _nexus("plugins", "reload", "swapper", *remote)
        assert code == 0, err
        assert out.startswith("reloaded swapper 2: generation 2, code sha256:")
        assert "no service, method or route added or removed" in out
        assert await host.version() == "2"

        code, out, err = await _nexus(
            "plugins", "unload", "swapper", "--drain-timeout", "0.5", *remote
        )
        assert code == 0, err
        assert "unloaded swapper" in out
        assert "  - service swap.v1.SwapService" in out
        assert "  - method  /swap.v1.SwapService/Hello" in out
        assert "  - route   GET /v1/swap/hello/{name}" in out

        code, out, err = await _nexus("plugins", "load", str(host.plugins / "swapper"), *remote)
        assert code == 0, err
        assert "loaded swapper 2: generation 3" in out
        assert "  + route   GET /v1/swap/count" in out

        code, out, err = await _nexus("plugins", *remote)
        assert code == 0, err
        (row,) = [line for line in out.splitlines() if line.startswith("swapper")]
        assert "SERVING" in row and " 3 " in row and "sha256:" in row

        write_plugin(host.plugins, "3", start="raise RuntimeError('disk full')")
        code, out, err = await _nexus("plugins", "reload", "swapper", *remote)
        assert code == 1
        assert "FAILED_PRECONDITION" in err and "disk full" in err
        assert await host.version() == "2"
