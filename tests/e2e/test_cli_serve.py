"""`nexus serve` options and the start-up errors it reports, as a real process."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.conftest import start_serve


def test_http_address_and_data_dir_options_override_the_config(
    tmp_path: Path, probe_stubs: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    running = start_serve(
        tmp_path,
        probe_stubs,
        [],
        argv=("--http-address", "127.0.0.1:0", "--data-dir", str(elsewhere)),
        # What the options replace: HTTP off, another data folder.
        NEXUS_HTTP__ADDRESS="",
        NEXUS_DATA_DIR=str(tmp_path / "from-env"),
    )
    try:
        assert running.http_address
        document = httpx.get(f"http://{running.http_address}/openapi.json", timeout=10)
        assert document.status_code == 200
        assert (elsewhere / "nexus.db").is_file()
        assert not (tmp_path / "from-env").exists()
    finally:
        running.stop()
