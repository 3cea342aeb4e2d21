"""`nexus health` and the HTTP probes against a real `nexus serve`, through its drain.

`nexus health` is what the container image's HEALTHCHECK runs: exit 0 only while the
host (or the named service) is SERVING, 1 for everything else, with its address taken
from the same configuration `nexus serve` reads when none is given.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, ServeProcess, run_nexus, start_serve
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.e2e

#: Seconds the host keeps its ports open after turning NOT_SERVING on SIGTERM.
SHUTDOWN_DELAY = 3.0


@pytest.fixture
def draining_serve(tmp_path: Path, probe_stubs: Path) -> Iterator[ServeProcess]:
    running = start_serve(
        tmp_path,
        probe_stubs,
        [REPO / "plugins"],
        NEXUS_SERVER__SHUTDOWN_DELAY=str(SHUTDOWN_DELAY),
        NEXUS_SERVER__GRACE_PERIOD="2",
    )
    try:
        yield running
    finally:
        running.close()


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}


def test_nexus_health_and_the_probes_follow_the_host_into_its_drain(
    draining_serve: ServeProcess,
) -> None:
    serve = draining_serve
    address = serve.address
    checked = run_nexus(env(), "health", "--address", address)
    assert (checked.returncode, checked.stdout.strip()) == (0, "(host): SERVING"), checked.stderr
    storage = run_nexus(env(), "health", "--address", address, "--service", "nexus.storage")
    assert storage.returncode == 0, storage.stderr
    unknown = run_nexus(env(), "health", "--address", address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "no.such.Service: SERVICE_UNKNOWN" in unknown.stderr
    quiet = run_nexus(env(), "health", "--address", address, "--service", "x.Y", "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", "")

    # No --address: server.grpc_address from the environment, a wildcard dialled on
    # loopback (as in the container, where HEALTHCHECK passes no address).
    port = address.rsplit(":", 1)[1]
    configured = run_nexus({**env(), "NEXUS_SERVER__GRPC_ADDRESS": f"0.0.0.0:{port}"}, "health")
    assert configured.returncode == 0, configured.stderr

    base = f"http://{serve.http_address}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}

    serve.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    deadline = started + SHUTDOWN_DELAY - 0.5
    readiness = httpx.get(f"{base}/readyz")
    while readiness.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        readiness = httpx.get(f"{base}/readyz")
    assert readiness.status_code == 503
    assert readiness.json()["checks"] == {"host": "draining"}
    assert httpx.get(f"{base}/healthz").status_code == 200
    draining = run_nexus(env(), "health", "--address", address, "--timeout", "1")
    assert draining.returncode == 1
    assert "(host): NOT_SERVING" in draining.stderr
    # Both answers came while the ports were still open, before the drain's end.
    assert time.monotonic() - started < SHUTDOWN_DELAY
    assert serve.process.wait(30) == 0


def test_nexus_health_fails_fast_when_nothing_listens() -> None:
    started = time.monotonic()
    result = run_nexus(env(), "health", "--address", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 1
    assert "DEADLINE_EXCEEDED" in result.stderr or "UNAVAILABLE" in result.stderr
    assert time.monotonic() - started < 15


def test_nexus_health_refuses_options_it_cannot_use() -> None:
    result = run_nexus(env(), "health", "--address", "127.0.0.1:1", "--cert", "/nonexistent")
    assert result.returncode == 1
    assert "--cert and --key go together" in result.stderr
