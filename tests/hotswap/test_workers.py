"""Hot swap with `nexus serve --workers 2`: a swap asked of one worker applies to both.

Every call goes on a connection of its own, which the kernel hands to either worker;
the plugin's answers name the worker's pid, so the test knows both were asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from swap.v1 import swap_pb2, swap_pb2_grpc

from tests.fixtures.redis import RedisServer
from tests.fixtures.swap import SWAP_STUBS
from tests.hotswap.plugin_source import write_plugin
from tests.supervisor.conftest import Workers, start_workers, workers_config

pytestmark = pytest.mark.e2e

#: Connections opened after each swap (each lands on a worker the kernel picks).
CONNECTIONS = 40
#: The plugin's answers name the worker that gave them.
PID_VERSION = 'import os\nVERSION = f"{VERSION}@{os.getpid()}"'


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("swap-workers-plugins")
    write_plugin(folder, "1", module_extra=PID_VERSION)
    return folder


@pytest.fixture(scope="module")
def host(
    redis_server: RedisServer, plugins: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    tmp_path = tmp_path_factory.mktemp("swap-workers")
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/12"
    config = workers_config(
        tmp_path / "nexus.toml",
        redis_url,
        """
[plugins.hot_swap]
enabled = true
drain_timeout = 5.0
start_timeout = 2.0
""",
    )
    running = start_workers(
        tmp_path, config, probe_stubs=SWAP_STUBS, NEXUS_PLUGINS__DIRS=str(plugins)
    )
    try:
        yield running
    finally:
        running.close()


def _answers(address: str) -> list[str]:
    """The version@pid answering Hello on each of CONNECTIONS new connections
    ("UNIMPLEMENTED" where the plugin is not served)."""
    seen = []
    for _ in range(CONNECTIONS):
        # A channel of its own, not sharing a connection with the others.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=options) as channel:
            stub = swap_pb2_grpc.SwapServiceStub(channel)
            try:
                reply = stub.Hello(swap_pb2.HelloRequest(name="w"), timeout=10)
            except grpc.RpcError as error:
                seen.append(error.code().name)
            else:
                seen.append(reply.version)
    return seen


def _admin(host: Workers) -> tuple[grpc.Channel, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(host.address)
    return channel, admin_pb2_grpc.AdminServiceStub(channel)


def test_a_reload_asked_of_one_worker_serves_on_every_worker(host: Workers, plugins: Path) -> None:
    before = _answers(host.address)
    assert {answer.split("@")[0] for answer in before} == {"1"}
    assert len({answer.split("@")[1] for answer in before}) == 2, before  # both asked
    auth = (("authorization", f"Bearer {host.token()}"),)

    write_plugin(plugins, "2", module_extra=PID_VERSION)
    channel, admin = _admin(host)
    with channel:
        change = admin.ReloadPlugin(
            admin_pb2.ReloadPluginRequest(name="swapper"), metadata=auth, timeout=60
        )
    assert change.plugin.version == "2"
    after = _answers(host.address)
    assert {answer.split("@")[0] for answer in after} == {"2"}, after
    assert len({answer.split("@")[1] for answer in after}) == 2, after


def test_unload_and_load_apply_to_every_worker(host: Workers, plugins: Path) -> None:
    auth = (("authorization", f"Bearer {host.token()}"),)
    channel, admin = _admin(host)
    with channel:
        admin.UnloadPlugin(admin_pb2.UnloadPluginRequest(name="swapper"), metadata=auth, timeout=60)
        assert set(_answers(host.address)) == {"UNIMPLEMENTED"}
        write_plugin(plugins, "back", module_extra=PID_VERSION)
        admin.LoadPlugin(admin_pb2.LoadPluginRequest(name="swapper"), metadata=auth, timeout=60)
    back = _answers(host.address)
    assert {answer.split("@")[0] for answer in back} == {"back"}, back
    assert len({answer.split("@")[1] for answer in back}) == 2, back
