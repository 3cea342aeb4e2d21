"""The image's runtime conditions without a container engine: `nexus serve` with the
image's configuration and environment, every capability dropped (the Deployment's
``drop: ["ALL"]``), in a mount namespace whose root filesystem is read-only but for a
tmpfs on ``/tmp`` holding the data dir (the image's volume).

It serves, writes (an order over REST, the storage's readiness probe), answers its
health checks and drains on SIGTERM: nothing it does needs a writable root or a
privilege. (The image's own user, uid 10001, cannot be used here: this checkout's venv
links to an interpreter under root's home; the uid is checked in test_lint_deploy.)
Needs root (to make the namespace); without it the test skips, or fails under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nexus_grpc.auth import Grant, KeySet, Principal, TokenIssuer
from nexus_grpc.config import AuthConfig
from tests.deploy.test_lint_deploy import DEPLOY, env_values, runtime_stage
from tests.e2e.conftest import BIN, REPO, ServeProcess, missing, run_nexus, watch

pytestmark = pytest.mark.e2e

_SCRIPT = """
set -e
secret=$(cat "$SECRET_SOURCE")
mount -o remount,bind,ro /
case "$CHECKOUT/" in
/tmp/*)
    # A checkout under /tmp (a CI clone) would vanish under the tmpfs: carry it over
    # through /mnt and put it back read-only at its own path.
    # (-n: the read-only root has no writable mount table to update.)
    mount -n --bind "$CHECKOUT" /mnt
    mount -n -t tmpfs -o size=64m,mode=1777 tmpfs /tmp
    mkdir -p "$CHECKOUT"
    mount -n --move /mnt "$CHECKOUT"
    mount -n -o remount,bind,ro "$CHECKOUT"
    ;;
*)
    mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp
    ;;
esac
mkdir -m 700 /tmp/data
printf %s "$secret" > /tmp/data/secret.key
chmod 600 /tmp/data/secret.key
exec setpriv --no-new-privs --bounding-set -all --inh-caps -all {nexus} serve
"""


@pytest.fixture
def read_only_serve(tmp_path: Path) -> Iterator[ServeProcess]:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        missing("root with unshare and setpriv (a read-only mount namespace)")
    secret = tmp_path / "secret.key"
    secret.write_text(secrets.token_urlsafe(48))
    image_env = env_values(runtime_stage())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")},
        "PYTHONDONTWRITEBYTECODE": image_env["PYTHONDONTWRITEBYTECODE"],
        "PYTHONUNBUFFERED": image_env["PYTHONUNBUFFERED"],
        "TMPDIR": image_env["TMPDIR"],
        "HOME": "/tmp/data",
        "SECRET_SOURCE": str(secret),
        "CHECKOUT": str(REPO),
        # The image's nexus.toml, but for free loopback ports, the data dir on the
        # tmpfs, and a short drain.
        "NEXUS_CONFIG": str(DEPLOY / "nexus.toml"),
        "NEXUS_DATA_DIR": "/tmp/data",
        "NEXUS_AUTH__SECRET_FILE": "/tmp/data/secret.key",
        "NEXUS_SERVER__GRPC_ADDRESS": "127.0.0.1:0",
        "NEXUS_HTTP__ADDRESS": "127.0.0.1:0",
        "NEXUS_SERVER__SHUTDOWN_DELAY": "0.2",
        "NEXUS_SERVER__GRACE_PERIOD": "2",
    }
    script = _SCRIPT.format(nexus=shlex.quote(str(BIN / "nexus")))
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = watch(process, tmp_path)
    try:
        yield serve
    finally:
        serve.close()


def test_nexus_serves_writes_and_drains_on_a_read_only_root_without_capabilities(
    read_only_serve: ServeProcess, tmp_path: Path
) -> None:
    serve = read_only_serve
    status = Path(f"/proc/{serve.process.pid}/status").read_text()
    capabilities = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    assert int(capabilities["CapEff"], 16) == 0 and int(capabilities["CapBnd"], 16) == 0
    mounts = Path(f"/proc/{serve.process.pid}/mounts").read_text().splitlines()
    (root,) = [m.split() for m in mounts if m.split()[1] == "/"]
    assert "ro" in root[3].split(",")
    config = AuthConfig(secret_file=str(tmp_path / "secret.key"))
    keys = asyncio.run(KeySet.load(config, tmp_path))
    principal = Principal(subject="operator", grants=frozenset({Grant.parse("*.*:all")}))
    token = TokenIssuer(keys, config).issue_access(principal)[0]
    base = f"http://{serve.http_address}"
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as client:
        assert client.get("/readyz").json() == {"status": "ready"}  # its probe writes
        created = client.post(
            "/v1/orders",
            json={
                "customerId": "c1",
                "currencyCode": "EUR",
                "items": [{"sku": "PEN-7", "quantity": 1}],
            },
        )
        assert created.status_code == 200, created.text
        order_id = created.json()["id"]
        assert client.get(f"/v1/orders/{order_id}").json()["id"] == order_id
    health = run_nexus(
        {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")},
        "health",
        "--address",
        serve.address,
    )
    assert health.returncode == 0, health.stderr
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(30) == 0
    problems = [e for e in serve.logs if e.get("level") in ("ERROR", "CRITICAL")]
    assert problems == []
