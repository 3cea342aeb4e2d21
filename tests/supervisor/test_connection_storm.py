"""Rolling restarts under a storm of new connections: with ``net.ipv4.tcp_migrate_req``
= 1 the kernel hands what a retiring listener had queued to the other worker, and the
HTTP server lets connections it had just accepted send their request before it closes
idle ones: no connection is reset on an idle machine (on a busy one an HTTP connection
now and then still is: an open defect, bounded below). One outcome is grpc core's own: a connection it
accepted just as the retiring worker's server shuts down may be closed (cleanly, FIN)
before the server's SETTINGS; a gRPC client sees it as UNAVAILABLE on a connection
that carried nothing and reconnects. Those are counted and bounded, not hidden: at most
the one connection each storm thread has open when a worker retires. Runs in
a network namespace of its own (the setting is per namespace), which takes root;
``python -m tests.supervisor.storm 0 N`` shows the resets without migration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.supervisor.storm import THREADS_PER_PORT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_rolling_restarts_with_request_migration_reset_no_connection_but_rarely_one() -> None:
    if not _namespaces():
        pytest.skip("needs root and unshare -n for a network namespace of its own")
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed")
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.supervisor.storm", "1", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rolls"] == 2
    outcomes = report["outcomes"]
    assert outcomes.get("http ok", 0) > 100 and outcomes.get("grpc ok", 0) > 100, report
    # Each roll retires both workers; a storm thread has one connection at a time. How
    # many of those land in the retiring moment grows with the machine's load.
    at_retiring_moments = THREADS_PER_PORT * 2 * report["rolls"]
    # No refused connection, no gRPC reset. An open defect: on a busy machine (the
    # suite's other workers) an HTTP connection is still reset now and then (1-4 among
    # ~15,000, as the retiring worker closes its listener, with no connection of its own
    # left open); none on an idle one.
    resets = report["errors"].get("http ConnectionResetError", 0)
    assert set(report["errors"]) <= {"http ConnectionResetError"}, report
    assert resets <= at_retiring_moments and outcomes.get("http failed", 0) == resets, report
    assert "grpc failed" not in outcomes, report
    assert outcomes.get("grpc closed", 0) <= at_retiring_moments, report
