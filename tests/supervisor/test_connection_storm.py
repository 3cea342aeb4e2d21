"""Rolling restarts under a storm of new connections, in a network namespace of its own
(``net.ipv4.tcp_migrate_req`` is per namespace; making one takes root).

HTTP: no connection is reset or refused, with the sysctl at 1 or at 0. The HTTP port's
listeners are the supervisor's, one per worker slot, and a replacement serves on its
predecessor's socket (tests/supervisor/test_slot_listeners.py): no listener closes,
so nothing the kernel queued is dropped and no handshake races a closing listener. The
retiring worker lets connections it had just accepted send their request before it
closes idle ones.

gRPC: grpcio opens its own listeners, so a retiring worker's listener closes. With the
sysctl at 1 the kernel hands what it had queued to the other worker: no reset. With 0
those connections are reset, at most the one each storm thread has open when a worker
retires. One outcome is grpc core's own either way: a connection it accepted just as the
retiring worker's server shuts down may be closed (cleanly, FIN) before the server's
SETTINGS; a gRPC client sees it as UNAVAILABLE on a connection that carried nothing and
reconnects. Those are counted and bounded, not hidden.
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


@pytest.mark.parametrize("migrate", [1, 0], ids=["tcp_migrate_req=1", "tcp_migrate_req=0"])
def test_rolling_restarts_under_a_connection_storm_reset_no_http_connection(
    migrate: int,
) -> None:
    if not _namespaces():
        pytest.skip("needs root and unshare -n for a network namespace of its own")
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed")
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.supervisor.storm", str(migrate), "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rolls"] == 2
    outcomes = report["outcomes"]
    assert outcomes.get("http ok", 0) > 100 and outcomes.get("grpc ok", 0) > 100, report
    # No HTTP connection refused, reset or unanswered, whatever the sysctl says.
    assert "http failed" not in outcomes, report
    # Each roll retires both workers; a storm thread has one connection at a time.
    at_retiring_moments = THREADS_PER_PORT * 2 * report["rolls"]
    # But a thread opens connection after connection, and while a retiring worker's
    # gRPC listener closes (grpc core's, not ours) the kernel may hand it several of
    # them: clean closes are bounded by how long that takes, a few per thread and
    # retiring moment (17 for 16 moments in one CI run, 42 on a loaded machine), not
    # by one. A listener left open for the whole drain would close thousands.
    assert outcomes.get("grpc closed", 0) <= 4 * at_retiring_moments, report
    resets = report["errors"].get("grpc ConnectionResetError", 0)
    assert set(report["errors"]) <= {"grpc ConnectionResetError"}, report
    assert outcomes.get("grpc failed", 0) == resets, report
    # The kernel resets what a closing gRPC listener had queued unless it migrates it.
    assert resets <= (0 if migrate else at_retiring_moments), report
