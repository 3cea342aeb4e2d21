"""`nexus serve` options and the start-up errors it reports, as a real process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BIN, ServeProcess, start_serve


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


def serve_fails(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`nexus serve ARGV` on free ports in an empty folder, expected to stop at start."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environment.update(NEXUS_DATA_DIR=str(tmp_path / "data"), NEXUS_LOG__FORMAT="text", **env)
    return subprocess.run(
        [
            *(str(BIN / "nexus"), "serve", "--grpc-address", "127.0.0.1:0"),
            *("--http-address", "", *argv),
        ],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "shown", "cause"),
    [
        (
            "postgresql://ada:hunter2@127.0.0.1:1/nexus",
            "postgresql://ada:***@127.0.0.1:1/nexus",
            "connection refused",
        ),
        (
            "mongodb://ada:hunter2@127.0.0.1:1/nexus?serverSelectionTimeoutMS=300",
            "mongodb://ada:***@127.0.0.1:1/nexus?serverSelectionTimeoutMS=300",
            "no server reachable",
        ),
        ("oracle://ada:hunter2@db/nexus", "oracle://ada:***@db/nexus", "unsupported database"),
    ],
)
def test_a_storage_that_does_not_answer_is_named_at_start(
    tmp_path: Path, url: str, shown: str, cause: str
) -> None:
    result = serve_fails(tmp_path, NEXUS_STORAGE__URL=url, NEXUS_STORAGE__CONNECT_TIMEOUT="2")
    assert result.returncode == 1
    assert "nexus could not start: storage" in result.stderr
    assert shown in result.stderr and cause in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_a_misspelt_nexus_variable_stops_start_up(tmp_path: Path) -> None:
    result = serve_fails(tmp_path, NEXUS_SERVR__GRPC_ADDRESS="0.0.0.0:0")
    assert result.returncode == 2
    assert (
        "nexus: configuration error: environment variable NEXUS_SERVR__GRPC_ADDRESS names "
        "no config key (did you mean NEXUS_SERVER__GRPC_ADDRESS"
    ) in result.stderr


def test_a_rate_limiter_redis_that_does_not_answer_is_named_at_start(
    tmp_path: Path, probe_stubs: Path
) -> None:
    running = start_serve(
        tmp_path,
        probe_stubs,
        [],
        NEXUS_LIMITS__BACKEND="redis",
        NEXUS_LIMITS__REDIS_URL="redis://:hunter2@127.0.0.1:1/0",
    )
    try:
        entry = running.wait_for_log(lambda e: "rate limiter Redis" in e.get("message", ""))
        assert entry["level"] == "warning"
        assert entry["message"].startswith(
            "rate limiter Redis redis://:***@127.0.0.1:1/0 is not reachable: "
        )
        assert entry["message"].endswith("every call is refused UNAVAILABLE until it answers")
    finally:
        running.stop()
    assert not any("hunter2" in str(e) for e in running.logs)


def test_each_method_without_a_policy_is_named_once_at_load(serve: ServeProcess) -> None:
    # The probe plugin's UnguardedService declares none; the bundled plugins all do.
    warned = [e for e in serve.logs if "declares no access policy" in e.get("message", "")]
    assert len(warned) == 1, warned
    assert warned[0]["level"] == "warning"
    assert warned[0]["plugin"] == "probe"
    assert warned[0]["method"] == "/probe.v1.UnguardedService/Call"
    assert warned[0]["message"] == (
        "plugin 'probe': /probe.v1.UnguardedService/Call declares no access policy, so every "
        "call to it is denied; declare (nexus.options.v1.policy) on the method or "
        "(nexus.options.v1.default_policy) on its service"
    )


def test_bad_serve_options_are_named(tmp_path: Path) -> None:
    bad_port = serve_fails(tmp_path, "--http-address", "127.0.0.1:70000")
    assert bad_port.returncode == 2
    assert (
        "argument --http-address: '127.0.0.1:70000' is not HOST:PORT with a port from 0 to 65535"
    ) in bad_port.stderr
    (tmp_path / "a-file").write_text("")
    not_a_folder = serve_fails(tmp_path, "--data-dir", str(tmp_path / "a-file"))
    assert not_a_folder.returncode == 1
    assert (
        f"nexus could not start: data_dir {tmp_path / 'a-file'}: cannot create or use it"
    ) in not_a_folder.stderr
    assert "Traceback" not in not_a_folder.stderr
