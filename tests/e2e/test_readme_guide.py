"""The README's "Write your first plugin" runs verbatim, as a reader would run it.

In an empty folder, with the fresh venv of the built wheel and its ``author`` extra
(``pip install 'nexus-grpc[author]'``, the session fixture ``installed_venv``) first on
PATH and nothing of this checkout in sight: the `plugin-guide` block (new plugin, its
tests, lint, install), then `nexus serve` as the `plugin-guide-serve` block says (on
free ports), then the `plugin-guide-calls` block from another shell in the same folder.
Slow (a venv install): ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ServeProcess, clean_env, require_tool, watch
from tests.e2e.test_rest_clients import readme_block

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def _environment(venv: Path, tmp_path: Path) -> dict[str, str]:
    """A user's shell with ``venv`` active and a private config home (no saved token)."""
    return {**clean_env(venv), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _run(commands: list[str], cwd: Path, env: dict[str, str], out: Path) -> list[tuple[int, str]]:
    """Each command in one bash session; its exit status and output (stdout + stderr)."""
    script = [
        # The closing brace on a line of its own: a command may end in a # comment.
        f"{{ {command}\n}} >{out}/out{i} 2>&1; echo $? >{out}/rc{i}"
        for i, command in enumerate(commands)
    ]
    subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, timeout=600, check=True)
    return [
        (int((out / f"rc{i}").read_text()), (out / f"out{i}").read_text())
        for i in range(len(commands))
    ]


def _serve(command: str, cwd: Path, env: dict[str, str]) -> ServeProcess:
    ports = " --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0"
    process = subprocess.Popen(
        ["bash", "-c", command + ports],
        cwd=cwd,
        env={**env, "NEXUS_LOG__FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return watch(process, cwd / ".nexus")


def test_readme_plugin_guide_runs_verbatim(installed_venv: Path, tmp_path: Path) -> None:
    require_tool("curl", "curl")
    guide = readme_block("plugin-guide")
    (serve_command,) = readme_block("plugin-guide-serve")
    calls = readme_block("plugin-guide-calls")
    assert guide[0].startswith("nexus new plugin notes") and guide[1] == "cd notes"
    env = _environment(installed_venv, tmp_path)
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)

    ran = _run(guide, work, env, work / "logs")
    failed = [
        (command, output[-3000:])
        for command, (code, output) in zip(guide, ran, strict=True)
        if code
    ]
    assert failed == []
    project = work / "notes"
    assert (project / "generated").is_dir()

    serve = _serve(serve_command, project, env)
    try:
        commands = [
            c.replace("127.0.0.1:50051", serve.address).replace(
                "127.0.0.1:8080", serve.http_address
            )
            for c in calls
        ]
        (work / "calls").mkdir()
        results = _run(commands, project, env, work / "calls")
    finally:
        serve.stop()
    failed = [(c, out[-2000:]) for c, (code, out) in zip(calls, results, strict=True) if code]
    assert failed == []
    _, _, _, described, created, listed, anonymous = (out for _, out in results)
    assert "rpc CreateItem" in described
    item = json.loads(created)
    assert item["title"] == "first" and item["author"] == "admin"
    assert [i["title"] for i in json.loads(listed)["items"]] == ["first"]
    assert anonymous.strip() == "401"
