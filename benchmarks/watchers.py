"""What open WatchOrders streams of other customers cost another user's CreateOrder.

Starts a host in process (orders plugin, SQLite in a temporary folder, stream caps
raised above the watcher count), opens ``--watchers`` gRPC watch streams, each of its
own customer with a grant of scope own (so each may only see its own orders), then
times ``--calls`` sequential CreateOrder calls of yet another customer, first with no
watcher and then with them all open. Every change used to be queued to every watcher
and filtered by each watcher's task afterwards; it is now queued only to watchers of
its customer (and to those allowed to see every customer).

    .venv/bin/python -m benchmarks.watchers
    .venv/bin/python -m benchmarks.watchers --watchers 2000 --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

import grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import LimitsConfig
from nexus_grpc.testing import RunningHost, running_host

_CHANNELS = 20  # HTTP/2 connections the watchers share


def _order(customer: str) -> orders_pb2.CreateOrderRequest:
    return orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(
            customer_id=customer,
            currency_code="EUR",
            items=[orders_pb2.LineItem(sku="SKU-1", quantity=1, unit_price_cents=100)],
        )
    )


async def _latencies(stub: orders_pb2_grpc.OrdersServiceStub, calls: int) -> list[float]:
    for _ in range(10):  # warm up
        await stub.CreateOrder(_order("buyer"))
    taken = []
    for _ in range(calls):
        started = time.perf_counter()
        await stub.CreateOrder(_order("buyer"))
        taken.append((time.perf_counter() - started) * 1000)
    return taken


async def _open_watchers(host: RunningHost, count: int) -> list[Any]:
    channels = [grpc.aio.insecure_channel(host.address) for _ in range(_CHANNELS)]
    calls = []
    for i in range(count):
        token = host.token(f"watcher-{i}", grants=("orders.read:own",))
        stub = orders_pb2_grpc.OrdersServiceStub(channels[i % _CHANNELS])
        calls.append(
            stub.WatchOrders(
                orders_pb2.WatchOrdersRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        )
    for _ in range(3000):  # until every stream reached its handler (60 s at most)
        if host.host.streams.open >= count:
            break
        await asyncio.sleep(0.02)
    if host.host.streams.open < count:
        ended = [call for call in calls if call.done()]
        why = {f"{(await call.code()).name}: {await call.details()}" for call in ended[:20]}
        raise RuntimeError(
            f"only {host.host.streams.open} of {count} watchers opened; {len(ended)} ended: {why}"
        )
    return [calls, channels]


def _summary(name: str, taken: list[float]) -> str:
    taken = sorted(taken)
    p95 = taken[int(len(taken) * 0.95) - 1]
    return (
        f"{name:<24} median {statistics.median(taken):7.2f} ms   p95 {p95:7.2f} ms   "
        f"mean {statistics.fmean(taken):7.2f} ms"
    )


async def main(watchers: int, calls: int) -> None:
    """Print CreateOrder latencies without and with ``watchers`` open watch streams."""
    with tempfile.TemporaryDirectory() as data_dir:
        limits = LimitsConfig(
            # The buyer's calls come faster than the default class allows.
            rate_classes={"default": {"rate": 1e6, "burst": 1e6}},
            max_streams=watchers + 10,
            max_streams_per_principal=0,
        )
        async with running_host(plugins=["orders"], data_dir=data_dir, limits=limits) as host:
            token = host.token("buyer", grants=("orders.create:own",))
            stub = orders_pb2_grpc.OrdersServiceStub(host.channel(token))
            alone = await _latencies(stub, calls)
            opened, channels = await _open_watchers(host, watchers)
            crowded = await _latencies(stub, calls)
            for call in opened:
                call.cancel()
            for channel in channels:
                await channel.close(None)
    print(_summary("no watcher", alone))
    print(_summary(f"{watchers} other watchers", crowded))
    print(f"slowdown (median): {statistics.median(crowded) / statistics.median(alone):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=100)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.watchers, arguments.calls))
