"""The contracts pass buf, and the README's example plugin runs in a real host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, REPO, require_tool, start_serve

pytestmark = pytest.mark.e2e


def test_buf_lint_format_and_breaking_pass() -> None:
    require_tool("buf (the buf-bin package)", BIN / "buf")
    result = subprocess.run(
        [str(REPO / "scripts" / "lint")], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_guide_plugin_loads_and_answers(
    tmp_path: Path, probe_stubs: Path, grpcurl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = REPO / "examples" / "greeter"
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(example / "generated"), os.environ.get("PYTHONPATH", "")]),
    )
    serve = start_serve(
        tmp_path, probe_stubs, [example / "plugins"], NEXUS_PLUGIN__GREETER__GREETING="Hi"
    )
    try:
        result = subprocess.run(
            [
                grpcurl,
                "-plaintext",
                "-d",
                '{"name": "Ada"}',
                serve.address,
                "acme.greeter.v1.GreeterService/SayHello",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"message": "Hi, Ada!"}
        serve.wait_for_log(
            lambda e: (
                e.get("message") == "greeter ready" and e.get("logger") == "nexus.plugins.greeter"
            )
        )
    finally:
        serve.stop()
