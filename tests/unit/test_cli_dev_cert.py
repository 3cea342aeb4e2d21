"""`nexus tls dev-cert`: the folder it writes keys into."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from nexus_grpc.cli import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_folder_is_created_private(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "tls"
    assert main(["tls", "dev-cert", "--dir", str(folder)]) == 0
    assert mode(folder) == 0o700
    assert {path.name: mode(path) for path in folder.iterdir()} == {
        name: 0o600 for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)
    assert main(["tls", "dev-cert", "--dir", str(folder)]) == 0
    assert mode(folder) == 0o755
    assert mode(folder / "server.key") == 0o600


@pytest.mark.parametrize("writable", [0o777, 0o1777, 0o775])
def test_a_folder_others_may_write_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], writable: int
) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(writable)
    assert main(["tls", "dev-cert", "--dir", str(folder)]) == 1
    assert mode(folder) == writable
    assert list(folder.iterdir()) == []
    error = capsys.readouterr().err
    assert f"{folder} is writable by other users (mode {writable:o})" in error
