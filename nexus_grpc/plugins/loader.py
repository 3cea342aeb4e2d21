"""Importing a plugin and checking it against its manifest, with precise errors."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from nexus_grpc.plugins.discovery import Candidate
from nexus_grpc.plugins.manifest import Manifest
from nexus_grpc.plugins.spec import Plugin
from nexus_grpc.transport.servicers import declared_services

__all__ = ["LoadedPlugin", "PluginError", "import_plugin"]

#: Parent package of plugins imported from folders, so their names cannot clash with
#: installed modules and relative imports inside a plugin work.
FOLDER_PLUGINS_PACKAGE = "nexus_plugins"


class PluginError(Exception):
    """A plugin cannot be loaded or started; the message names it, the file and the fix."""


@dataclass(frozen=True)
class LoadedPlugin:
    """A plugin whose code imported and whose capabilities match its manifest."""

    manifest: Manifest
    plugin: Plugin
    #: Service name → servicer class serving it.
    servicer_classes: dict[str, type]


def import_plugin(candidate: Candidate) -> LoadedPlugin:
    """Import ``candidate`` and validate it; PluginError says what is wrong."""
    manifest = candidate.manifest
    assert manifest is not None, "callers load only candidates with a manifest"
    module = _import(candidate)
    plugin = _find_plugin(module, manifest, candidate)
    return LoadedPlugin(manifest, plugin, _match_services(plugin, manifest, candidate))


def _import(candidate: Candidate) -> types.ModuleType:
    try:
        if candidate.module.startswith(FOLDER_PLUGINS_PACKAGE + ".") and candidate.package_dir:
            return _import_folder(candidate.module, candidate.package_dir)
        return importlib.import_module(candidate.module)
    except Exception as error:
        raise PluginError(
            f"plugin {candidate.name!r} ({candidate.source}): import failed: "
            f"{type(error).__name__}: {error}{_where(error, candidate.package_dir)}"
        ) from error


def _import_folder(module_name: str, package_dir: Path) -> types.ModuleType:
    if FOLDER_PLUGINS_PACKAGE not in sys.modules:
        parent = types.ModuleType(FOLDER_PLUGINS_PACKAGE)
        parent.__path__ = []
        sys.modules[FOLDER_PLUGINS_PACKAGE] = parent
    existing = sys.modules.get(module_name)
    if existing is not None and list(getattr(existing, "__path__", [])) == [str(package_dir)]:
        return existing
    # Same folder name, different folder (several hosts in one test process): forget the
    # old modules so this folder's code is the one imported.
    _forget(module_name)
    spec = importlib.util.spec_from_file_location(
        module_name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {package_dir} as a package")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # Leave nothing half-imported behind: a later load attempt starts clean.
        _forget(module_name)
        raise
    return module


def _forget(module_name: str) -> None:
    for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
        del sys.modules[name]


def _where(error: BaseException, package_dir: Path | None) -> str:
    # Point at the innermost frame inside the plugin: that is the line to fix.
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(error.__traceback__))
    if package_dir is not None:
        root = str(package_dir.resolve())
        inside = [f for f in frames if str(Path(f.filename).resolve()).startswith(root)]
        frames = inside or frames
    if isinstance(error, SyntaxError) and error.filename:
        return f" at {error.filename}:{error.lineno}"
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename}:{last.lineno}"


def _find_plugin(module: types.ModuleType, manifest: Manifest, candidate: Candidate) -> Plugin:
    module_name, _, attribute = manifest.entry.rpartition(":")
    target = module
    if module_name:
        try:
            target = importlib.import_module(f"{module.__name__}.{module_name}")
        except Exception as error:
            raise PluginError(
                f"plugin {manifest.name!r} ({manifest.path}): entry {manifest.entry!r}: "
                f"importing {module_name!r} failed: {type(error).__name__}: {error}"
                f"{_where(error, candidate.package_dir)}"
            ) from error
    value = getattr(target, attribute, None)
    if value is None:
        raise PluginError(
            f"plugin {manifest.name!r} ({manifest.path}): entry {manifest.entry!r} names "
            f"nothing: define `{attribute} = Plugin(services=[...])` in {target.__name__}"
        )
    if not isinstance(value, Plugin):
        raise PluginError(
            f"plugin {manifest.name!r} ({manifest.path}): entry {manifest.entry!r} is a "
            f"{type(value).__name__}, not a nexus_grpc.Plugin"
        )
    return value


def _match_services(plugin: Plugin, manifest: Manifest, candidate: Candidate) -> dict[str, type]:
    served: dict[str, type] = {}
    for cls in plugin.services:
        if not isinstance(cls, type):
            raise PluginError(
                f"plugin {manifest.name!r}: Plugin.services must list servicer classes, got {cls!r}"
            )
        names = declared_services(cls)
        if not names:
            raise PluginError(
                f"plugin {manifest.name!r}: {cls.__qualname__} does not subclass a "
                "generated ...Servicer class; subclass the servicer generated from your .proto"
            )
        for name in names:
            if name in served:
                raise PluginError(
                    f"plugin {manifest.name!r}: service {name} is implemented by both "
                    f"{served[name].__qualname__} and {cls.__qualname__}; keep one"
                )
            served[name] = cls
    missing = [name for name in manifest.services if name not in served]
    if missing:
        raise PluginError(
            f"plugin {manifest.name!r} ({manifest.path}): the manifest lists service "
            f"{missing[0]} but no servicer in Plugin.services implements it; add a class "
            f"subclassing the generated {missing[0].rsplit('.', 1)[-1]}Servicer"
        )
    extra = [name for name in served if name not in manifest.services]
    if extra:
        raise PluginError(
            f"plugin {manifest.name!r} ({manifest.path}): serves {extra[0]} which the "
            "manifest does not list; add it to `services` in the manifest"
        )
    return served
