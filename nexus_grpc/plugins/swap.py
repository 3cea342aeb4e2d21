"""Hot swap: load, unload and reload plugins in a running host, dropping no call.

Every operation is one :class:`SwapRequest` (plugin name, operation, the code hash
the caller expects), so the same request can come from an admin call or, with
several processes, from a message each of them applies. A swap:

- **load**: finds the plugin again in the configured folders and entry points (never
  a path from the caller), checks its requirements serve, builds a generation off to
  the side (import, construct, start hook, health), then routes to it;
- **reload**: builds the new generation the same way with the plugin's modules
  imported anew, swaps the routes in one routing generation (calls in flight keep the
  old routes and finish on the old code), then drains and stops the old generation.
  Any failure before the swap leaves the old generation serving, untouched;
- **unload**: refused while serving plugins require it (unless cascading to them
  first), removes the routes (new calls: UNIMPLEMENTED, 404 over REST), drains the
  calls in flight for up to ``drain_timeout`` (the rest end UNAVAILABLE), runs the
  stop hook and forgets the plugin's modules.

One swap runs at a time per host. Hot swap is off unless ``plugins.hot_swap.enabled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from nexus_grpc.config import HotSwapConfig
from nexus_grpc.errors import NotFoundError, StatusError
from nexus_grpc.gateway.bindings import BindingError, bindings_for
from nexus_grpc.plugins.discovery import Candidate
from nexus_grpc.plugins.fingerprint import CodeTooLargeError, code_hash
from nexus_grpc.plugins.generation import Generation
from nexus_grpc.plugins.manager import PluginManager, PluginRecord, PluginState, PrepareError
from nexus_grpc.plugins.modules import forget_modules
from nexus_grpc.routing import RoutingTable

__all__ = ["OPERATIONS", "HotSwap", "Surface", "SwapError", "SwapRequest", "SwapResult"]

_log = logging.getLogger("nexus.plugins")

#: The operations a :class:`SwapRequest` may name.
OPERATIONS = ("load", "unload", "reload")


class SwapError(StatusError):
    """A swap that cannot be done; the plugin is as it was. FAILED_PRECONDITION unless
    said otherwise."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    ) -> None:
        super().__init__(code, message, reason="PLUGIN_SWAP_REFUSED")


@dataclass(frozen=True)
class SwapRequest:
    """One swap, as an admin call or a message between processes states it."""

    plugin: str
    #: "load", "unload" or "reload".
    operation: str
    #: When set, the code found must hash to it (every process swaps the same code).
    expected_hash: str = ""
    #: unload: unload the plugins requiring this one first.
    cascade: bool = False
    #: unload, reload: seconds to wait for calls in flight; the configured one if None.
    drain_timeout: float | None = None


@dataclass(frozen=True)
class Surface:
    """What a set of routes exposes: services, gRPC methods and HTTP routes."""

    services: frozenset[str] = frozenset()
    methods: frozenset[str] = frozenset()
    #: "GET /v1/things/{id}" for each HTTP binding.
    routes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, table: RoutingTable, plugins: set[str]) -> Surface:
        """The surface of ``plugins``' routes in ``table``."""
        services: set[str] = set()
        methods: set[str] = set()
        routes: set[str] = set()
        for route in table.routes.values():
            if route.plugin not in plugins:
                continue
            services.add(route.service)
            methods.add(route.path)
            try:
                bindings = bindings_for(route.info.descriptor)
            except BindingError:
                continue
            routes.update(f"{b.http_method} {b.template.source}" for b in bindings)
        return cls(frozenset(services), frozenset(methods), frozenset(routes))

    def minus(self, other: Surface) -> Surface:
        """What this surface has and ``other`` does not."""
        return Surface(
            self.services - other.services,
            self.methods - other.methods,
            self.routes - other.routes,
        )


@dataclass(frozen=True)
class SwapResult:
    """What a swap changed."""

    operation: str
    #: The plugins it loaded, unloaded or reloaded, in the order it did.
    plugins: tuple[str, ...]
    #: The code hash of the generation now serving ("" after an unload).
    code_hash: str = ""
    #: The generation now serving (0 after an unload).
    generation: int = 0
    added: Surface = field(default_factory=Surface)
    removed: Surface = field(default_factory=Surface)
    #: Calls still running after the drain timeout, ended UNAVAILABLE.
    cut_calls: int = 0
    #: Seconds from the request to the new routes serving (load, reload).
    swap_seconds: float = 0.0


class HotSwap:
    """Applies :class:`SwapRequest`\\ s to one host's plugin manager, one at a time."""

    def __init__(self, manager: PluginManager) -> None:
        self._manager = manager
        self._lock = asyncio.Lock()

    @property
    def settings(self) -> HotSwapConfig:
        """``[plugins.hot_swap]``."""
        return self._manager.settings.plugins.hot_swap

    async def apply(self, request: SwapRequest) -> SwapResult:
        """Do ``request``; SwapError (or NOT_FOUND, PERMISSION_DENIED) when it cannot be."""
        if not self.settings.enabled:
            raise SwapError(
                "hot swap is off on this host: set enabled = true under [plugins.hot_swap] "
                "in its configuration (or restart it to change plugins)"
            )
        if request.operation not in OPERATIONS:
            raise SwapError(
                f"unknown operation {request.operation!r}; expected one of {', '.join(OPERATIONS)}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
            )
        async with self._lock:
            before = self._manager_table()
            if request.operation == "load":
                result = await self._load(request)
            elif request.operation == "reload":
                result = await self._reload(request)
            else:
                result = await self._unload(request)
            after = self._manager_table()
        touched = set(result.plugins)
        old, new = Surface.of(before, touched), Surface.of(after, touched)
        return SwapResult(
            result.operation,
            result.plugins,
            result.code_hash,
            result.generation,
            added=new.minus(old),
            removed=old.minus(new),
            cut_calls=result.cut_calls,
            swap_seconds=result.swap_seconds,
        )

    def _manager_table(self) -> RoutingTable:
        return self._manager.router.table

    # -- load and reload ---------------------------------------------------------------

    async def _candidate(self, name: str) -> Candidate:
        found = self._manager.rediscover(name)
        if found is None:
            raise NotFoundError("plugin", name)
        if isinstance(found, str):
            raise SwapError(found)
        return found

    async def _checked_hash(self, candidate: Candidate, expected: str) -> str:
        """The code hash of ``candidate``, checked against ``expected`` and the
        allow-list."""
        if candidate.package_dir is None:
            raise SwapError(f"plugin {candidate.name!r} ({candidate.source}) has no folder")
        try:
            digest = await asyncio.to_thread(code_hash, candidate.package_dir)
        except (OSError, CodeTooLargeError) as error:
            raise SwapError(f"plugin {candidate.name!r}: cannot hash its code: {error}") from None
        expected = expected.removeprefix("sha256:")
        if expected and digest != expected:
            raise SwapError(
                f"plugin {candidate.name!r}: its code hashes to sha256:{digest}, not the "
                f"expected sha256:{expected}; the files differ from the ones you meant"
            )
        allowed = {h.removeprefix("sha256:") for h in self.settings.allowed_hashes}
        if allowed and digest not in allowed:
            raise SwapError(
                f"plugin {candidate.name!r}: code hash sha256:{digest} is not in "
                "plugins.hot_swap.allowed_hashes",
                code=grpc.StatusCode.PERMISSION_DENIED,
            )
        return digest

    async def _load(self, request: SwapRequest) -> SwapResult:
        name = request.plugin
        record = self._manager.record(name)
        if record is not None and record.state == PluginState.SERVING:
            raise SwapError(f"plugin {name!r} is serving already; reload it instead")
        candidate = await self._candidate(name)
        assert candidate.manifest is not None
        digest = await self._checked_hash(candidate, request.expected_hash)
        problem = self._manager.unmet_requirement(name, candidate.manifest)
        if problem is not None:
            raise SwapError(f"cannot load plugin {name!r}: {problem}")
        started = time.perf_counter()
        record = self._manager.adopt(candidate)
        generation = await self._prepare(record, candidate, digest, fresh=True)
        await self._manager.install(record, generation)
        record.swap_error = ""
        return SwapResult(
            "load",
            (name,),
            digest,
            generation.number,
            swap_seconds=time.perf_counter() - started,
        )

    async def _reload(self, request: SwapRequest) -> SwapResult:
        name = request.plugin
        record = self._serving(name, "reload")
        candidate = await self._candidate(name)
        assert candidate.manifest is not None
        digest = await self._checked_hash(candidate, request.expected_hash)
        problem = self._manager.unmet_requirement(name, candidate.manifest)
        if problem is not None:
            raise SwapError(f"cannot reload plugin {name!r}: {problem}")
        started = time.perf_counter()
        generation = await self._prepare(record, candidate, digest, fresh=True)
        old = await self._manager.install(record, generation, replacing=True)
        swapped = time.perf_counter() - started
        self._manager.adopt(candidate)
        record.swap_error = ""
        cut = 0
        if old is not None:
            cut = await self._manager.retire(name, old, self._drain_timeout(request))
        return SwapResult(
            "reload", (name,), digest, generation.number, cut_calls=cut, swap_seconds=swapped
        )

    async def _prepare(
        self, record: PluginRecord, candidate: Candidate, digest: str, *, fresh: bool
    ) -> Generation:
        try:
            generation = await self._manager.prepare(record, candidate, fresh=fresh, code=digest)
        except PrepareError as error:
            record.swap_error = error.reason
            _log.warning(
                "plugin %s: new version not loaded, %s: %s",
                record.name,
                "the old one serves on" if record.current else "nothing changed",
                error.reason,
                extra={"plugin": record.name},
            )
            raise SwapError(error.reason) from None
        # The files may have changed between hashing and importing them: what was
        # audited and checked against the allow-list must be what now runs.
        assert candidate.package_dir is not None
        again = await asyncio.to_thread(code_hash, candidate.package_dir)
        if again != digest:
            await self._manager.run_stop_hook(record.name, generation)
            raise SwapError(
                f"plugin {record.name!r}: its files changed while it was being loaded; "
                "try again once they are written"
            )
        return generation

    # -- unload ------------------------------------------------------------------------

    async def _unload(self, request: SwapRequest) -> SwapResult:
        name = request.plugin
        self._serving(name, "unload")
        order = self._unload_order(name, request.cascade)
        timeout = self._drain_timeout(request)
        # Routes first, all of them, so no dependent calls a plugin being drained.
        retiring = []
        for plugin in order:
            record = self._manager.record(plugin)
            assert record is not None and record.current is not None
            retiring.append((plugin, await self._manager.remove(record)))
        cut = 0
        for plugin, generation in retiring:
            cut += await self._manager.retire(plugin, generation, timeout)
            # The next load imports the files as they are then.
            forget_modules(generation.package)
        return SwapResult("unload", tuple(order), cut_calls=cut)

    def _unload_order(self, name: str, cascade: bool) -> list[str]:
        """``name`` after every serving plugin requiring it (transitively, when
        cascading); SwapError when some require it and ``cascade`` is off."""
        dependents = self._manager.dependents(name)
        if dependents and not cascade:
            raise SwapError(
                f"plugin {name!r} is required by {', '.join(repr(d) for d in dependents)}; "
                "unload them first, or unload with cascade to unload them too"
            )
        order: list[str] = []
        visiting: set[str] = set()

        def visit(plugin: str) -> None:
            # Plugins reloaded with new requirements may form a cycle: each once.
            if plugin in order or plugin in visiting:
                return
            visiting.add(plugin)
            for dependent in self._manager.dependents(plugin):
                visit(dependent)
            order.append(plugin)

        visit(name)
        return order

    # -- helpers -----------------------------------------------------------------------

    def _serving(self, name: str, operation: str) -> PluginRecord:
        record = self._manager.record(name)
        if record is None and self._manager.rediscover(name) is None:
            raise NotFoundError("plugin", name)
        if record is None or record.state != PluginState.SERVING or record.current is None:
            state = record.state.lower() if record is not None else "not loaded"
            raise SwapError(
                f"cannot {operation} plugin {name!r}: it is {state}"
                + ("; load it instead" if operation == "reload" else "")
            )
        return record

    def _drain_timeout(self, request: SwapRequest) -> float:
        if request.drain_timeout is None or request.drain_timeout <= 0:
            return self.settings.drain_timeout
        return min(request.drain_timeout, 3600.0)
