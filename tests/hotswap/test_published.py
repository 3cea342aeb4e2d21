"""In-process clients of a published service follow the swaps of the plugin serving it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from nexus.admin.v1 import admin_pb2
from swap.v1 import swap_pb2, swap_pb2_grpc

from tests.hotswap.helpers import swap_host
from tests.hotswap.plugin_source import write_plugin

pytestmark = pytest.mark.asyncio


async def test_a_client_made_before_a_reload_reaches_the_new_version(tmp_path: Path) -> None:
    harness: dict[str, Any] = {}
    write_plugin(
        tmp_path / "plugins",
        "1",
        name="caller",
        serves=False,
        requires=("swap.v1.SwapService",),
        start='ctx.config["harness"]["services"] = ctx.services',
    )
    async with swap_host(tmp_path, plugin_config={"caller": {"harness": harness}}) as host:
        client = harness["services"].client(swap_pb2_grpc.SwapServiceStub)
        request = swap_pb2.HelloRequest(name="inproc")
        assert (await client.Hello(request)).version == "1"
        write_plugin(host.plugins, "2")
        await host.admin.ReloadPlugin(admin_pb2.ReloadPluginRequest(name="swapper"))
        assert (await client.Hello(request)).version == "2"
        # Unloading the service it requires cascades to the caller, never leaves it dangling.
        change = await host.admin.UnloadPlugin(
            admin_pb2.UnloadPluginRequest(name="swapper", cascade=True)
        )
        assert list(change.plugins) == ["caller", "swapper"]
        # In process, a required service that went away is UNAVAILABLE (retryable).
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await client.Hello(request)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
