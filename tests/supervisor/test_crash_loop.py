"""`nexus serve --workers 2` whose workers keep dying: it gives up, exits 1, says why."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.fixtures.redis import RedisServer
from tests.supervisor.conftest import start_workers, workers_config

pytestmark = pytest.mark.e2e


def test_a_crash_loop_stops_the_host_with_status_1(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/11"
    host = start_workers(tmp_path, workers_config(tmp_path / "nexus.toml", redis_url))
    try:
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        # Kill every worker as soon as it is started, until the supervisor gives up.
        while host.process.poll() is None:
            assert time.monotonic() < deadline, "the supervisor never gave up"
            started = {
                int(e["pid"])
                for e in host.logs
                if e.get("message", "").startswith("worker ") and "started" in e["message"]
            } | set(host.worker_pids)
            for pid in started - killed:
                killed.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            seen = {id(e) for e in host.logs}
            # Reads the log lines printed meanwhile; none in that time, or the supervisor
            # exited: the loop looks again.
            with contextlib.suppress(AssertionError):
                host.wait_for_log(lambda e, seen=seen: id(e) not in seen, timeout=0.5)
        assert host.process.wait(30) == 1
        host.wait_for_log(lambda e: e.get("message", "").startswith("nexus workers stopped"))
        errors = [e["message"] for e in host.logs if e.get("level") == "error"]
        assert any("crash loop: 5 worker deaths within 60s" in m for m in errors), errors
        assert len(killed) >= 5
    finally:
        host.close()


@pytest.mark.parametrize("http", ["127.0.0.1:0", ""], ids=["http", "grpc-only"])
def test_a_worker_an_operator_stops_is_started_again_and_is_no_death(
    redis_server: RedisServer, tmp_path: Path, http: str
) -> None:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/11"
    config = workers_config(tmp_path / "nexus.toml", redis_url)
    host = start_workers(tmp_path, config, NEXUS_HTTP__ADDRESS=http)
    try:
        stopped = host.worker_pids[0]
        os.kill(stopped, signal.SIGTERM)
        entry = host.wait_for_log(
            lambda e: "stopped on its own; starting a new one" in e.get("message", ""), timeout=30
        )
        assert entry["pid"] == stopped and entry["exit_status"] == 0
        again = host.wait_for_log(
            lambda e: (
                e.get("message", "").startswith("worker ")
                and " started (pid " in e["message"]
                and e["pid"] not in host.worker_pids
            ),
            timeout=30,
        )
        host.wait_for_log(lambda e: f"(pid {again['pid']}) serving" in e.get("message", ""), 60)
        assert not [e for e in host.logs if " died " in e.get("message", "")]
        assert host.stop() == 0
    finally:
        host.close()
