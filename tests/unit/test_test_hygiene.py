"""The tests own their ports: none binds or dials a fixed well-known one.

A test that starts a host from ``Config()`` without naming its addresses binds the
defaults (gRPC 127.0.0.1:50051, HTTP 127.0.0.1:8080) and fails whenever anything else
listens there; a test that dials 6379, 5432 or 27017 talks to whatever shared server
runs on the machine. These checks read the test sources, so such a test is caught
before it flakes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

#: Well-known ports of the host and of the servers the machines run.
_FIXED = re.compile(r"(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(?:8080|50051|6379|5432|27017)\b")

#: Where a fixed address is the subject itself: the config defaults, and the README's
#: commands rewritten to a test server's addresses before they run.
_ALLOWED = {
    Path("unit/test_config.py"),
    Path("unit/test_test_hygiene.py"),
    Path("e2e/test_rest_clients.py"),
    Path("e2e/test_readme_guide.py"),
    Path("e2e/test_hot_swap.py"),
}


def _sources() -> list[tuple[Path, ast.Module]]:
    return [
        (path.relative_to(TESTS), ast.parse(path.read_text(), str(path)))
        for path in sorted(TESTS.rglob("*.py"))
        if "node_modules" not in path.parts
    ]


def test_no_test_names_a_fixed_well_known_address() -> None:
    found = []
    for path, tree in _sources():
        if path in _ALLOWED:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _FIXED.search(node.value)
            ):
                found.append(f"{path}:{node.lineno}: {node.value!r}")
    assert found == []


def test_every_host_config_built_in_a_test_names_both_addresses() -> None:
    # Config() defaults to the production ports; running_host() sets port 0 itself.
    found = []
    for path, tree in _sources():
        if path in _ALLOWED:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Config"
                and not any(keyword.arg is None for keyword in node.keywords)  # Config(**x)
            ):
                named = {keyword.arg for keyword in node.keywords}
                if not {"server", "http"} <= named:
                    found.append(f"{path}:{node.lineno}: Config(...) without server= and http=")
    assert found == []
