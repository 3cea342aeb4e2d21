"""`nexus serve --workers N` as a real process, on a free port, sharing one Redis."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import BIN, REPO, ServeProcess

__all__ = ["Workers", "start_workers", "until", "workers_config"]


def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``check`` until it is true; AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@dataclass
class Workers(ServeProcess):
    """The supervisor process; ``worker_pids`` as it reported them once all served."""

    worker_pids: list[int] = field(default_factory=list)


def workers_config(path: Path, redis_url: str, extra: str = "") -> Path:
    """A config file for workers: the limiter, bus and cache on ``redis_url``, calls
    not rate limited (load tests), plus ``extra`` TOML."""
    path.write_text(
        f"""
[limits]
backend = "redis"
redis_url = "{redis_url}"
[limits.rate_classes.default]
rate = 1000000
burst = 1000000
[events]
backend = "redis"
redis_url = "{redis_url}"
[cache]
backend = "redis"
redis_url = "{redis_url}"
{extra}
"""
    )
    return path


def start_workers(
    tmp_path: Path,
    config: Path,
    *,
    workers: int = 2,
    probe_stubs: Path | None = None,
    **env: str,
) -> Workers:
    """Start `nexus serve --workers N` with the bundled plugins and wait until the
    supervisor reports every worker serving."""
    environment = {
        **os.environ,
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_PLUGINS__DIRS": str(REPO / "plugins"),
        "NEXUS_PLUGINS__ENTRY_POINTS": "false",
        "NEXUS_LOG__FORMAT": "json",
        "NEXUS_LOG__ACCESS": "false",
        "NEXUS_HTTP__ADDRESS": "127.0.0.1:0",
        **env,
    }
    if probe_stubs is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(probe_stubs), os.environ.get("PYTHONPATH", "")]
        )
    process = subprocess.Popen(
        [
            str(BIN / "nexus"),
            "serve",
            "--config",
            str(config),
            "--grpc-address",
            "127.0.0.1:0",
            "--workers",
            str(workers),
        ],
        cwd=REPO,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = Workers(process, data_dir=tmp_path / "data")

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            serve._lines.put(line)
        serve._lines.put(None)

    serve._reader = threading.Thread(target=pump, daemon=True)
    serve._reader.start()
    try:
        ready = serve.wait_for_log(
            lambda e: e.get("message", "").startswith("nexus workers serving on"), timeout=60
        )
    except BaseException:
        serve.close()
        raise
    serve.address = ready["grpc_address"]
    serve.http_address = ready.get("http_address", "")  # none without HTTP
    serve.worker_pids = ready["worker_pids"]
    return serve
