"""The plugin lifecycle: discover, order by requirements, load, start, serve, stop.

A broken plugin never takes the host down: it is recorded as failed with the reason,
its services report NOT_SERVING, the plugins requiring it fail too, and everything
else starts. With ``plugins.strict`` the host refuses to start instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nexus_grpc.access.audit import AuditLog
from nexus_grpc.access.policy import MISSING_POLICY_FIX, methods_without_policy
from nexus_grpc.cache import CacheManager
from nexus_grpc.config import Config
from nexus_grpc.events import EventBus
from nexus_grpc.events.outbox import Outbox
from nexus_grpc.pipeline import Stage
from nexus_grpc.plugins.builder import GenerationBuilder, HookTimeoutError, PrepareError, run_hook
from nexus_grpc.plugins.contexts import ContextFactory
from nexus_grpc.plugins.discovery import Candidate, discover_configured, excluded_by
from nexus_grpc.plugins.drain import drain
from nexus_grpc.plugins.fingerprint import CodeTooLargeError, code_hash
from nexus_grpc.plugins.generation import Generation
from nexus_grpc.plugins.leftovers import leftovers
from nexus_grpc.plugins.loader import LoadedPlugin, PluginError
from nexus_grpc.plugins.manifest import Manifest
from nexus_grpc.plugins.relays import Relays
from nexus_grpc.plugins.spec import PluginContext
from nexus_grpc.routing import InFlight, Router
from nexus_grpc.storage import Storage
from nexus_grpc.transport.health import HealthState

if TYPE_CHECKING:
    from nexus_grpc.plugins.swap import HotSwap, SwapResult

__all__ = [
    "PluginManager",
    "PluginRecord",
    "PluginState",
    "PrepareError",
    "StrictModeError",
]

_log = logging.getLogger("nexus.plugins")


class StrictModeError(RuntimeError):
    """``plugins.strict`` is on and at least one plugin failed."""


class PluginState:
    """Lifecycle states (names match nexus.admin.v1.PluginState)."""

    DISCOVERED = "DISCOVERED"
    SERVING = "SERVING"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    DISABLED = "DISABLED"


@dataclass
class PluginRecord:
    """What the host knows about one plugin, whatever became of it."""

    name: str
    source: str
    manifest: Manifest | None
    state: str = PluginState.DISCOVERED
    error: str = ""
    #: The generation serving now (None unless SERVING).
    current: Generation | None = None
    #: Generations built so far (the next one gets this number plus one).
    generations: int = 0
    #: Why the last load, unload or reload asked of the running host failed ("" if
    #: it did not); the plugin itself is as it was.
    swap_error: str = ""
    _idle: InFlight = field(default_factory=InFlight)

    @property
    def services(self) -> tuple[str, ...]:
        """Services the manifest declares."""
        return self.manifest.services if self.manifest else ()

    @property
    def loaded(self) -> LoadedPlugin | None:
        """The serving generation's imported plugin."""
        return self.current.loaded if self.current else None

    @property
    def context(self) -> PluginContext | None:
        """The serving generation's context."""
        return self.current.context if self.current else None

    @property
    def in_flight(self) -> InFlight:
        """Calls the serving generation is running."""
        return self.current.in_flight if self.current else self._idle


class PluginManager:
    """Loads the configured plugins into the router and keeps their records."""

    def __init__(
        self,
        config: Config,
        *,
        storage: Storage,
        router: Router,
        stages: Sequence[Stage],
        health: HealthState,
        audit: AuditLog | None = None,
        tokens: Any = None,
        bus: EventBus | None = None,
        outbox: Outbox | None = None,
        cache: CacheManager | None = None,
    ) -> None:
        self._config = config
        self._swap: HotSwap | None = None
        self._relays = Relays(bus) if bus is not None else None
        self._bus = bus
        self._contexts = ContextFactory(
            config,
            storage=storage,
            router=router,
            audit=audit,
            tokens=tokens,
            bus=bus,
            outbox=outbox,
            cache=cache,
        )
        self._router = router
        self._builder = GenerationBuilder(
            config, router=router, stages=stages, contexts=self._contexts, bus=bus
        )
        self._health = health
        self._records: dict[str, PluginRecord] = {}
        self._candidates: dict[str, Candidate] = {}
        self._start_order: list[str] = []
        # Services of failed plugins, published NOT_SERVING once loading is done (the
        # failure is recorded in sync code; publishing health is async).
        self._unhealthy: list[str] = []

    async def load(self, name: str, *, expected_hash: str = "") -> SwapResult:
        """Load plugin ``name`` from the configured folders or entry points while the host
        runs (see :mod:`nexus_grpc.plugins.swap`)."""
        from nexus_grpc.plugins.swap import SwapRequest

        return await self.swap.apply(SwapRequest(name, "load", expected_hash=expected_hash))

    async def unload(
        self, name: str, *, drain_timeout: float | None = None, cascade: bool = False
    ) -> SwapResult:
        """Stop serving plugin ``name``: drain its calls, run its stop hook."""
        from nexus_grpc.plugins.swap import SwapRequest

        return await self.swap.apply(
            SwapRequest(name, "unload", cascade=cascade, drain_timeout=drain_timeout)
        )

    async def reload(self, name: str, *, expected_hash: str = "") -> SwapResult:
        """Replace plugin ``name``'s generation with its code as it is now on disk."""
        from nexus_grpc.plugins.swap import SwapRequest

        return await self.swap.apply(SwapRequest(name, "reload", expected_hash=expected_hash))

    @property
    def swap(self) -> HotSwap:
        """The hot swap operations of this manager."""
        from nexus_grpc.plugins.swap import HotSwap

        if self._swap is None:
            self._swap = HotSwap(self)
        return self._swap

    def records(self) -> list[PluginRecord]:
        """Every plugin record, sorted by name."""
        return [self._records[name] for name in sorted(self._records)]

    def record(self, name: str) -> PluginRecord | None:
        """The record of plugin ``name``."""
        return self._records.get(name)

    def rediscover(self, name: str) -> Candidate | str | None:
        """Look for plugin ``name`` in the configured folders and entry points again
        (a folder added since the start counts): its candidate, why it cannot be
        loaded, or None when there is no such plugin."""
        settings = self._config.plugins
        found = [c for c in discover_configured(settings) if c.name == name]
        if not found:
            return None
        if len(found) > 1:
            return (
                f"plugin name {name!r} is used by both {found[0].source} and "
                f"{found[1].source}; rename one or remove it from the plugin folders"
            )
        candidate = found[0]
        if candidate.error or candidate.manifest is None:
            return f"plugin {name!r} ({candidate.source}): {candidate.error or 'manifest missing'}"
        excluded = excluded_by(settings, name)
        if excluded is not None:
            return f"plugin {name!r} is turned off by {excluded} in the host configuration"
        return candidate

    def adopt(self, candidate: Candidate) -> PluginRecord:
        """The record of ``candidate``'s plugin, created when the host never saw it;
        ``candidate`` is what a next load of it imports."""
        record = self._records.get(candidate.name)
        if record is None:
            record = self._records[candidate.name] = PluginRecord(
                candidate.name, candidate.source, candidate.manifest
            )
        if record.current is None:
            record.source, record.manifest = candidate.source, candidate.manifest
        self._candidates[candidate.name] = candidate
        return record

    def dependents(self, name: str) -> list[str]:
        """Serving plugins that require plugin ``name`` or a service it serves."""
        record = self._records.get(name)
        provided = {name, *(record.services if record else ())}
        return sorted(
            other.name
            for other in self._records.values()
            if other.name != name
            and other.state == PluginState.SERVING
            and other.manifest is not None
            and provided.intersection(other.manifest.requires)
        )

    @property
    def router(self) -> Router:
        """The router the plugins' routes are installed in."""
        return self._router

    @property
    def settings(self) -> Config:
        """The host configuration the manager loads plugins under."""
        return self._config

    async def load_all(self) -> None:
        """Discover and start every enabled plugin in requirement order."""
        settings = self._config.plugins
        candidates = discover_configured(settings)
        for candidate in candidates:
            self._admit(candidate)
        for name in self._requirement_order():
            record = self._records[name]
            if record.state == PluginState.DISCOVERED:
                await self._load(record)
        for service in self._unhealthy:
            await self._health.set(service, False)
        self._unhealthy.clear()
        failed = [r for r in self._records.values() if r.state == PluginState.FAILED]
        if failed and settings.strict:
            reasons = "; ".join(r.error for r in failed)
            raise StrictModeError(
                f"plugins.strict is on and {len(failed)} plugin(s) failed: {reasons}"
            )

    async def stop_all(self) -> None:
        """Stop serving plugins in reverse start order, running their stop hooks."""
        for name in reversed(self._start_order):
            record = self._records[name]
            if record.state != PluginState.SERVING:
                continue
            self._router.remove_plugin(name)
            record.state = PluginState.STOPPED
            assert record.current is not None
            await self.run_stop_hook(name, record.current)
        self._start_order.clear()

    def _admit(self, candidate: Candidate) -> None:
        settings = self._config.plugins
        existing = self._records.get(candidate.name)
        if existing is not None:
            existing.state = PluginState.FAILED
            existing.error = (
                f"plugin name {candidate.name!r} is used by both {existing.source} and "
                f"{candidate.source}; rename one or remove it from the plugin folders"
            )
            _log.error(existing.error, extra={"plugin": candidate.name})
            return
        record = PluginRecord(candidate.name, candidate.source, candidate.manifest)
        self._records[candidate.name] = record
        if candidate.error or candidate.manifest is None:
            self._fail(record, candidate.error or "manifest missing")
        elif excluded_by(settings, candidate.name):
            record.state = PluginState.DISABLED
        else:
            self._candidates[candidate.name] = candidate

    def _requirement_order(self) -> list[str]:
        """Plugin names so that each comes after the plugins it requires.

        A required service is a requirement on the plugin whose manifest lists it.
        """
        order: list[str] = []
        visiting: set[str] = set()
        providers = self._providers()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in order or name in visiting:
                if name in visiting:
                    cycle = " -> ".join((*chain, name))
                    self._fail(self._records[name], f"requirement cycle {cycle}; break it")
                return
            visiting.add(name)
            record = self._records[name]
            for entry in record.manifest.requires if record.manifest else ():
                required = providers.get(entry, entry)
                if required in self._records and required != name:
                    visit(required, (*chain, name))
            visiting.discard(name)
            order.append(name)

        for name in sorted(self._records):
            visit(name, ())
        return order

    async def _load(self, record: PluginRecord) -> None:
        manifest = record.manifest
        assert manifest is not None
        problem = self.unmet_requirement(record.name, manifest)
        if problem is not None:
            self._fail(record, problem)
            return
        candidate = self._candidates[record.name]
        digest = ""
        if candidate.package_dir is not None:
            try:
                digest = await asyncio.to_thread(code_hash, candidate.package_dir)
            except (OSError, CodeTooLargeError) as error:
                _log.warning("plugin %r: cannot hash its code: %s", record.name, error)
        try:
            generation = await self.prepare(record, candidate, code=digest)
        except PrepareError as error:
            cause = None if isinstance(error.cause, HookTimeoutError) else error.cause
            self._fail(record, error.reason, cause)
            return
        await self.install(record, generation)

    def unmet_requirement(self, name: str, manifest: Manifest) -> str | None:
        """Why plugin ``name`` cannot start now (a requirement not serving), or None."""
        for required in manifest.requires:
            if "." in required:  # a service the plugin calls
                problem = self._unmet_service(required)
                if problem is not None:
                    return f"plugin {name!r} ({manifest.path}): {problem}"
                continue
            other = self._records.get(required)
            if other is None:
                known = ", ".join(sorted(self._records)) or "none"
                return (
                    f"requires plugin {required!r}, which was not found (discovered: {known}); "
                    "install it or remove it from `requires`"
                )
            if other.state != PluginState.SERVING:
                return f"requires plugin {required!r}, which is {other.state.lower()}" + (
                    f": {other.error}" if other.error else ""
                )
        return None

    async def prepare(
        self, record: PluginRecord, candidate: Candidate, *, fresh: bool = False, code: str = ""
    ) -> Generation:
        """Import, construct and start the next generation of ``record``'s plugin, off
        to the side (see :class:`~nexus_grpc.plugins.builder.GenerationBuilder`);
        PrepareError says why it cannot be, and leaves nothing started behind."""
        serving = record.current.loaded.manifest if record.current is not None else None
        generation = await self._builder.build(
            record.name,
            candidate,
            record.generations + 1,
            fresh=fresh,
            code=code,
            serving=serving,
        )
        record.generations = generation.number
        return generation

    async def install(
        self, record: PluginRecord, generation: Generation, *, replacing: bool = False
    ) -> Generation | None:
        """Route calls to ``generation`` (in one routing generation); the generation it
        replaces, still to be retired, or None."""
        name = record.name
        old = record.current
        if replacing:
            self._router.replace_plugin(name, generation.routes)
        else:
            self._router.add(generation.routes)
        if self._relays is not None:
            self._relays.install(name, generation.handlers)
        manifest = generation.loaded.manifest
        record.manifest = manifest
        record.current, record.state, record.error = generation, PluginState.SERVING, ""
        if name not in self._start_order:
            self._start_order.append(name)
        for service in manifest.services:
            await self._health.set(service, True)
        for service in old.services if old else ():
            if service not in manifest.services:
                await self._health.forget(service)
        for path in methods_without_policy(route.info.descriptor for route in generation.routes):
            _log.warning(
                "plugin %r: %s declares no access policy, so every call to it is denied; %s",
                name,
                path,
                MISSING_POLICY_FIX,
                extra={"plugin": name, "method": path},
            )
        _log.info(
            "plugin %s %s serving %s (generation %d)",
            manifest.name,
            manifest.version,
            ", ".join(manifest.services) or "no services",
            generation.number,
            extra={"plugin": manifest.name, "generation": generation.number},
        )
        return old

    async def remove(self, record: PluginRecord) -> Generation:
        """Stop routing to ``record``'s plugin: calls get UNIMPLEMENTED (404 over REST),
        its services leave health, its events wait for it. The generation to retire."""
        old = record.current
        assert old is not None
        self._router.remove_plugin(record.name)
        if self._relays is not None:
            self._relays.hold(record.name)
        for service in old.services:
            await self._health.forget(service)
        record.current, record.state = None, PluginState.STOPPED
        if record.name in self._start_order:
            self._start_order.remove(record.name)
        return old

    async def retire(self, name: str, generation: Generation, drain_timeout: float) -> int:
        """Let ``generation``'s calls finish (then cut them UNAVAILABLE), run its stop
        hook and warn about what it left running; how many calls were cut."""
        cut = await drain(generation.in_flight, generation.drain, drain_timeout)
        if cut:
            _log.warning(
                "plugin %r generation %d: %d call(s) still running after %.1fs ended UNAVAILABLE",
                name,
                generation.number,
                cut,
                drain_timeout,
                extra={"plugin": name, "generation": generation.number},
            )
        await self.run_stop_hook(name, generation)
        # One loop turn: tasks the stop hook cancelled get to finish.
        await asyncio.sleep(0)
        for leftover in leftovers(generation.namespaces):
            _log.warning(
                "plugin %r generation %d left %s running after its stop hook: it keeps the "
                "old code alive; stop it in the plugin's on_stop hook",
                name,
                generation.number,
                leftover,
                extra={"plugin": name, "generation": generation.number},
            )
        return cut

    async def run_stop_hook(self, name: str, generation: Generation) -> None:
        """Run ``generation``'s stop hook; a failure is logged, never raised."""
        hook = generation.loaded.plugin.on_stop
        if hook is None:
            return
        try:
            await run_hook(hook, generation.context, self._config.plugins.hook_timeout)
        except Exception:
            _log.exception("plugin %r: stop hook failed", name, extra={"plugin": name})

    def _providers(self) -> dict[str, str]:
        """Service → the plugin whose manifest lists it (the first, by name)."""
        providers: dict[str, str] = {}
        for name in sorted(self._records, reverse=True):
            manifest = self._records[name].manifest
            for service in manifest.services if manifest else ():
                providers[service] = name
        return providers

    def _unmet_service(self, service: str) -> str | None:
        """Why ``service`` cannot be called now, or None when a serving plugin serves it."""
        if self._router.table.plugin_of(service) is not None:
            return None
        provider = self._providers().get(service)
        if provider is None:
            serving = sorted(
                r.name for r in self._records.values() if r.state == PluginState.SERVING
            )
            return (
                f"requires service {service}, which no plugin serves (plugins serving: "
                f"{', '.join(serving) or 'none'}); add the plugin that serves it or remove "
                "the service from `requires`"
            )
        other = self._records[provider]
        state = other.state.lower() if other.state != PluginState.SERVING else "not serving it"
        return f"requires service {service} of plugin {provider!r}, which is {state}" + (
            f": {other.error}" if other.error else ""
        )

    def _fail(self, record: PluginRecord, reason: str, error: BaseException | None = None) -> None:
        record.state = PluginState.FAILED
        record.error = reason
        _log.error(
            "plugin %s failed: %s",
            record.name,
            reason,
            exc_info=error if error is not None and not isinstance(error, PluginError) else None,
            extra={"plugin": record.name},
        )
        for service in record.services:
            # Clients checking a failed plugin's service see NOT_SERVING, not NOT_FOUND —
            # unless another plugin serves it, in which case its health is that plugin's.
            if self._router.table.plugin_of(service) is None:
                self._unhealthy.append(service)
