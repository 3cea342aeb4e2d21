"""Hot swap with `nexus serve --workers 2` holds: one state on every worker.

A worker started after a swap (a crashed one replaced) serves what the others serve,
or does not start; an admin call whose swap another worker did not apply fails; a
host that is stopping refuses swaps. Each test starts its own host (it kills or stops
workers).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from tests.fixtures.redis import RedisServer
from tests.fixtures.swap import SWAP_STUBS
from tests.hotswap import generations_support as support
from tests.hotswap.plugin_source import write_plugin
from tests.hotswap.test_generations_host import CODE, MANIFEST, PUT_ITEM, _grpcurl
from tests.hotswap.test_workers import PID_VERSION, _answers
from tests.supervisor.conftest import Workers, start_workers, workers_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

generated = support.generated

HOT_SWAP = """
[plugins.hot_swap]
enabled = true
drain_timeout = 5.0
start_timeout = 2.0
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    write_plugin(folder, "1", module_extra=PID_VERSION)
    return folder


@pytest.fixture
def host(redis_server: RedisServer, plugins: Path, tmp_path: Path) -> Iterator[Workers]:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/13"
    extra = HOT_SWAP + "[server]\nshutdown_delay = 3.0\n"
    config = workers_config(tmp_path / "nexus.toml", redis_url, extra)
    running = start_workers(
        tmp_path, config, probe_stubs=SWAP_STUBS, NEXUS_PLUGINS__DIRS=str(plugins)
    )
    try:
        yield running
    finally:
        running.close()


def _auth(host: Workers) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {host.token()}"),)


def _replaced(host: Workers, victim: int) -> None:
    """Kill worker ``victim`` and wait until its replacement serves."""
    os.kill(victim, signal.SIGKILL)
    host.wait_for_log(
        lambda e: (
            "serving" in e.get("message", "")
            and "(pid " in e.get("message", "")
            and not any(str(pid) in e["message"] for pid in host.worker_pids)
        ),
        timeout=30,
    )


def test_an_unload_holds_after_a_worker_crash(host: Workers) -> None:
    with grpc.insecure_channel(host.address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).UnloadPlugin(
            admin_pb2.UnloadPluginRequest(name="swapper"), metadata=_auth(host), timeout=60
        )
    assert set(_answers(host.address)) == {"UNIMPLEMENTED"}
    _replaced(host, host.worker_pids[0])
    # The replacement loaded the plugin from disk, then applied the unload before serving.
    assert set(_answers(host.address)) == {"UNIMPLEMENTED"}


def test_a_peer_that_fails_fails_the_admin_call(
    host: Workers, plugins: Path, tmp_path: Path
) -> None:
    failing = host.worker_pids[1]
    (tmp_path / f"fail-{failing}").write_text("x")
    write_plugin(
        plugins,
        "2",
        module_extra=PID_VERSION,
        start=(
            f"import os\nif os.path.exists({str(tmp_path)!r} + '/fail-' + str(os.getpid())):\n"
            "    raise RuntimeError('boom on this worker')"
        ),
    )
    aborted = None
    refusals: list[grpc.StatusCode] = []
    # The kernel hands each new connection to either worker: the call must land on the
    # one that succeeds for its peer's failure to be reported.
    for _ in range(20):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(host.address, options=options) as channel:
            try:
                admin_pb2_grpc.AdminServiceStub(channel).ReloadPlugin(
                    admin_pb2.ReloadPluginRequest(name="swapper"),
                    metadata=_auth(host),
                    timeout=60,
                )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.ABORTED:
                    aborted = error
                    break
                # The failing worker got the call: it refuses, nothing changed anywhere.
                refusals.append(error.code())
            else:
                pytest.fail("the reload succeeded although a worker failed to apply it")
    assert aborted is not None, "the reload never landed on the worker that applies it"
    assert set(refusals) <= {grpc.StatusCode.FAILED_PRECONDITION}, refusals
    details = aborted.details()
    assert "applied here" in details
    assert f"worker {failing}" in details
    assert "boom on this worker" in details


def test_a_stopping_host_refuses_swaps(host: Workers) -> None:
    os.kill(host.process.pid, signal.SIGTERM)
    time.sleep(0.5)
    # Within server.shutdown_delay: the workers still answer calls, not swaps.
    with grpc.insecure_channel(host.address) as channel, pytest.raises(grpc.RpcError) as refused:
        admin_pb2_grpc.AdminServiceStub(channel).UnloadPlugin(
            admin_pb2.UnloadPluginRequest(name="swapper"), metadata=_auth(host), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    assert "stopping" in (refused.value.details() or "")
    assert host.process.wait(timeout=60) == 0


def test_a_refused_breaking_upgrade_stays_off_after_a_worker_crash(
    redis_server: RedisServer, tmp_path: Path, generated: dict[str, Path]
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    plugin = tmp_path / "plugins" / "swap"
    plugin.mkdir(parents=True)

    def write(version: str, contract: Path) -> None:
        (plugin / "manifest.toml").write_text(MANIFEST.format(version=version))
        extra = PUT_ITEM.format(version=version)
        (plugin / "__init__.py").write_text(CODE.format(version=version, extra=extra))
        shutil.rmtree(stubs / "genswap", ignore_errors=True)
        shutil.copytree(contract / "genswap", stubs / "genswap")

    write("v2", generated["v2"])
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/14"
    config = workers_config(tmp_path / "nexus.toml", redis_url, HOT_SWAP)
    host = start_workers(
        tmp_path, config, probe_stubs=stubs, NEXUS_PLUGINS__DIRS=str(plugin.parent)
    )
    try:
        write("gone", generated["breaking_method"])
        channel = grpc.insecure_channel(host.address)
        with channel, pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminServiceStub(channel).ReloadPlugin(
                admin_pb2.ReloadPluginRequest(name="swap"), metadata=_auth(host), timeout=60
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        os.kill(host.worker_pids[0], signal.SIGKILL)
        # The replacement finds the breaking version on disk and does not serve it.
        unfit = host.wait_for_log(lambda e: "did not start" in e.get("message", ""), timeout=30)
        assert "plugin 'swap'" in unfit["message"]
        for _ in range(10):
            described = subprocess.run(
                [_grpcurl(), "-plaintext", host.address, "describe", support.SERVICE],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert described.returncode == 0, described.stderr
            assert "GetItem" in described.stdout
    finally:
        host.close()
