"""Importing a plugin's code anew for a reload, and forgetting it after an unload.

Python cannot unload a module; what it can do is forget it: the plugin's modules are
removed from ``sys.modules`` and imported again from the files, so the new generation
runs the new code while the old generation keeps the module objects it refers to
(they are freed once its last call, task and reference are gone). Modules outside
the plugin's package (its generated stubs, libraries) are shared by both.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nexus_grpc.plugins.discovery import Candidate

__all__ = ["forget_modules", "fresh_import", "plugin_modules"]

T = TypeVar("T")


def plugin_modules(package: str) -> dict[str, types.ModuleType]:
    """The modules of package ``package`` (itself included) now in ``sys.modules``."""
    return {
        name: module
        for name, module in list(sys.modules.items())
        if name == package or name.startswith(package + ".")
    }


def forget_modules(package: str) -> int:
    """Remove package ``package`` and its submodules from ``sys.modules``; how many."""
    found = plugin_modules(package)
    for name in found:
        del sys.modules[name]
    return len(found)


def _drop_stale_bytecode(package_dir: Path) -> None:
    # A .pyc is trusted when the source's mtime (whole seconds) and size match: an
    # edit saved within the same second with the same size would import the old code.
    for source in package_dir.rglob("*.py"):
        with contextlib.suppress(OSError, NotImplementedError, ValueError):
            Path(importlib.util.cache_from_source(str(source))).unlink(missing_ok=True)


def fresh_import(candidate: Candidate, load: Callable[[Candidate], T]) -> T:
    """``load(candidate)`` with the plugin's own modules imported anew. When it fails,
    the modules of the generation serving now are put back, so code of the old
    generation importing lazily still finds its own modules."""
    package = candidate.module
    previous = plugin_modules(package)
    forget_modules(package)
    if candidate.package_dir is not None:
        _drop_stale_bytecode(candidate.package_dir)
    importlib.invalidate_caches()
    try:
        return load(candidate)
    except BaseException:
        forget_modules(package)
        sys.modules.update(previous)
        raise
