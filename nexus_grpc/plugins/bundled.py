"""The plugins that ship inside the nexus-grpc package (auth, orders, inventory).

They are installed as the package ``nexus_grpc.bundled`` (the repository's
``plugins/`` folder) and run only when ``plugins.bundled`` names them: a host serves
what its operator chose, not whatever came with the package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from nexus_grpc.plugins.manifest import MANIFEST_FILE

__all__ = [
    "ALL",
    "BUNDLED_PACKAGE",
    "bundled_folder",
    "bundled_names",
    "check_selection",
    "is_bundled",
]

BUNDLED_PACKAGE = "nexus_grpc.bundled"
#: ``plugins.bundled = ["*"]``: every bundled plugin.
ALL = "*"


def bundled_folder() -> Path | None:
    """The folder holding the bundled plugins; None if this install has none."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def is_bundled(manifest_path: str | Path) -> bool:
    """Whether the plugin whose manifest is at ``manifest_path`` is one of the bundled ones
    (its folder is a direct sub-folder of :func:`bundled_folder`)."""
    folder = bundled_folder()
    if folder is None:
        return False
    return Path(manifest_path).resolve().parent.parent == folder.resolve()


def bundled_names() -> tuple[str, ...]:
    """Names of the bundled plugins (their folder names, equal to their manifest names)."""
    folder = bundled_folder()
    if folder is None:
        return ()
    return tuple(
        sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file())
    )


def check_selection(selection: Iterable[str]) -> str | None:
    """Why ``selection`` (a ``plugins.bundled`` value) is wrong, or None when it is fine."""
    chosen = list(selection)
    if ALL in chosen and len(chosen) > 1:
        return f'"{ALL}" selects every bundled plugin; list names or "{ALL}" alone'
    known = bundled_names()
    unknown = [name for name in chosen if name != ALL and name not in known]
    if unknown:
        available = ", ".join(known) or "none in this installation"
        return f"{unknown[0]!r} is not a bundled plugin (bundled: {available})"
    return None
