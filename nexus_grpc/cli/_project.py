"""Finding the project a contracts command works on, from the current folder up."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ProjectError", "find_project_root", "project_folders"]

#: Files that mark a project folder, next to its ``proto/`` folder.
MARKERS = ("pyproject.toml", "buf.yaml")


class ProjectError(Exception):
    """No project here; the message says what was looked for."""


def find_project_root(start: Path) -> Path | None:
    """The nearest folder from ``start`` up holding a ``proto/`` folder next to a
    ``pyproject.toml`` or ``buf.yaml``; None when there is none."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "proto").is_dir() and any((folder / m).is_file() for m in MARKERS):
            return folder
    return None


def project_folders(proto: str | None, out: str | None, start: Path) -> tuple[Path, Path]:
    """The contracts folder and the generated-code folder: as given, else
    ``<root>/proto`` and ``<root>/generated`` of the project around ``start``."""
    if proto is not None and out is not None:
        return Path(proto), Path(out)
    root = find_project_root(start)
    if root is None:
        raise ProjectError(
            f"no project here: no folder from {start} up holds a proto/ folder next to "
            "a pyproject.toml or buf.yaml; run it inside your project or pass --proto "
            "(and --out)"
        )
    return (
        Path(proto) if proto is not None else root / "proto",
        Path(out) if out is not None else root / "generated",
    )
