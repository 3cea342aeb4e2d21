"""A host with hot swap on, serving the swapper test plugin from a folder the test owns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from swap.v1 import swap_pb2, swap_pb2_grpc

from nexus_grpc.config import HotSwapConfig
from nexus_grpc.testing import RunningHost, running_host
from tests.hotswap.plugin_source import write_plugin


@dataclass
class SwapHost:
    """The running host, its plugin folder, an admin client and a swap client."""

    running: RunningHost
    plugins: Path
    admin: admin_pb2_grpc.AdminServiceStub
    swap: swap_pb2_grpc.SwapServiceStub

    async def version(self) -> str:
        """The version answering Hello now."""
        reply = await self.swap.Hello(swap_pb2.HelloRequest(name="v"), timeout=5)
        return str(reply.version)

    async def plugin(self, name: str = "swapper") -> admin_pb2.Plugin:
        """The admin view of plugin ``name``."""
        return await self.admin.GetPlugin(admin_pb2.GetPluginRequest(name=name), timeout=5)


@asynccontextmanager
async def swap_host(
    tmp_path: Path,
    *,
    hot_swap: HotSwapConfig | None = None,
    write: bool = True,
    **options: Any,
) -> AsyncIterator[SwapHost]:
    """A host serving version "1" of the swapper plugin (unless ``write`` is False),
    hot swap on with short timeouts unless ``hot_swap`` says otherwise."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    if write:
        write_plugin(plugins, "1")
    settings = hot_swap or HotSwapConfig(enabled=True, drain_timeout=2.0, start_timeout=2.0)
    async with running_host(
        plugin_dirs=[plugins], data_dir=tmp_path / "data", hot_swap=settings, **options
    ) as running:
        token = running.token("operator")
        admin = admin_pb2_grpc.AdminServiceStub(running.channel(token))
        swap = swap_pb2_grpc.SwapServiceStub(running.channel())
        yield SwapHost(running, plugins, admin, swap)
