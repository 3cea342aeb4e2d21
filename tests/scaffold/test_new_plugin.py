"""`nexus new plugin`: the project it writes passes its own tests, ruff and buf untouched;
bad names and occupied folders are refused with a clear message."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from nexus_grpc.cli import main
from nexus_grpc.scaffold import ScaffoldError, plugin_names
from nexus_grpc.scaffold.render import FILES, substitute, template_values

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` in ``cwd`` with no PYTHONPATH: the project must configure its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEXUS_CONFIG")}
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def require(tool: Path) -> Path:
    """``tool``; fails under CI=true when it is missing, skips elsewhere."""
    if not tool.is_file():
        message = f"{tool} is not installed: run scripts/bootstrap --dev"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return tool


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plugin project scaffolded by the real command, its stubs made by `nexus gen`."""
    root = tmp_path_factory.mktemp("scaffold")
    created = run(BIN / "nexus", "new", "plugin", "notes", cwd=root)
    assert created.returncode == 0, created.stderr
    assert "Next steps:" in created.stdout
    folder = root / "notes"
    shutil.rmtree(folder / "generated")  # made again by the command the README names
    generated = run(BIN / "nexus", "gen", cwd=folder)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    return folder


def test_tree(project: Path) -> None:
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    assert {
        "pyproject.toml",
        "README.md",
        ".gitignore",
        "buf.yaml",
        "proto/notes/v1/notes.proto",
        "proto/notes/v1/events.proto",
        "notes_plugin/__init__.py",
        "notes_plugin/manifest.toml",
        "notes_plugin/service.py",
        "tests/test_notes.py",
        "generated/notes/v1/notes_pb2.py",
        "generated/notes/v1/notes_pb2_grpc.py",
        "generated/notes/v1/events_pb2.py",
    } <= files
    for path in project.rglob("*"):
        if path.is_file() and "generated" not in path.parts:
            assert "{{" not in path.read_text(), path
    pyproject = (project / "pyproject.toml").read_text()
    assert '[project.entry-points."nexus.plugins"]\nnotes = "notes_plugin"' in pyproject


def test_project_passes_its_own_tests(project: Path) -> None:
    result = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b6 passed\b", result.stdout), result.stdout


def test_project_with_its_own_protobuf_package_passes_its_tests(tmp_path: Path) -> None:
    folder = tmp_path / "order-notes"
    command = ["new", "plugin", "order_notes", "--package", "acme.order_notes.v2beta1"]
    assert main([*command, "--dir", str(folder)]) == 0
    assert (folder / "proto/acme/order_notes/v2beta1/order_notes.proto").is_file()
    assert (folder / "generated/acme/order_notes/v2beta1/order_notes_pb2.py").is_file()
    manifest = (folder / "order_notes_plugin" / "manifest.toml").read_text()
    assert 'services = ["acme.order_notes.v2beta1.OrderNotesService"]' in manifest
    result = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr


#: Run against the built wheel, unpacked on PYTHONPATH: the host finds the plugin by
#: its entry point alone and serves it.
_SERVE_INSTALLED = """
import asyncio, sys
from notes.v1 import notes_pb2 as pb, notes_pb2_grpc
from nexus_grpc.testing import running_host

async def main():
    async with running_host(
        plugins=["notes"], plugin_dirs=(), entry_points=True, data_dir=sys.argv[1]
    ) as host:
        stub = notes_pb2_grpc.NotesServiceStub(host.channel(host.token()))
        await stub.CreateItem(pb.CreateItemRequest(item=pb.Item(title="installed")))
        page = await stub.ListItems(pb.ListItemsRequest())
        record = host.host.plugins.record("notes")
        print(record.state, record.source, [item.title for item in page.items])

asyncio.run(main())
"""


def test_built_wheel_is_discovered_through_its_entry_point(project: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(project, source)  # building writes build/ and *.egg-info
    built = run(
        sys.executable,
        *("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
        *("-w", tmp_path / "dist", "."),
        cwd=source,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("nexus_plugin_notes-0.1.0-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    assert {"notes_plugin/manifest.toml", "notes/v1/notes_pb2.py"} <= names
    # nexus gen's record of what it wrote stays in the project, outside the packages.
    assert (source / "generated" / ".nexus-gen").is_file()
    assert not any(name.endswith(".nexus-gen") for name in names), names
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    served = subprocess.run(
        [sys.executable, "-c", _SERVE_INSTALLED, str(tmp_path / "data")],
        cwd=empty,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip() == ("SERVING entry point notes = notes_plugin ['installed']"), (
        served.stdout
    )


def test_project_is_clean_under_ruff(project: Path) -> None:
    ruff = require(BIN / "ruff")
    checked = run(ruff, "check", "--no-cache", ".", cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = run(ruff, "format", "--no-cache", "--check", ".", cwd=project)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_contracts_pass_nexus_lint(project: Path) -> None:
    # Policies, then buf lint and format with the project's buf.yaml (no git here, so
    # no breaking check); buf comes from the buf-bin package.
    require(BIN / "buf")
    linted = run(BIN / "nexus", "lint", cwd=project)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "nexus lint: OK (buf 1.75.0: policies, lint, format on proto)" in linted.stdout


def test_the_wheel_ships_every_template() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["nexus_grpc.scaffold"]
    scaffold = REPO / "nexus_grpc" / "scaffold"
    shipped = {path for pattern in package_data for path in scaffold.glob(pattern)}
    assert shipped == set((scaffold / "templates" / "plugin").iterdir())


def test_every_template_placeholder_has_a_value() -> None:
    values = template_values(plugin_names("notes"))
    templates = REPO / "nexus_grpc" / "scaffold" / "templates" / "plugin"
    assert sorted(p.name for p in templates.iterdir()) == sorted(t for t, _ in FILES)
    for template, destination in FILES:
        substitute(destination, values)
        substitute((templates / template).read_text(), values)


@pytest.mark.parametrize(
    ("name", "package", "expected"),
    [
        ("Notes", None, "must be lower-case letters"),
        ("1notes", None, "must be lower-case letters"),
        ("notes\n", None, "must be lower-case letters"),
        ("a" * 64, None, "at most 63 characters"),
        ("my__notes", None, "must not end with _ or hold __"),
        ("notes_", None, "must not end with _ or hold __"),
        ("class", None, "is a Python keyword"),
        ("auth", None, "is the name of a plugin bundled with nexus"),
        ("orders", "acme.orders.v1", "is the name of a plugin bundled with nexus"),
        ("inventory", None, "is the name of a plugin bundled with nexus"),
        ("email", None, "module of Python's standard library; pass --package"),
        ("grpc", None, "belongs to nexus or a library it uses"),
        ("nexus", None, "belongs to nexus or a library it uses"),
        ("notes", "notes", "ending in a version such as v1"),
        ("notes", "Acme.notes.v1", "lower_snake_case parts"),
        ("notes", "acme.import.v1", "holds a Python keyword"),
        ("notes", "notes_plugin.v1", "the plugin's own package"),
    ],
)
def test_bad_names_are_refused(name: str, package: str | None, expected: str) -> None:
    with pytest.raises(ScaffoldError, match=re.escape(expected)):
        plugin_names(name, package)


def test_a_second_plugin_under_an_installed_prefix_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stubs of acme.anotes.v1, installed (the hint of a refused name recommends
    # such a prefix): acme.atasks.v1 joins it, acme.anotes.v1 again is refused.
    (tmp_path / "acme" / "anotes" / "v1").mkdir(parents=True)
    for folder in ("acme/anotes", "acme/anotes/v1"):
        (tmp_path / folder / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugin_names("atasks", "acme.atasks.v1").proto_package == "acme.atasks.v1"
    with pytest.raises(ScaffoldError, match=re.escape("Python package 'acme.anotes', which is a")):
        plugin_names("anotes", "acme.anotes.v1")
    # A module, not a package, cannot hold the stubs.
    (tmp_path / "single.py").write_text("")
    with pytest.raises(ScaffoldError, match="is a module \\(not a package\\) already installed"):
        plugin_names("atasks", "single.atasks.v1")


def test_a_prefix_installed_as_a_regular_package_is_refused(tmp_path: Path) -> None:
    # A regular acme (acme/__init__.py) on the path is all of `acme`: the generated
    # acme/notes/v1 folder beside it could never be imported.
    installed = tmp_path / "site"
    (installed / "acme").mkdir(parents=True)
    (installed / "acme" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("NEXUS_CONFIG", None)
    command = [BIN / "nexus", "new", "plugin", "notes", "--package", "acme.notes.v1"]
    refused = subprocess.run(
        [str(part) for part in [*command, "--dir", tmp_path / "notes"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "is a regular package already installed here" in refused.stderr
    assert str(installed / "acme" / "__init__.py") in refused.stderr
    assert not (tmp_path / "notes").exists()


def test_every_bundled_plugin_name_is_refused() -> None:
    from nexus_grpc.plugins.bundled import bundled_names

    for name in bundled_names():
        with pytest.raises(ScaffoldError, match="bundled with nexus"):
            plugin_names(name, f"acme.{name}.v1")


def test_names_derived() -> None:
    names = plugin_names("order_notes", "acme.order_notes.v2beta1")
    assert names.package == "order_notes_plugin"
    assert names.distribution == "nexus-plugin-order-notes"
    assert names.full_service == "acme.order_notes.v2beta1.OrderNotesService"
    assert names.proto_dir == "acme/order_notes/v2beta1"
    assert names.proto_root == "acme"


def test_occupied_folder_is_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "project"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    assert main(["new", "plugin", "notes", "--dir", str(target), "--no-gen"]) == 2
    assert "is not empty (mine.txt); choose a new folder with --dir" in capsys.readouterr().err
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"]

    assert main(["new", "plugin", "notes", "--dir", str(target), "--no-gen", "--force"]) == 0
    out = capsys.readouterr().out
    assert "nexus gen " in out  # --no-gen: generating is a next step
    assert (target / "mine.txt").read_text() == "keep me"
    assert (target / "notes_plugin" / "manifest.toml").is_file()
    assert not (target / "generated").exists()

    (target / "file").write_text("")
    assert main(["new", "plugin", "notes", "--dir", str(target / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_gitignore_keeps_local_data_and_builds_out_of_git(tmp_path: Path) -> None:
    # The guide runs `nexus serve` and `nexus users create` in the project folder: the
    # data folder they write there holds the JWT signing key and must never be committed.
    target = tmp_path / "notes"
    assert main(["new", "plugin", "notes", "--dir", str(target), "--no-gen"]) == 0
    assert run("git", "init", "-q", cwd=target).returncode == 0
    ignored = [
        ".nexus/jwt-hs256.key",
        ".nexus/nexus.db",
        "build/lib/notes_plugin/service.py",
        "dist/nexus_plugin_notes-0.1.0-py3-none-any.whl",
        "nexus_plugin_notes.egg-info/PKG-INFO",
        ".venv/bin/python",
    ]
    checked = run("git", "check-ignore", "--no-index", *ignored, cwd=target)
    assert checked.stdout.split() == ignored, checked.stdout + checked.stderr
    kept = run("git", "check-ignore", "--no-index", "notes_plugin/service.py", cwd=target)
    assert kept.returncode == 1, kept.stdout


def test_bad_name_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["new", "plugin", "Notes", "--dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nexus new plugin: plugin name 'Notes' must be lower-case")
    assert not (tmp_path / "x").exists()
