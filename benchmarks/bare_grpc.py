"""The orders plugin's servicer on a plain grpc.aio server: the gRPC baseline.

No nexus host around it: the generated ``add_OrdersServiceServicer_to_server`` registers
the very ``OrdersService`` class the plugin serves on ``grpc.aio.server()`` with no
options and no interceptors, and the servicer gets a :class:`PluginContext` whose
storage is the same kind of namespace nexus gives it (SQLite, ``plugins/business/orders``).
The difference to nexus gRPC is then the host's dispatcher and call pipeline.

    .venv/bin/python -m benchmarks.bare_grpc --port 50061 --data-dir /tmp/bare-orders
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import grpc
from nexus.orders.v1 import orders_pb2_grpc

from nexus_grpc import PluginContext
from nexus_grpc.storage import Storage
from plugins.orders.service import OrdersService

__all__ = ["main", "serve"]

NAMESPACE = "plugins/business/orders"


async def serve(address: str, data_dir: Path) -> None:
    """Serve OrdersService on ``address`` until SIGTERM or SIGINT; SQLite in ``data_dir``."""
    storage = await Storage.connect(f"sqlite+aiosqlite:///{data_dir / 'nexus.db'}")
    context = PluginContext(
        name="orders",
        category="business",
        config={},
        storage=storage.namespace(NAMESPACE),
        logger=logging.getLogger("nexus.plugins.orders"),
        data_dir=data_dir,
    )
    server = grpc.aio.server()
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(OrdersService(context), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(1)
        # Calls the client abandoned (h2load stops with calls in flight) may still be
        # finishing their database work: let them, before the storage goes away under them.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5)
        await storage.close()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(f"{args.host}:{args.port}", data_dir))


if __name__ == "__main__":
    main()
