"""AdminService.RestartWorkers: the rolling restart of SIGHUP, asked for over gRPC."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from nexus_grpc.testing import running_host
from tests.fixtures.redis import RedisServer
from tests.supervisor.conftest import start_workers, workers_config


@pytest.mark.e2e
def test_restart_workers_rolls_every_worker(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/10"
    host = start_workers(tmp_path, workers_config(tmp_path / "nexus.toml", redis_url))
    try:
        metadata = (("authorization", f"Bearer {host.token()}"),)
        reader = (("authorization", f"Bearer {host.token(grants=('admin.read:all',))}"),)
        with grpc.insecure_channel(host.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            request = admin_pb2.RestartWorkersRequest(policy=admin_pb2.RESTART_POLICY_ROLLING)
            # Reading the admin service is not enough to restart it.
            with pytest.raises(grpc.RpcError) as denied:
                admin.RestartWorkers(request, metadata=reader, timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            started = time.monotonic()
            assert admin.RestartWorkers(request, metadata=metadata, timeout=10).workers == 2
            # Answered at once, not after the restart; a second one meanwhile is refused.
            assert time.monotonic() - started < 5
            with pytest.raises(grpc.RpcError) as busy:
                admin.RestartWorkers(request, metadata=metadata, timeout=10)
            assert busy.value.code() == grpc.StatusCode.ABORTED
            assert "running already" in str(busy.value.details())
        host.wait_for_log(
            lambda e: e.get("message", "").startswith("rolling restart done"), timeout=90
        )
        exited = [e for e in host.logs if " exited " in e.get("message", "")]
        assert {e["message"].split("(pid ")[1].split(")")[0] for e in exited} == {
            str(pid) for pid in host.worker_pids
        }
        assert host.stop() == 0
    finally:
        host.close()


@pytest.mark.asyncio
async def test_a_host_of_one_process_has_no_workers_to_restart(tmp_path: Path) -> None:
    async with running_host(data_dir=tmp_path) as host:
        admin = admin_pb2_grpc.AdminServiceStub(host.channel(token=host.token()))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.RestartWorkers(admin_pb2.RestartWorkersRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "server.workers = 1" in str(refused.value.details())
