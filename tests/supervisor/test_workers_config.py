"""``server.workers`` / ``--workers``: parsing, and the shared state it requires."""

from __future__ import annotations

import os
import subprocess

import pytest

from nexus_grpc.config import MAX_WORKERS, ConfigError, load_config, parse_workers
from tests.e2e.conftest import BIN, REPO


def test_workers_default_to_one_process() -> None:
    assert load_config(environ={}).server.workers == 1


def test_auto_is_the_usable_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert parse_workers("auto") == cores
    environ = {
        "NEXUS_SERVER__WORKERS": "auto",
        "NEXUS_LIMITS__BACKEND": "redis",
        "NEXUS_EVENTS__BACKEND": "redis",
        "NEXUS_CACHE__BACKEND": "redis",
    }
    assert load_config(environ=environ).server.workers == cores


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", str(MAX_WORKERS + 1), True])
def test_bad_counts_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers: expected a count from 1 to"):
        parse_workers(value)


def test_several_workers_need_the_shared_state_on_redis() -> None:
    environ = {"NEXUS_SERVER__WORKERS": "2", "NEXUS_LIMITS__BACKEND": "redis"}
    with pytest.raises(ConfigError) as raised:
        load_config(environ=environ)
    message = str(raised.value)
    assert 'events.backend = "redis"' in message and 'cache.backend = "redis"' in message
    assert "limits.backend" not in message


def test_serve_refuses_workers_with_memory_state(tmp_path: os.PathLike[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    result = subprocess.run(
        [str(BIN / "nexus"), "serve", "--workers", "2", "--data-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "server.workers = 2 needs the state the workers share on Redis" in result.stderr
    assert 'limits.backend = "redis"' in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_a_bad_workers_option() -> None:
    result = subprocess.run(
        [str(BIN / "nexus"), "serve", "--workers", "lots"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers: expected a count from 1 to" in result.stderr
