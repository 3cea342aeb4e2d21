"""A rolling restart's replacements read the configuration again, for the worker
count the supervisor holds: a file that cannot serve that many workers is refused
and the old workers keep serving. Also: workers' log lines say which worker wrote
them, and RestartWorkers refuses a policy it does not know."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from tests.fixtures.redis import RedisServer
from tests.supervisor.conftest import start_workers, workers_config

pytestmark = pytest.mark.e2e


def test_a_replacement_refuses_a_config_that_breaks_the_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/11"
    config = workers_config(tmp_path / "nexus.toml", redis_url)
    host = start_workers(tmp_path, config)
    try:
        # Every line a worker writes names it: its pid and its slot.
        for slot, pid in enumerate(host.worker_pids):
            host.wait_for_log(lambda e, s=slot, p=pid: e.get("worker") == s and e.get("pid") == p)
        # Memory backends: each worker would keep rate limits of its own.
        config.write_text("[limits.rate_classes.default]\nrate = 1000000\nburst = 1000000\n")
        host.process.send_signal(signal.SIGHUP)
        stopped = host.wait_for_log(
            lambda e: e.get("message", "").startswith("rolling restart stopped"), timeout=60
        )
        assert "exited with status 2 before it served" in stopped["message"]
        host.wait_for_log(lambda e: "needs the state the workers share on Redis" in e["message"])
        with grpc.insecure_channel(host.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            metadata = (("authorization", f"Bearer {host.token()}"),)
            with pytest.raises(grpc.RpcError) as unknown:
                admin.RestartWorkers(
                    admin_pb2.RestartWorkersRequest(policy=7),  # type: ignore[arg-type]
                    metadata=metadata,
                    timeout=10,
                )
            assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown restart policy 7" in str(unknown.value.details())
        # The old workers still serve: no worker exited but the refused replacement.
        exited = [e for e in host.logs if " exited " in e.get("message", "")]
        assert not [e for e in exited if any(str(p) in e["message"] for p in host.worker_pids)]
        assert host.stop() == 0
    finally:
        host.close()
