"""A throw-away buf workspace for one project's contracts.

buf resolves imports only from the modules of its workspace, and a plugin project has
no copy of what its contracts import (``nexus/options/v1/options.proto``,
``google/api/annotations.proto``). So the project's contracts are copied into a
temporary workspace next to a second, unlinted module holding those imports, taken
from the installed packages. Nothing is written into the project.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_grpc.codegen import include_paths, proto_files

__all__ = [
    "DEFAULT_RULES",
    "LintRules",
    "WorkspaceError",
    "build_workspace",
    "copy_imports",
    "read_rules",
]

#: Folder names inside a workspace: the project's contracts, and what they import.
PROTO_MODULE = "proto"
DEPS_MODULE = "deps"

_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"', re.MULTILINE)


class WorkspaceError(RuntimeError):
    """The workspace cannot be built (an import found nowhere, an unreadable buf.yaml)."""


@dataclass(frozen=True)
class LintRules:
    """The ``lint`` and ``breaking`` sections of a buf module, and where they came from."""

    lint: dict[str, Any] = field(default_factory=dict)
    breaking: dict[str, Any] = field(default_factory=dict)
    source: str = "nexus defaults"


#: Used when the project has no buf.yaml: buf's STANDARD rules less the two that forbid
#: the Google AIP style nexus contracts use (Get/Create/Update return the resource
#: itself), and FILE-level breaking-change detection.
DEFAULT_RULES = LintRules(
    lint={
        "use": ["STANDARD"],
        "except": ["RPC_RESPONSE_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE"],
    },
    breaking={"use": ["FILE"]},
)


def read_rules(proto_root: Path) -> LintRules:
    """The rules of the buf.yaml governing ``proto_root`` (in it or in its parent).

    A v2 buf.yaml gives the rules of the module whose ``path`` is ``proto_root`` (its
    own sections, else the file's top-level ones); a v1 buf.yaml its top-level ones.
    Without a buf.yaml: :data:`DEFAULT_RULES`.
    """
    proto_root = proto_root.resolve()
    for config_file in (proto_root / "buf.yaml", proto_root.parent / "buf.yaml"):
        if config_file.is_file():
            return _rules_from(config_file, proto_root)
    return DEFAULT_RULES


def _rules_from(config_file: Path, proto_root: Path) -> LintRules:
    try:
        import yaml
    except ImportError:
        raise WorkspaceError(
            f"reading {config_file} needs PyYAML: pip install 'nexus-grpc[author]'"
        ) from None
    try:
        document = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise WorkspaceError(f"{config_file}: cannot read it: {error}") from None
    if not isinstance(document, dict):
        raise WorkspaceError(f"{config_file}: expected a mapping at the top level")
    lint, breaking = document.get("lint"), document.get("breaking")
    for module in document.get("modules") or []:
        if not isinstance(module, dict):
            continue
        path = (config_file.parent / str(module.get("path", "."))).resolve()
        if path == proto_root:
            lint = module.get("lint", lint)
            breaking = module.get("breaking", breaking)
    return LintRules(lint=dict(lint or {}), breaking=dict(breaking or {}), source=str(config_file))


def build_workspace(proto_root: Path, into: Path, rules: LintRules) -> None:
    """Write a buf workspace into the empty folder ``into``: ``proto_root``'s contracts,
    the files they import from installed packages, and a buf.yaml with ``rules``."""
    proto_root = proto_root.resolve()
    ours = into / PROTO_MODULE
    for path in proto_files(proto_root):
        target = ours / path.relative_to(proto_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    deps = into / DEPS_MODULE
    deps.mkdir(parents=True, exist_ok=True)
    copy_imports(ours, deps)
    ignore = {"ignore": [DEPS_MODULE]}
    config = {
        "version": "v2",
        "modules": [
            {"path": PROTO_MODULE, "lint": rules.lint, "breaking": rules.breaking},
            # Third-party files the contracts import: not ours to lint or keep stable.
            {"path": DEPS_MODULE, "lint": ignore, "breaking": ignore},
        ],
    }
    # JSON is YAML, and needs no YAML writer.
    (into / "buf.yaml").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def copy_imports(ours: Path, deps: Path) -> None:
    """Copy into ``deps`` every file the contracts under ``ours`` import, transitively,
    that is not among them, from the installed packages (google/protobuf excepted: buf
    has those built in). WorkspaceError names an import found nowhere."""
    roots = include_paths()
    queue = [name for path in sorted(ours.rglob("*.proto")) for name in _imports(path)]
    seen: set[str] = set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        # The well-known types are built into buf; the project's own files are there.
        if name.startswith("google/protobuf/") or (ours / name).is_file():
            continue
        source = next((root / name for root in roots if (root / name).is_file()), None)
        if source is None:
            places = ", ".join(str(root) for root in roots)
            raise WorkspaceError(
                f"imported file {name} is neither in the project's contracts nor in {places}"
            )
        target = deps / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        queue.extend(_imports(source))


def _imports(path: Path) -> list[str]:
    return _IMPORT.findall(path.read_text(encoding="utf-8"))
