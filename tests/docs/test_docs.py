"""The documentation builds without a warning, and every code sample in it runs.

How each kind of block runs is described in :mod:`tests.docs.samples`. The sample
project (the ``file:`` blocks of every page: contracts, manifests, plugin code) is
written into a temporary folder once, its contracts compiled as ``nexus gen`` compiles
them; each page's python blocks then run as one pytest module in that folder, in a
process of its own (the project's generated stubs must not enter this one's imports).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_grpc.codegen import generate
from nexus_grpc.config import load_config
from nexus_grpc.plugins.manifest import parse_manifest
from tests.docs.samples import (
    DOCS,
    LANGUAGES,
    Sample,
    all_samples,
    module_name,
    page_module,
    pages,
    project_files,
    samples_of,
)
from tests.e2e.conftest import REPO, ServeProcess, require_tool, start_serve
from tests.e2e.test_rest_clients import run_in_one_shell

BIN = Path(sys.executable).parent

_PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
timeout = 120
"""

SAMPLES = all_samples()
PAGES_WITH_PYTHON = [
    page.relative_to(DOCS).as_posix() for page in pages() if page_module(samples_of(page))
]
PAGES_WITH_SHELL = sorted(
    {s.page for s in SAMPLES if s.language == "sh" and not s.file and not s.skip}
)


def _id(sample: Sample) -> str:
    return sample.where


def test_docs_build_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or reference is an error."""
    mkdocs = require_tool("mkdocs", BIN / "mkdocs")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "reference" / "plugins.html").is_file()


def test_every_sample_says_what_it_is() -> None:
    """Each block has a language the tests know, and each skipped one says why."""
    assert SAMPLES, "no code samples found"
    unknown = [s.where for s in SAMPLES if s.language not in LANGUAGES]
    assert unknown == [], f"blocks without a known language: {unknown}"
    # Markers that did not parse as `file:`/`skip:` would leave a block silently unmarked.
    for page in pages():
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.strip().startswith("<!--") and ("file" in line or "skip" in line):
                assert line.strip().startswith(("<!-- file: ", "<!-- skip: ")), (
                    f"{page.name}:{number}: malformed sample marker {line!r}"
                )
    assert [s.where for s in SAMPLES if s.skip] == [], "no sample is skipped"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample project: the ``file:`` blocks written out, its contracts compiled."""
    root = tmp_path_factory.mktemp("docs-project")
    for path, text in project_files(SAMPLES).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    generate(root / "proto", root / "generated")
    (root / "pytest.ini").write_text(_PYTEST_INI)
    return root


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if s.language == "proto" and not s.file], ids=_id
)
def test_proto_sample_compiles(sample: Sample, tmp_path: Path) -> None:
    (tmp_path / "proto" / "sample.proto").parent.mkdir(parents=True)
    (tmp_path / "proto" / "sample.proto").write_text(sample.code)
    written = generate(tmp_path / "proto", tmp_path / "out").written
    assert any(path.name == "sample_pb2.py" for path in written)


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if s.language == "toml" and not s.file], ids=_id
)
def test_config_sample_loads(sample: Sample, tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(sample.code)
    load_config(path, environ={})


def test_sample_project_manifests_parse(project: Path) -> None:
    manifests = sorted(project.glob("plugins/*/manifest.toml"))
    assert manifests
    for path in manifests:
        assert parse_manifest(path).name == path.parent.name


def _environment(project: Path) -> dict[str, str]:
    path = [str(project / "generated"), str(project), str(REPO)]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON)
def test_python_samples_of_page_run(page: str, project: Path) -> None:
    """The page's python blocks, as one pytest module in the sample project."""
    module = project / module_name(page)
    module.write_text(page_module(samples_of(DOCS / page)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name],
        cwd=project,
        env=_environment(project),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


@pytest.fixture
def project_serve(project: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    """`nexus serve` with the sample project's plugins."""
    running = start_serve(tmp_path, project / "generated", [project / "plugins"])
    try:
        yield running
    finally:
        running.close()


@pytest.mark.e2e
@pytest.mark.parametrize("page", PAGES_WITH_SHELL)
def test_shell_samples_of_page_run(page: str, project_serve: ServeProcess, tmp_path: Path) -> None:
    """The page's sh blocks, in one shell against a real host, each command succeeding."""
    require_tool("grpcurl", BIN / "grpcurl")
    require_tool("curl", "curl")
    commands = [
        command
        for sample in samples_of(DOCS / page)
        if sample.language == "sh" and not sample.file and not sample.skip
        for command in sample.code.replace("\\\n", " ").splitlines()
        if command.strip() and not command.lstrip().startswith("#")
    ]
    ran = run_in_one_shell(commands, project_serve, tmp_path)
    failed = [(r.command, r.code, r.out[-500:], r.err[-500:]) for r in ran if r.code != 0]
    assert failed == []
    assert all(r.out.strip() for r in ran), [(r.command, r.out) for r in ran]
