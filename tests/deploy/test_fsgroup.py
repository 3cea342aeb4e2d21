"""A host started as Kubernetes starts it under the pod's ``fsGroup`` warns of nothing.

The kubelet gives a Secret volume's files group-read for the fsGroup (``defaultMode:
0400`` becomes 0440) and makes an emptyDir ``drwxrwsrwx``. The Deployment's layout: the
token secret in such a Secret volume, and ``data_dir`` a subdirectory of the emptyDir,
which the host creates itself (0700). A group-read secret of another group, or a secret
open to others, is still reported.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

import pytest
import yaml

from nexus_grpc.auth.keys import KeySet
from nexus_grpc.config import AuthConfig
from nexus_grpc.testing import running_host
from tests.e2e.conftest import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"


def _kubelet_layout(root: Path) -> tuple[Path, Path]:
    """(the emptyDir mount, the secret file) as the kubelet leaves them under fsGroup,
    the fsGroup being this process's group (runAsGroup = fsGroup in the Deployment)."""
    mount = root / "var-lib-nexus"
    mount.mkdir()
    mount.chmod(0o777 | stat.S_ISGID)
    secret_dir = root / "secrets"
    secret_dir.mkdir()
    secret = secret_dir / "jwt-secret"
    secret.write_bytes(secrets.token_bytes(48))
    secret.chmod(0o440)
    return mount, secret


def _data_dir_in_mount() -> tuple[str, str]:
    """(the data dir's path below the data volume's mount, the mount) of the Deployment."""
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"]
    configmap = yaml.safe_load((KUBERNETES / "configmap.yaml").read_text())
    toml = configmap["data"]["nexus.toml"]
    (line,) = [x for x in toml.splitlines() if x.startswith("data_dir")]
    data_dir = line.split("=", 1)[1].strip().strip('"')
    return data_dir, mount


async def test_the_deployment_layout_starts_without_a_permission_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, mount_path = _data_dir_in_mount()
    # The data dir is a subdirectory of the mount, not the mount itself.
    assert data_dir.startswith(mount_path + "/")
    mount, secret = _kubelet_layout(tmp_path)
    inside = mount / data_dir.removeprefix(mount_path + "/")
    caplog.set_level(logging.WARNING)
    async with running_host(
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=inside,
        auth=AuthConfig(secret_file=str(secret)),
    ):
        pass
    # Owner-only (the setgid bit of the volume is inherited, and harmless).
    assert stat.S_IMODE(inside.stat().st_mode) & 0o777 == 0o700
    complaints = [
        r.getMessage()
        for r in caplog.records
        if "other users" in r.getMessage() or "open to" in r.getMessage()
    ]
    assert complaints == []


async def test_a_secret_readable_beyond_the_own_group_is_still_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nexus.auth")
    secret = tmp_path / "jwt-secret"
    secret.write_bytes(secrets.token_bytes(48))
    for mode in (0o444, 0o460):  # others may read; the group may write
        caplog.clear()
        secret.chmod(mode)
        await KeySet.load(AuthConfig(secret_file=str(secret)), tmp_path / "data")
        assert f"readable by other users (mode {mode:o})" in caplog.text
    if os.geteuid() == 0:
        # Group-read for a group that is not the process's own.
        caplog.clear()
        secret.chmod(0o440)
        os.chown(secret, -1, os.getegid() + 1)
        await KeySet.load(AuthConfig(secret_file=str(secret)), tmp_path / "data")
        assert "readable by other users (mode 440)" in caplog.text
