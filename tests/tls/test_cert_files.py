"""How TestCA (and `nexus tls dev-cert`) write certificate and key files."""

from __future__ import annotations

import stat
from pathlib import Path

from nexus_grpc.tls.certs import TestCA


def test_files_are_written_whole_and_never_through_a_planted_link(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    # Links under the names a predictable temporary file would have had.
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        (folder / f".{name}.tmp").symlink_to(victim)
    ca = TestCA.create(folder)
    server = ca.issue("server", dns=("localhost",))
    assert victim.read_text() == "untouched"
    for path in (ca.cert_file, server.cert_file, server.key_file):
        assert not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server.key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    # Nothing but the planted links and the files themselves.
    leftovers = {p.name for p in folder.iterdir()} - {
        ".ca.crt.tmp",
        ".ca.key.tmp",
        ".server.crt.tmp",
        ".server.key.tmp",
    }
    assert leftovers == {"ca.crt", "server.crt", "server.key"}
    # Replacing a file swaps it whole: the new contents, still 0600.
    again = ca.issue("server", dns=("localhost",))
    assert again.key_file == server.key_file
    assert stat.S_IMODE(again.key_file.stat().st_mode) == 0o600
