"""Finding plugins: sub-folders of the plugin folders, the bundled plugins chosen,
and installed distributions.

A folder plugin is a package folder with a ``manifest.toml``; a bundled plugin is one
of those inside the installed nexus-grpc package. An installed plugin declares an
entry point in the ``nexus.plugins`` group whose value is its package, with the
manifest as package data. Nothing is imported here: discovery reads manifests only, so
a plugin that fails to import is still known by name. One folder found twice (the
repository's ``plugins/`` is also the bundled set) is one plugin.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from nexus_grpc.plugins.bundled import ALL, bundled_folder
from nexus_grpc.plugins.manifest import MANIFEST_FILE, Manifest, ManifestError, parse_manifest

__all__ = ["ENTRY_POINT_GROUP", "Candidate", "discover"]

ENTRY_POINT_GROUP = "nexus.plugins"

_log = logging.getLogger("nexus.plugins")


@dataclass(frozen=True)
class Candidate:
    """A plugin found on disk or installed, with its manifest or why it has none."""

    #: The manifest name, or the folder / entry-point name when the manifest is broken.
    name: str
    #: Human-readable origin: "folder plugins/orders" or "entry point acme = acme_pkg".
    source: str
    #: Module name to import: the installed package, or a folder plugin's package path.
    module: str
    #: Folder of the package; None for an installed package that cannot be located.
    package_dir: Path | None
    manifest: Manifest | None
    error: str | None = None


#: The default plugin folder, present in the nexus repository only: its absence is normal.
_DEFAULT_DIR = Path("plugins")


def discover(
    dirs: Iterable[str | Path], *, entry_points: bool = True, bundled: Iterable[str] = ()
) -> list[Candidate]:
    """Every plugin in ``dirs``, the ``bundled`` ones (names or "*") and, optionally, in
    the ``nexus.plugins`` entry points; a folder found twice is listed once."""
    found: list[Candidate] = []
    for directory in dirs:
        found.extend(_discover_folder(Path(directory)))
    found.extend(_discover_bundled(set(bundled)))
    if entry_points:
        found.extend(_discover_entry_points())
    return _unique(found)


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    # The same files under two sources (plugins/ in the repository and the bundled set
    # an editable install maps to it) would otherwise be two plugins of one name.
    seen: set[tuple[str, Path]] = set()
    unique = []
    for candidate in candidates:
        if candidate.package_dir is not None:
            key = (candidate.name, candidate.package_dir.resolve())
            if key in seen:
                continue
            seen.add(key)
        unique.append(candidate)
    return unique


def _discover_bundled(chosen: set[str]) -> list[Candidate]:
    if not chosen:
        return []
    folder = bundled_folder()
    if folder is None:
        _log.warning("plugins.bundled is set but this installation has no bundled plugins")
        return []
    return [
        replace(c, source=f"bundled plugin {c.name} ({c.package_dir})")
        for c in _discover_folder(folder)
        if ALL in chosen or c.name in chosen
    ]


def _discover_folder(root: Path) -> list[Candidate]:
    if not root.is_dir():
        if root == _DEFAULT_DIR:
            _log.debug("no plugin folder %s here", root)
        else:
            _log.warning("plugin folder %s does not exist; no plugins loaded from it", root)
        return []
    candidates = []
    for package_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if package_dir.name.startswith((".", "_")):
            continue
        manifest_path = package_dir / MANIFEST_FILE
        has_code = (package_dir / "__init__.py").is_file()
        if not manifest_path.is_file() and not has_code:
            continue  # not a plugin: a data or docs folder
        source = f"folder {package_dir}"
        module = f"nexus_plugins.{package_dir.name}"
        try:
            manifest = parse_manifest(manifest_path)
        except ManifestError as error:
            candidates.append(
                Candidate(package_dir.name, source, module, package_dir, None, str(error))
            )
            continue
        error_text = None
        if not has_code:
            error_text = f"{package_dir}: no __init__.py; a plugin folder must be a Python package"
        # Named after the plugin, not the folder: two folders called "common" in two
        # plugin dirs must not share (and evict) one module.
        module = f"nexus_plugins.{manifest.name}"
        candidates.append(
            Candidate(manifest.name, source, module, package_dir, manifest, error_text)
        )
    return candidates


def _discover_entry_points() -> list[Candidate]:
    candidates = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {entry_point.name} = {entry_point.value}"
        module = entry_point.value.split(":", 1)[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as error:
            spec = None
            reason = f"{source}: cannot locate package {module!r}: {error}"
        else:
            reason = f"{source}: package {module!r} is not installed"
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            candidates.append(Candidate(entry_point.name, source, module, None, None, reason))
            continue
        package_dir = Path(locations[0])
        try:
            manifest = parse_manifest(package_dir / MANIFEST_FILE)
        except ManifestError as error:
            candidates.append(
                Candidate(entry_point.name, source, module, package_dir, None, str(error))
            )
            continue
        error_text = None
        if manifest.name != entry_point.name:
            error_text = (
                f"{source}: entry point name {entry_point.name!r} differs from the "
                f"manifest name {manifest.name!r}; make them equal"
            )
        candidates.append(
            Candidate(manifest.name, source, module, package_dir, manifest, error_text)
        )
    return candidates
