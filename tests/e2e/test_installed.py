"""The package is the product: the built wheel, in a fresh venv that cannot see this
checkout, gives a plugin author and an operator everything.

Builds the sdist from a copy of the checkout and the wheel from that sdist, installs
the wheel with its ``author`` extra into a new venv, then, from empty folders and
with no PYTHONPATH: ``nexus --version``, ``nexus new plugin``, ``nexus gen``, the
plugin's own tests, ``nexus lint``, ``pip install -e .``, and ``nexus serve`` on its
embedded defaults, called over gRPC (grpcurl through reflection) and REST (httpx).
Slow (a venv install): ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BIN, REPO, ServeProcess, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

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


def run(
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


def clean_env(venv: Path, home: Path | None = None) -> dict[str, str]:
    """The environment of a user of ``venv``: its bin first, nothing of this checkout."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("NEXUS_")
    }
    path = [p for p in keep.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
    keep["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    keep["VIRTUAL_ENV"] = str(venv)
    return keep


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist built from a copy of the checkout, the wheel from it."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    out = root / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run(
        sys.executable,
        "-c",
        "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
        out,
        cwd=source,
        env=env,
    )
    (sdist,) = out.glob("nexus_grpc-*.tar.gz")
    # The wheel from the sdist: proves the sdist holds everything the wheel needs.
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, sdist, cwd=root, env=env
    )
    (wheel,) = out.glob("nexus_grpc-*.whl")
    return sdist, wheel


def test_sdist_holds_the_contracts_generated_code_and_bundled_plugins(
    dist: tuple[Path, Path],
) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for expected in (
        "setup.py",
        "pyproject.toml",
        "proto/nexus/options/v1/options.proto",
        "proto/nexus/orders/v1/orders.proto",
        "generated/nexus/options/v1/options.proto",
        "generated/nexus/options/v1/options_pb2.py",
        "generated/nexus/orders/v1/nexus_descriptors.binpb",
        "plugins/orders/manifest.toml",
        "plugins/auth/service.py",
        "nexus_grpc/scaffold/templates/plugin/contract.proto.tmpl",
    ):
        assert expected in names, f"{expected} is not in {sdist.name}"


def test_wheel_ships_contracts_descriptor_sets_plugins_and_templates(
    dist: tuple[Path, Path],
) -> None:
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for contract in ("options/v1/options", "admin/v1/admin", "events/v1/events", "auth/v1/auth"):
        assert f"nexus/{contract}.proto" in names, contract
        assert f"nexus/{contract}_pb2.py" in names, contract
        assert f"nexus/{contract.rsplit('/', 1)[0]}/nexus_descriptors.binpb" in names, contract
    for plugin in ("auth", "orders", "inventory"):
        assert f"nexus_grpc/bundled/{plugin}/manifest.toml" in names, plugin
        assert f"nexus_grpc/bundled/{plugin}/__init__.py" in names, plugin
    assert "nexus/orders/v1/orders.proto" in names
    assert "nexus_grpc/scaffold/templates/plugin/pyproject.toml.tmpl" in names
    # Nothing outside the three packages: no tests, scripts or repository files.
    assert {name.split("/", 1)[0] for name in names if "/" in name} <= {
        "nexus",
        "nexus_grpc",
        *(name.split("/", 1)[0] for name in names if ".dist-info/" in name),
    }


@pytest.fixture(scope="module")
def venv(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its author extra."""
    _, wheel = dist
    venv = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", venv, cwd=venv.parent, env=clean_env(venv))
    python = venv / "bin" / "python"
    run(
        python,
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


@pytest.fixture
def grpcurl() -> str:
    """grpcurl of the dev environment: a client nexus did not write."""
    return require_tool("grpcurl", BIN / "grpcurl")


def test_a_plugin_is_built_tested_linted_and_served_from_the_installed_package(
    venv: Path, tmp_path: Path, grpcurl: str
) -> None:
    env = clean_env(venv)
    nexus = venv / "bin" / "nexus"
    workspace = tmp_path / "work"
    workspace.mkdir()

    located = run(
        venv / "bin" / "python",
        "-c",
        "import nexus_grpc; print(nexus_grpc.__file__)",
        cwd=workspace,
        env=env,
    )
    assert Path(located.stdout.strip()).is_relative_to(venv), located.stdout
    assert run(nexus, "--version", cwd=workspace, env=env).stdout.strip() == "nexus 0.1.0"

    run(nexus, "new", "plugin", "notes", cwd=workspace, env=env)
    project = workspace / "notes"
    shutil.rmtree(project / "generated")
    run(nexus, "gen", cwd=project, env=env)
    assert (project / "generated" / "notes" / "v1" / "notes_pb2.py").is_file()
    tested = run(
        venv / "bin" / "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=project,
        env=env,
    )
    assert " passed" in tested.stdout and "failed" not in tested.stdout, tested.stdout
    linted = run(nexus, "lint", cwd=project, env=env)
    assert "nexus lint: OK (buf 1.75.0: policies, lint, format on proto)" in linted.stdout
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "-e", ".", cwd=project, env=env)

    served_from = tmp_path / "serve"
    served_from.mkdir()
    serve = start(nexus, served_from, env)
    try:
        listed = run(grpcurl, "-plaintext", serve.address, "list", cwd=served_from, env=env)
        assert "notes.v1.NotesService" in listed.stdout.split()
        created = run(
            grpcurl,
            "-plaintext",
            "-H",
            serve.bearer(subject="ada"),
            "-d",
            '{"item": {"title": "First", "body": "hello"}}',
            serve.address,
            "notes.v1.NotesService/CreateItem",
            cwd=served_from,
            env=env,
        )
        item = json.loads(created.stdout)
        assert item["title"] == "First" and item["author"] == "ada"

        base = f"http://{serve.http_address}"
        fetched = httpx.get(f"{base}/v1/notes/items/{item['id']}", timeout=10)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["title"] == "First"
        listed_rest = httpx.get(f"{base}/v1/notes/items", timeout=10)
        assert [i["id"] for i in listed_rest.json()["items"]] == [item["id"]]
        document = httpx.get(f"{base}/openapi.json", timeout=10).json()
        # Descriptions come from the descriptor sets beside the modules: the plugin's
        # in its project (an editable install), the host's own in the venv's nexus package.
        assert document["paths"]["/v1/notes/items/{id}"]["get"]["description"]
        tags = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
        assert tags["nexus.admin.v1.AdminService"].startswith("Inspects and operates")
    finally:
        assert serve.stop() == 0, serve.logs


def start(nexus: Path, cwd: Path, env: dict[str, str]) -> ServeProcess:
    """``nexus serve`` on its embedded defaults, but free ports and JSON logs."""
    process = subprocess.Popen(
        [str(nexus), "serve", "--grpc-address", "127.0.0.1:0"],
        cwd=cwd,
        env={**env, "NEXUS_HTTP__ADDRESS": "127.0.0.1:0", "NEXUS_LOG__FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = ServeProcess(process, data_dir=cwd / ".nexus")

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
    serve.http_address = ready["http_address"]
    return serve
