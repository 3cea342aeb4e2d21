"""One generation of a plugin: its code, its servicers' routes, its calls in flight.

A plugin is loaded as generation 1; each reload builds generation n+1 off to the side
(imported, constructed, started, ready) and swaps its routes in with one routing-table
assignment. The old generation keeps its routes for the calls that started on them,
its own in-flight counter and :class:`~nexus_grpc.plugins.drain.DrainStage`, and is
retired once they are done: stop hook, then leftover threads and tasks reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nexus_grpc.plugins.drain import DrainStage
from nexus_grpc.plugins.loader import LoadedPlugin
from nexus_grpc.plugins.spec import PluginContext
from nexus_grpc.routing import InFlight, Route

__all__ = ["Generation"]


@dataclass
class Generation:
    """A loaded, started version of one plugin."""

    #: 1 for the first load, one more for each reload or load after an unload.
    number: int
    loaded: LoadedPlugin
    context: PluginContext
    routes: list[Route]
    #: Event type → handler (wrapped for calls made outside requests).
    handlers: dict[str, Any]
    in_flight: InFlight
    drain: DrainStage
    #: sha256 over the plugin's files when it was imported (see plugins.fingerprint).
    code_hash: str = ""
    #: sha256 over the .proto files of the services it serves.
    contract_hash: str = ""
    #: The package the plugin's code was imported as ("nexus_plugins.<name>" for a
    #: folder plugin): its modules are forgotten when the plugin is unloaded.
    package: str = ""
    #: ``id(module.__dict__)`` of the modules this generation imported: threads and
    #: tasks running their functions are this generation's leftovers.
    namespaces: frozenset[int] = frozenset()

    @property
    def services(self) -> tuple[str, ...]:
        """Services this generation serves."""
        return self.loaded.manifest.services
