"""Every ``NEXUS_*`` variable nexus reads is a config key or a listed non-config one.

An unknown ``NEXUS_*`` variable stops every config-reading command, so one that the
code reads for another purpose (the CLI's TLS options, the token) and forgets to list
in :data:`NOT_CONFIG` would make ``nexus serve`` exit as soon as a user exports it.
"""

import ast
import re
from pathlib import Path

import pytest

from nexus_grpc.config import ENV_NESTING, ENV_PREFIX, Config, load_config
from nexus_grpc.config_env import NOT_CONFIG, check_env_names

_ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"NEXUS_[A-Z0-9_]+")


def _variables_in_code() -> dict[str, str]:
    """Each whole string literal shaped like a NEXUS_ variable in nexus_grpc/ and
    plugins/ (how the code names one it reads: ``os.environ.get("NEXUS_X")``, or a
    constant later passed to ``environ[...]``), with where it was found."""
    found: dict[str, str] = {}
    for folder in ("nexus_grpc", "plugins"):
        for path in sorted((_ROOT / folder).rglob("*.py")):
            if "generated" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and _NAME.fullmatch(node.value)
                ):
                    found.setdefault(node.value, f"{path.relative_to(_ROOT)}:{node.lineno}")
    return found


def test_the_scan_sees_the_variables_the_cli_reads() -> None:
    # Guards the scan itself: these are read in nexus_grpc/cli/.
    assert {"NEXUS_CONFIG", "NEXUS_TOKEN", "NEXUS_CACERT", "NEXUS_TLS"} <= set(_variables_in_code())


def test_every_variable_read_is_a_config_key_or_listed() -> None:
    found = _variables_in_code()
    problems = check_env_names(found, Config, prefix=ENV_PREFIX, nesting=ENV_NESTING)
    assert problems == [], [
        f"{where}: {name} is neither a config key nor in config_env.NOT_CONFIG"
        for name, where in found.items()
        if any(name in problem for problem in problems)
    ]


@pytest.mark.parametrize("name", sorted(NOT_CONFIG))
def test_each_listed_variable_leaves_configuration_alone(name: str) -> None:
    assert load_config(environ={name: "x"}) == load_config(environ={})
