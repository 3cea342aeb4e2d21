"""SIGHUP rolls the workers while clients hammer both ports: no refused connection,
no failed HTTP call, no UNAVAILABLE, health SERVING throughout (the replaced worker
drains without announcing it).

One gRPC outcome is grpc core's own: when a server shuts down, calls that arrived but
that the application had not yet asked for (grpc.aio takes them one at a time) are
cancelled (``ZombifyPending``), and the client sees CANCELLED. Under saturating load a
rolling restart shows a few at most: at most one per client thread and retiring worker,
as each thread has one call in flight. They are counted and bounded here, not hidden.

The other is the kernel's, with ``net.ipv4.tcp_migrate_req`` at 0 (this namespace's
default; the supervisor warns about it): connections queued on a retiring worker's gRPC
listener but not accepted yet are reset when it closes (the HTTP port's listeners are
the supervisor's and never close in a roll). The client sees UNAVAILABLE
before its connection carried a call, and reconnects. How many are queued at that
moment grows with the machine's load; each client thread has one connection attempt
in flight, so it loses at most one per retiring worker. With migration on there are
none (tests/supervisor/test_connection_storm.py proves that in a namespace of its own).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.supervisor.ports import MIGRATE_REQ
from tests.fixtures.redis import RedisServer
from tests.supervisor.conftest import start_workers, workers_config

pytestmark = pytest.mark.e2e

#: Client threads per port; every NEW_CONNECTION_EVERY-th call opens a new connection.
THREADS = 3
NEW_CONNECTION_EVERY = 5


class Load:
    """Calls in a loop on both ports until stopped; outcomes counted."""

    def __init__(self, grpc_address: str, http_address: str) -> None:
        self._grpc = grpc_address
        self._http = http_address
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._threads = [
            threading.Thread(target=target, daemon=True)
            for target in [self._grpc_loop] * THREADS + [self._http_loop] * THREADS
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _count(self, outcome: str, failure: str = "") -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if failure and len(self.failures) < 20:
                self.failures.append(failure)

    def _grpc_loop(self) -> None:
        calls = 0
        while not self._stop.is_set():
            with grpc.insecure_channel(self._grpc) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(NEW_CONNECTION_EVERY):
                    calls += 1
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            self._count("grpc ok")
                        else:
                            # The host as a whole never stops serving in a rolling restart.
                            self._count("grpc failed", f"health {reply.status}")
                    except grpc.RpcError as error:
                        details = f"{error.details()}"
                        if error.code() is grpc.StatusCode.UNAVAILABLE and (
                            "failed to connect" in details and "reset by peer" in details
                        ):
                            # Reset while queued on a retiring listener: reconnect, as
                            # a client does (the channel would fail fast for a while).
                            self._count("grpc connection reset")
                            break
                        self._count("grpc failed", f"gRPC {error.code()}: {details}")

    def _http_loop(self) -> None:
        while not self._stop.is_set():
            with httpx.Client(base_url=f"http://{self._http}", timeout=10) as client:
                for _ in range(NEW_CONNECTION_EVERY):
                    try:
                        reply = client.get("/openapi.json")
                        if reply.status_code == 200:
                            self._count("http ok")
                        else:
                            self._count("http failed", f"HTTP {reply.status_code}")
                    except httpx.HTTPError as error:
                        self._count("http failed", f"HTTP {type(error).__name__}: {error}")


@pytest.mark.slow
def test_sighup_rolls_every_worker_without_a_failed_call(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/8"
    config = workers_config(tmp_path / "nexus.toml", redis_url)
    host = start_workers(tmp_path, config)
    try:
        with Load(host.address, host.http_address) as load:
            time.sleep(1.0)
            host.process.send_signal(signal.SIGHUP)
            host.wait_for_log(
                lambda e: e.get("message", "").startswith("rolling restart done"), timeout=90
            )
            time.sleep(1.0)
        cancelled = [f for f in load.failures if f == "gRPC StatusCode.CANCELLED: CANCELLED"]
        # A gRPC client thread has one call in flight: each retiring worker (2) can have
        # taken at most one call per thread that it had not asked for yet.
        assert len(cancelled) <= THREADS * 2, (load.outcomes, load.failures)
        assert [f for f in load.failures if f not in cancelled] == [], load.failures
        # At most one per gRPC client thread and retiring worker (2), and only when the
        # kernel does not migrate a closing listener's queue.
        resets = load.outcomes["grpc connection reset"]
        migrated = _read(MIGRATE_REQ) == "1"
        assert resets <= (0 if migrated else THREADS * 2), load.outcomes
        assert load.outcomes["grpc ok"] > 50 and load.outcomes["http ok"] > 50, load.outcomes
        # Both old workers drained and exited; two new ones serve.
        exited = {
            e["message"].split("(pid ")[1].split(")")[0]
            for e in host.logs
            if e.get("message", "").startswith("worker ") and " exited " in e["message"]
        }
        assert exited == {str(pid) for pid in host.worker_pids}
        assert host.stop() == 0
    finally:
        host.close()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    """Whether ``pid`` exited (a zombie waiting for its new parent counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_workers_stop_when_the_supervisor_is_killed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/9"
    host = start_workers(tmp_path, workers_config(tmp_path / "nexus.toml", redis_url))
    try:
        host.process.kill()
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in host.worker_pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.1)
        host.wait_for_log(
            lambda e: e.get("message") == "the supervisor is gone: stopping this worker"
        )
    finally:
        host.close()
