"""Writing a plugin project from the plain-text templates in ``templates/plugin/``.

Templates hold ``{{key}}`` placeholders (the keys of :func:`template_values`) and end in
``.tmpl`` so that no tool of this repository reads them as code. Their paths in the new
project are templates too (see :data:`FILES`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path

from nexus_grpc.scaffold.names import PluginNames, ScaffoldError

__all__ = ["FILES", "create_plugin", "substitute", "template_values"]

#: Template (in ``templates/plugin/``) → its path in the project.
FILES: tuple[tuple[str, str], ...] = (
    ("pyproject.toml.tmpl", "pyproject.toml"),
    ("README.md.tmpl", "README.md"),
    ("gitignore.tmpl", ".gitignore"),
    ("buf.yaml.tmpl", "buf.yaml"),
    ("contract.proto.tmpl", "proto/{{proto_dir}}/{{name}}.proto"),
    ("events.proto.tmpl", "proto/{{proto_dir}}/events.proto"),
    ("manifest.toml.tmpl", "{{package}}/manifest.toml"),
    ("plugin_init.py.tmpl", "{{package}}/__init__.py"),
    ("service.py.tmpl", "{{package}}/service.py"),
    ("test_plugin.py.tmpl", "tests/test_{{name}}.py"),
)

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def template_values(names: PluginNames) -> dict[str, str]:
    """The values of the templates' placeholders for the plugin ``names``."""
    return {
        "name": names.name,
        "package": names.package,
        "distribution": names.distribution,
        "proto_package": names.proto_package,
        "proto_dir": names.proto_dir,
        "proto_root": names.proto_root,
        "service": names.service,
        "full_service": names.full_service,
        "nexus_version": _nexus_version(),
    }


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``{{key}}`` replaced; KeyError names an unknown key."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(value, text)


def create_plugin(names: PluginNames, target: Path, *, force: bool = False) -> list[Path]:
    """Write the project of plugin ``names`` into ``target``; return the files written.

    ``target`` must not exist or be an empty folder; with ``force`` a non-empty folder is
    accepted and the scaffold's files in it are overwritten (other files stay).
    """
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target} exists and is not a folder")
    if target.is_dir() and not force:
        present = sorted(p.name for p in target.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise ScaffoldError(
                f"{target} is not empty ({shown}); choose a new folder with --dir, or pass "
                "--force to write the plugin's files into it anyway"
            )
    values = template_values(names)
    templates = importlib.resources.files("nexus_grpc.scaffold") / "templates" / "plugin"
    written = []
    for template, destination in FILES:
        path = target / substitute(destination, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(substitute((templates / template).read_text("utf-8"), values), "utf-8")
        written.append(path)
    return written


def _nexus_version() -> str:
    try:
        return importlib.metadata.version("nexus-grpc")
    except importlib.metadata.PackageNotFoundError:  # running from a checkout, not installed
        from nexus_grpc import __version__

        return __version__
