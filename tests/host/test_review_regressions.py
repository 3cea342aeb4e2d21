"""Regression tests for defects found in review of the host."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc
from probe.v1 import probe_pb2, probe_pb2_grpc

from nexus_grpc.plugins.manager import StrictModeError
from nexus_grpc.testing import running_host
from tests.host.test_host import PROBE_DIR, SERVICER, probe_copy, write_plugin


async def test_a_duplicate_plugin_failing_leaves_the_serving_plugin_healthy(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    probe_copy(plugins)
    write_plugin(
        plugins,
        "zz_copy",
        'name = "zz_copy"\nversion = "1"\ncategory = "business"\ndescription = "x"\nservices = ["probe.v1.ProbeService"]\n',
        SERVICER + "from nexus_grpc import Plugin\nplugin = Plugin(services=[ProbeService])\n",
    )
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d") as host:
        health = health_pb2_grpc.HealthStub(host.channel())
        reply = await health.Check(health_pb2.HealthCheckRequest(service="probe.v1.ProbeService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listed = await health.List(health_pb2.HealthListRequest())
        assert (
            listed.statuses["probe.v1.ProbeService"].status
            == health_pb2.HealthCheckResponse.SERVING
        )


async def test_many_violations_still_reach_the_client_as_invalid_argument(tmp_path: Path) -> None:
    async with running_host(plugins=["orders"], data_dir=tmp_path) as host:
        stub = orders_pb2_grpc.OrdersServiceStub(host.channel(host.token()))
        items = [orders_pb2.LineItem(sku="", quantity=0, unit_price_cents=-1) for _ in range(100)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateOrder(
                orders_pb2.CreateOrderRequest(
                    order=orders_pb2.Order(customer_id="c", currency_code="EUR", items=items)
                )
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").endswith("; and 297 more")


async def test_a_failed_strict_start_releases_ports_and_stops_started_plugins(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "aa_good",
        'name = "aa_good"\nversion = "1"\ncategory = "business"\ndescription = "x"\n',
        "from nexus_grpc import Plugin\nevents = []\n"
        "def start(ctx):\n    events.append('start')\n"
        "def stop(ctx):\n    events.append('stop')\n"
        "plugin = Plugin(on_start=start, on_stop=stop)\n",
    )
    write_plugin(plugins, "zz_bad", 'name = "zz_bad"\n', "")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    from nexus_grpc.config import Config, HttpConfig, PluginsConfig, ServerConfig
    from nexus_grpc.host import Host

    config = Config(
        data_dir=str(tmp_path / "d"),
        server=ServerConfig(grpc_address=f"127.0.0.1:{port}"),
        http=HttpConfig(address="127.0.0.1:0"),
        plugins=PluginsConfig(dirs=(str(plugins),), entry_points=False, strict=True),
    )
    host = Host(config)
    with pytest.raises(StrictModeError):
        await host.start()
    assert sys.modules["nexus_plugins.aa_good"].events == ["start", "stop"]
    await host.stop()  # after a failed start: nothing left to stop, and no error
    assert sys.modules["nexus_plugins.aa_good"].events == ["start", "stop"]
    again = socket.socket()
    again.bind(("127.0.0.1", port))  # released: binding succeeds
    again.close()


async def test_folders_with_the_same_name_in_two_plugin_dirs_stay_apart(tmp_path: Path) -> None:
    for index, name in enumerate(("alpha", "beta")):
        folder = write_plugin(
            tmp_path / f"dir{index}",
            "common",
            f'name = "{name}"\nversion = "1"\ncategory = "business"\ndescription = "x"\n',
            "from nexus_grpc import Plugin\nfrom .helper import WHO\nplugin = Plugin()\n",
        )
        (folder / "helper.py").write_text(f"WHO = {name!r}\n")
    async with running_host(
        plugin_dirs=[tmp_path / "dir0", tmp_path / "dir1"], data_dir=tmp_path / "d"
    ) as host:
        assert {r.name: r.state for r in host.host.plugins.records()} == {
            "alpha": "SERVING",
            "beta": "SERVING",
        }
        assert sys.modules["nexus_plugins.alpha"].WHO == "alpha"
        assert sys.modules["nexus_plugins.beta"].WHO == "beta"


async def test_a_timeout_error_raised_by_a_hook_is_not_reported_as_the_hook_timeout(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "slowdb",
        'name = "slowdb"\nversion = "1"\ncategory = "business"\ndescription = "x"\n',
        "from nexus_grpc import Plugin\n"
        "async def start(ctx):\n    raise TimeoutError('database connect timed out after 2s')\n"
        "plugin = Plugin(on_start=start)\n",
    )
    async with running_host(plugin_dirs=[plugins], data_dir=tmp_path / "d") as host:
        record = host.host.plugins.record("slowdb")
        assert record is not None
        assert "start failed: TimeoutError: database connect timed out after 2s" in record.error


async def test_a_cancelled_client_stream_is_not_handled_as_complete(tmp_path: Path) -> None:
    plugin_module_name = "nexus_plugins.probe"
    async with running_host(plugin_dirs=[PROBE_DIR], data_dir=tmp_path) as host:
        completed = sys.modules[plugin_module_name].COMPLETED_STREAMS
        completed.clear()
        stub = probe_pb2_grpc.ProbeServiceStub(host.channel())
        whole = await stub.Collect(
            iter([probe_pb2.EchoRequest(text="a"), probe_pb2.EchoRequest(text="b")])
        )
        assert whole.count == 2
        assert completed == [2]

        async def cancelled_stream(wait: float) -> None:
            async def slow_requests():  # type: ignore[no-untyped-def]
                yield probe_pb2.EchoRequest(text="a")
                await asyncio.sleep(10)

            call = stub.Collect(slow_requests())
            await asyncio.sleep(wait)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

        # grpc.aio hears of a cancel and of the stream's end apart; the race is rare, so
        # many cancels, at staggered moments, in batches under the per-caller stream limit.
        for _ in range(10):
            await asyncio.gather(*(cancelled_stream(0.02 + i * 0.003) for i in range(8)))
        await asyncio.sleep(0.2)
        assert completed == [2]


async def test_stop_with_zero_grace_does_not_wait_for_open_http_streams(tmp_path: Path) -> None:
    import httpx

    async with (
        running_host(plugins=["orders"], data_dir=tmp_path, http=True) as host,
        httpx.AsyncClient(
            base_url=host.http_url, headers={"authorization": f"Bearer {host.token()}"}
        ) as client,
    ):
        created = await client.post(
            "/v1/orders",
            json={
                "customerId": "c",
                "currencyCode": "EUR",
                "items": [{"sku": "PEN-7", "quantity": 1}],
            },
        )
        assert created.status_code == 200
        # The response starts with its first message: include_existing sends one at once.
        stream = client.stream(
            "GET",
            "/v1/orders:watch?includeExisting=true",
            headers={"accept": "application/x-ndjson"},
        )
        response = await stream.__aenter__()
        assert response.status_code == 200
        await asyncio.wait_for(host.host.stop(grace=0), 5)
        await stream.__aexit__(None, None, None)
