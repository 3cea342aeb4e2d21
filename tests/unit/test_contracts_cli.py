"""`nexus gen` and `nexus lint` on a plugin project of their own, from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_grpc.cli import main
from nexus_grpc.codegen import DESCRIPTOR_SET_NAME
from nexus_grpc.lint import BufError, find_buf, read_rules
from nexus_grpc.lint.workspace import DEFAULT_RULES

CONTRACT = """\
syntax = "proto3";

package acme.v1;

import "google/api/annotations.proto";
import "nexus/options/v1/options.proto";

// Widgets on shelves.
service WidgetService {
  // One widget.
  rpc GetWidget(GetWidgetRequest) returns (Widget) {
    option (google.api.http) = {get: "/v1/widgets/{name}"};
    option (nexus.options.v1.policy) = {public: true};
  }
}

message GetWidgetRequest {
  string name = 1;
}

// A widget.
message Widget {
  string name = 1;
  int32 size = 2;
}
"""


@pytest.fixture(scope="module")
def buf() -> str:
    """buf from the buf-bin package; missing fails under CI=true, else skips."""
    try:
        return find_buf()
    except BufError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plugin project (pyproject.toml next to proto/) as the current folder."""
    root = tmp_path / "acme"
    (root / "proto" / "acme" / "v1").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "acme"\nversion = "1"\n')
    (root / "proto" / "acme" / "v1" / "acme.proto").write_text(CONTRACT)
    monkeypatch.chdir(root)
    monkeypatch.delenv("NEXUS_CONFIG", raising=False)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_version_names_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == "nexus 0.1.0"


def test_gen_finds_the_project_from_a_sub_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project / "proto" / "acme")
    assert main(["gen"]) == 0
    out = project / "generated" / "acme" / "v1"
    assert (out / "acme_pb2.py").is_file() and (out / "acme_pb2_grpc.py").is_file()
    # The contract ships beside its stubs, with the descriptions OpenAPI reads.
    assert (out / "acme.proto").read_text() == CONTRACT
    assert (out / DESCRIPTOR_SET_NAME).is_file()
    assert main(["gen", "--check"]) == 0
    assert "wrote" in capsys.readouterr().out


def test_gen_outside_a_project_says_what_it_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["gen"]) == 2
    error = capsys.readouterr().err
    assert (
        "no project here" in error and "proto/ folder next to a pyproject.toml or buf.yaml" in error
    )


def test_lint_passes_a_clean_project_and_writes_nothing_into_it(
    project: Path, buf: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files(project)
    assert main(["lint"]) == 0, capsys.readouterr()
    captured = capsys.readouterr()
    assert "nexus lint: OK (buf 1.75.0: policies, lint, format on proto)" in captured.out
    assert "buf breaking skipped: not a git checkout" in captured.err
    assert files(project) == before


def test_lint_names_missing_policies_style_and_format_problems(
    project: Path, buf: str, capsys: pytest.CaptureFixture[str]
) -> None:
    contract = project / "proto" / "acme" / "v1" / "acme.proto"
    spare = "service Spare {\n  rpc Take(GetWidgetRequest) returns (Widget);\n}\n"
    contract.write_text(CONTRACT + spare + "message  bad_name {}\n")
    assert main(["lint"]) == 1
    captured = capsys.readouterr()
    assert "/acme.v1.Spare/Take: no access policy" in captured.out
    # buf's findings name the project's own file, not the temporary workspace's copy.
    line = (CONTRACT + spare).count("\n") + 1
    assert (
        f'proto/acme/v1/acme.proto:{line}:10:Message name "bad_name" should be PascalCase'
        in captured.out
    )
    assert "+message bad_name {}" in captured.out
    assert "FAILED: policies, lint, format" in captured.err


def test_lint_finds_breaking_changes_against_git_head_or_a_folder(
    project: Path, buf: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    git = shutil.which("git")
    assert git is not None, "git is needed"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "first"]):
        subprocess.run([git, *command], cwd=project, check=True, env=env)
    assert main(["lint"]) == 0
    assert "breaking against HEAD" in capsys.readouterr().out
    old = tmp_path / "old"
    shutil.copytree(project / "proto", old)
    contract = project / "proto" / "acme" / "v1" / "acme.proto"
    contract.write_text(CONTRACT.replace("int32 size = 2;", "int64 size = 2;"))
    for against in ([], ["--against", str(old)]):
        assert main(["lint", *against]) == 1
        captured = capsys.readouterr()
        assert (
            'proto/acme/v1/acme.proto:24:3:Field "2" with name "size" on message "Widget" changed type from "int32" to "int64".'
            in captured.out
        )
        assert "FAILED: breaking" in captured.err
    assert main(["lint", "--against", "no-such-ref"]) == 2
    assert "--against no-such-ref: neither a folder nor a git commit" in capsys.readouterr().err


def test_missing_buf_names_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BufError, match=r"pip install 'nexus-grpc\[author\]'"):
        find_buf()


def test_rules_come_from_the_module_of_the_projects_buf_yaml(tmp_path: Path) -> None:
    (tmp_path / "proto").mkdir()
    assert read_rules(tmp_path / "proto") == DEFAULT_RULES
    (tmp_path / "buf.yaml").write_text(
        "version: v2\nlint:\n  use: [MINIMAL]\nmodules:\n  - path: other\n"
        "  - path: proto\n    lint:\n      use: [BASIC]\n"
    )
    rules = read_rules(tmp_path / "proto")
    assert rules.lint == {"use": ["BASIC"]} and rules.breaking == {}
    assert rules.source == str(tmp_path / "buf.yaml")


def test_lint_reports_plugins_that_fail_to_load(
    project: Path, buf: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "plugins" / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.toml").write_text(
        'name = "broken"\nversion = "1"\ncategory = "business"\ndescription = "d"\n'
    )
    (broken / "__init__.py").write_text("raise RuntimeError('boom')\n")
    assert main(["lint", "--plugin-dir", str(tmp_path / "plugins")]) == 1
    captured = capsys.readouterr()
    assert "plugin 'broken'" in captured.err and "RuntimeError: boom" in captured.err
    assert "FAILED: plugins" in captured.err


def _broken_plugin(folder: Path) -> None:
    """A plugin folder in ``folder`` whose import raises."""
    broken = folder / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.toml").write_text(
        'name = "broken"\nversion = "1"\ncategory = "business"\ndescription = "d"\n'
    )
    (broken / "__init__.py").write_text("raise RuntimeError('boom')\n")


def test_lint_checks_only_the_projects_contracts_unless_a_config_is_named(
    project: Path,
    buf: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A broken plugin where the host would look by default (./plugins): not this
    # project's business while no configuration is named.
    _broken_plugin(project / "plugins")
    _broken_plugin(tmp_path / "elsewhere")
    assert main(["lint"]) == 0, capsys.readouterr()
    captured = capsys.readouterr()
    assert "boom" not in captured.err
    assert "nexus lint: OK" in captured.out
    # Named on the command line or by $NEXUS_CONFIG (as for every command reading the
    # configuration), the configuration's plugins are checked too.
    config = tmp_path / "nexus.toml"
    config.write_text(f'[plugins]\ndirs = ["{tmp_path / "elsewhere"}"]\n')
    assert main(["lint", "-c", str(config)]) == 1
    assert "RuntimeError: boom" in capsys.readouterr().err
    monkeypatch.setenv("NEXUS_CONFIG", str(config))
    assert main(["lint"]) == 1
    captured = capsys.readouterr()
    assert "RuntimeError: boom" in captured.err and "FAILED: plugins" in captured.err


def test_lint_skips_disabled_plugins_even_broken_ones(
    project: Path, buf: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_plugin(tmp_path / "plugins")
    unreadable = tmp_path / "plugins" / "unreadable"
    unreadable.mkdir()
    (unreadable / "manifest.toml").write_text("name = [\n")  # not TOML
    (unreadable / "__init__.py").write_text("")
    config = tmp_path / "nexus.toml"
    config.write_text('[plugins]\ndisabled = ["broken", "unreadable"]\n')
    argv = ["lint", "-c", str(config), "--plugin-dir", str(tmp_path / "plugins")]
    assert main(argv) == 0, capsys.readouterr()
    err = capsys.readouterr().err
    assert "boom" not in err and "unreadable" not in err
