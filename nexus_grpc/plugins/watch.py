"""Development mode: reload a plugin when its files change (``nexus serve --reload``).

The plugin folders are watched with ``watchfiles``; a change inside a plugin's folder
reloads that plugin (or loads it, when it is not serving: a fixed broken plugin comes
up). A change of a ``.proto`` in the project's ``proto/`` folder first regenerates the
stubs as ``nexus gen`` does, then reloads the plugins serving a service of that file.
A broken edit leaves the previous version serving; the log says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from nexus_grpc.errors import StatusError
from nexus_grpc.plugins.manager import PluginManager, PluginState
from nexus_grpc.plugins.manifest import MANIFEST_FILE, ManifestError, parse_manifest
from nexus_grpc.plugins.swap import SwapRequest

__all__ = ["PluginWatcher"]

_log = logging.getLogger("nexus.plugins")

#: Files whose change is no code change.
_IGNORED_PARTS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache"})


class PluginWatcher:
    """Watches plugin folders (and a contracts folder) and applies the swaps edits need."""

    def __init__(
        self,
        manager: PluginManager,
        dirs: Sequence[Path],
        *,
        contracts: tuple[Path, Path] | None = None,
        debounce: float = 0.3,
    ) -> None:
        self._manager = manager
        self._dirs = [d.resolve() for d in dirs if d.is_dir()]
        self._contracts = (contracts[0].resolve(), contracts[1]) if contracts else None
        self._debounce = debounce

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set."""
        from watchfiles import awatch

        watched = [*self._dirs, *([self._contracts[0]] if self._contracts else [])]
        if not watched:
            _log.warning("--reload: no plugin folder to watch")
            return
        _log.info(
            "watching %s for changes",
            ", ".join(str(w) for w in watched),
            extra={"watched": [str(w) for w in watched]},
        )
        async for changes in awatch(
            *watched, stop_event=stop, debounce=int(self._debounce * 1000), recursive=True
        ):
            await self.apply([Path(path) for _, path in changes])

    async def apply(self, paths: Sequence[Path]) -> None:
        """Reload what ``paths`` (changed files) belong to."""
        folders: set[Path] = set()
        protos: set[str] = set()
        for path in paths:
            if _IGNORED_PARTS.intersection(path.parts) or path.name.endswith((".pyc", "~")):
                continue
            resolved = path.resolve()
            if self._contracts and resolved.is_relative_to(self._contracts[0]):
                if resolved.suffix == ".proto":
                    protos.add(resolved.relative_to(self._contracts[0]).as_posix())
                continue
            for root in self._dirs:
                if resolved.is_relative_to(root) and resolved != root:
                    folders.add(root / resolved.relative_to(root).parts[0])
        names = {name for name in map(_plugin_name, sorted(folders)) if name}
        if protos:
            if not await self._regenerate():
                return
            names.update(self._serving_contracts(protos))
        for name in sorted(names):
            await self._swap(name)

    async def _regenerate(self) -> bool:
        from nexus_grpc.codegen import CodegenError, OutputFolderError, generate

        assert self._contracts is not None
        proto, out = self._contracts
        try:
            await asyncio.to_thread(generate, proto, out)
        except (CodegenError, OutputFolderError) as error:
            _log.error("--reload: the contracts do not compile, nothing reloaded: %s", error)
            return False
        return True

    def _serving_contracts(self, files: set[str]) -> set[str]:
        names = set()
        for record in self._manager.records():
            generation = record.current
            if generation is None:
                continue
            if any(
                route.info.descriptor.containing_service.file.name in files
                for route in generation.routes
            ):
                names.add(record.name)
        return names

    async def _swap(self, name: str) -> None:
        record = self._manager.record(name)
        serving = record is not None and record.state == PluginState.SERVING
        operation = "reload" if serving else "load"
        try:
            result = await self._manager.swap.apply(SwapRequest(name, operation))
        except StatusError as error:
            _log.error(
                "--reload: plugin %s not %sed%s: %s",
                name,
                operation,
                ", the previous version serves on" if serving else "",
                error.message,
                extra={"plugin": name},
            )
            return
        _log.info(
            "--reload: plugin %s %sed (generation %d)",
            name,
            operation,
            result.generation,
            extra={"plugin": name, "generation": result.generation},
        )


def _plugin_name(folder: Path) -> str | None:
    try:
        return parse_manifest(folder / MANIFEST_FILE).name
    except ManifestError:
        return None
