"""Writes versions of the ``swapper`` test plugin into a plugin folder.

Each version is real code on disk, as an operator's edit would be: its answers name
the version, and the start hook, health check and module body can be made to fail.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

MANIFEST = """\
name = "{name}"
version = "{version}"
category = "business"
description = "Hot swap test plugin."
services = [{services}]
requires = [{requires}]
consumes = [{consumes}]
"""

CODE = '''\
"""The swapper test plugin, version {version}."""

import asyncio
import threading
from typing import Any

from nexus_grpc import Plugin, PluginContext
from nexus_grpc.events import subscribe
from swap.v1 import swap_pb2, swap_pb2_grpc

VERSION = "{version}"
{module_extra}


class SwapService(swap_pb2_grpc.SwapServiceServicer):
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    async def Hello(self, request: Any, context: Any) -> Any:
        if request.millis:
            await asyncio.sleep(request.millis / 1000)
        return swap_pb2.HelloReply(message=f"hello {{request.name}}", version=VERSION)

    async def Count(self, request: Any, context: Any) -> Any:
        for value in range(1, request.n + 1):
            if request.pause_millis:
                await asyncio.sleep(request.pause_millis / 1000)
            yield swap_pb2.CountReply(value=value, version=VERSION)


class Listener:
    def __init__(self, ctx: PluginContext) -> None:
        self._seen = ctx.config.get("seen")

    {subscriber}


async def start(ctx: PluginContext) -> None:
{start}


def healthy(ctx: PluginContext) -> bool:
{health}


plugin = Plugin(
    services=[{servicers}],
    subscribers=[{subscribers}],
    on_start=start,
    health=healthy,
)
'''

SUBSCRIBER = """\
@subscribe(OrderCreated)
    async def on_order(self, event: OrderCreated, delivery: Any) -> None:
        if self._seen is not None:
            self._seen.append((delivery.envelope.id, VERSION))"""


def write_plugin(
    root: Path,
    version: str,
    *,
    name: str = "swapper",
    start: str = "pass",
    health: str = "return True",
    module_extra: str = "",
    serves: bool = True,
    requires: tuple[str, ...] = (),
    consumes: bool = False,
) -> Path:
    """Write version ``version`` of a test plugin into ``root/<name>``; the folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    extra = module_extra
    if consumes:
        extra += "\nfrom nexus.orders.v1.events_pb2 import OrderCreated\n"
    (folder / "manifest.toml").write_text(
        MANIFEST.format(
            name=name,
            version=version,
            services='"swap.v1.SwapService"' if serves else "",
            requires=", ".join(f'"{r}"' for r in requires),
            consumes='"nexus.orders.v1.OrderCreated"' if consumes else "",
        )
    )
    (folder / "__init__.py").write_text(
        CODE.format(
            version=version,
            module_extra=extra,
            start=textwrap.indent(start, "    "),
            health=textwrap.indent(health, "    "),
            servicers="SwapService" if serves else "",
            subscribers="Listener" if consumes else "",
            subscriber=SUBSCRIBER if consumes else "pass",
        )
    )
    return folder
