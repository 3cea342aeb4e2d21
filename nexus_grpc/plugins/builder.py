"""Building a plugin generation off to the side: import its code, construct its
servicers, bind its routes, check its event handlers and HTTP bindings, run its start
hook and wait for its health. Nothing is routed to it until the manager installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FileDescriptor

from nexus_grpc.config import Config
from nexus_grpc.events import EventBus, event_type_exists, subscriptions_of
from nexus_grpc.gateway.bindings import (
    RESERVED_PATHS,
    BindingError,
    bindings_for,
    reserved_path_bindings,
)
from nexus_grpc.pipeline import Stage
from nexus_grpc.plugins.contexts import ContextFactory
from nexus_grpc.plugins.contract_swap import upgrade_contract
from nexus_grpc.plugins.discovery import Candidate
from nexus_grpc.plugins.drain import DrainStage
from nexus_grpc.plugins.fingerprint import CodeTooLargeError, code_hash, contract_hash
from nexus_grpc.plugins.generation import Generation
from nexus_grpc.plugins.generations import Generation as ContractGeneration
from nexus_grpc.plugins.loader import LoadedPlugin, PluginError, import_plugin
from nexus_grpc.plugins.manifest import Manifest
from nexus_grpc.plugins.modules import fresh_import, plugin_modules, restore_modules
from nexus_grpc.plugins.services import outside_calls
from nexus_grpc.plugins.spec import HealthCheck, Hook, Plugin, PluginContext
from nexus_grpc.routing import InFlight, Route, Router
from nexus_grpc.transport.servicers import (
    ServicerError,
    bind_servicer,
    build_routes,
    construct_servicer,
)

__all__ = ["GenerationBuilder", "HookTimeoutError", "PrepareError", "run_hook"]


class HookTimeoutError(Exception):
    """A start or stop hook ran past ``plugins.hook_timeout``."""


class PrepareError(Exception):
    """A new generation could not be built or started; ``reason`` says why."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


class GenerationBuilder:
    """Builds generations of plugins for one host."""

    def __init__(
        self,
        config: Config,
        *,
        router: Router,
        stages: Sequence[Stage],
        contexts: ContextFactory,
        bus: EventBus | None,
    ) -> None:
        self._config = config
        self._router = router
        self._stages = stages
        self._contexts = contexts
        self._bus = bus
        self._hook_timeout = config.plugins.hook_timeout

    def import_generation(
        self, candidate: Candidate, *, fresh: bool, contract: ContractGeneration | None = None
    ) -> LoadedPlugin:
        """Import the plugin's code (and with it its contract) for a new generation.

        Without ``contract`` the generated stubs the plugin imports are the ones in
        ``sys.modules`` (the default descriptor pool, or the contract generation
        serving now). With one, the code is imported inside its binding, so the
        plugin's stubs are that generation's modules. ``fresh`` imports the plugin's
        own modules anew (a reload): the old generation keeps the modules it holds.
        """
        if contract is not None:
            with contract.binding():
                return fresh_import(candidate, import_plugin)
        if fresh:
            return fresh_import(candidate, import_plugin)
        return import_plugin(candidate)

    async def build(
        self,
        name: str,
        candidate: Candidate,
        number: int,
        *,
        fresh: bool,
        code: str,
        serving: Manifest | None,
        running: Sequence[FileDescriptor] = (),
        known: Sequence[str] = (),
        force: bool = False,
        shared: ContractGeneration | None = None,
    ) -> Generation:
        """Import, construct and start generation ``number`` of plugin ``name``, off to
        the side: nothing is routed to it yet. PrepareError says why it cannot be, and
        leaves nothing started behind (``serving``, the manifest of the generation
        serving now, gets its outbox registration back).

        ``running`` are the contract files of the generation serving now: a changed
        contract is imported into its own contract generation, checked for breaking
        changes against them (refused unless ``force``); ``known`` names the files of
        an unloaded version (see
        :func:`~nexus_grpc.plugins.contract_swap.upgrade_contract`). ``shared`` is the
        contract generation serving now, kept by the new generation when the contract
        is the same."""
        manifest = candidate.manifest
        assert manifest is not None
        started: tuple[Plugin, PluginContext] | None = None
        # The serving generation's modules: put back on any failure, so its code
        # importing lazily never gets the rolled-back version's modules.
        previous = plugin_modules(candidate.module) if fresh else None
        contract: ContractGeneration | None = None
        try:
            contract = await upgrade_contract(
                name, number, running=running, known=known, force=force
            )
            if contract is None and shared is not None:
                # Same contract as the contract generation serving: its stubs are the
                # ones installed; its dependency copies are shown to the code again.
                with shared.binding():
                    loaded = fresh_import(candidate, import_plugin)
            else:
                loaded = self.import_generation(candidate, fresh=fresh, contract=contract)
            for service in manifest.services:
                owner = self._router.table.plugin_of(service)
                if owner is not None and owner != name:
                    raise PluginError(
                        f"plugin {name!r}: service {service} is served by plugin "
                        f"{owner!r} already; two plugins cannot serve the same service"
                    )
            context = self._contexts.build(manifest)
            servicers = [construct_servicer(cls, context) for cls in loaded.plugin.services]
            in_flight, drain_stage = InFlight(), DrainStage(name)
            stages = [*self._stages, drain_stage]
            routes: list[Route] = []
            descriptors = []
            for servicer in servicers:
                for binding in bind_servicer(servicer):
                    descriptors.append(binding.descriptor)
                    routes.extend(
                        build_routes(
                            binding,
                            plugin=name,
                            category=manifest.category,
                            stages=stages,
                            in_flight=in_flight,
                        )
                    )
            _check_http_bindings(name, routes)
            subscribers = [construct_servicer(cls, context) for cls in loaded.plugin.subscribers]
            handlers = self._event_handlers(name, manifest, [*servicers, *subscribers])
            # What was hashed (audited, checked against the allow-list) must be what
            # was imported: refused before the start hook runs when the files changed.
            if fresh:
                await _same_code(name, candidate, code)
            if loaded.plugin.on_start is not None:
                await run_hook(loaded.plugin.on_start, context, self._hook_timeout)
            started = (loaded.plugin, context)
            if loaded.plugin.health is not None:
                await self._until_healthy(name, loaded.plugin.health, context)
            if fresh:
                await _same_code(name, candidate, code)
        except BaseException as error:
            if started is not None:
                plugin, context = started
                if plugin.on_stop is not None:
                    with contextlib.suppress(Exception):
                        await run_hook(plugin.on_stop, context, self._hook_timeout)
            if previous is not None:
                restore_modules(candidate.module, previous)
            if serving is not None:
                self._contexts.restore_outbox(serving)
            if contract is not None:
                # The running version's stubs are what `import` finds again.
                contract.restore()
                contract.release()
            if not isinstance(error, Exception):
                raise
            raise PrepareError(_reason(name, manifest, error), error) from error
        return Generation(
            number=number,
            loaded=loaded,
            context=context,
            routes=routes,
            handlers={
                t: drain_stage.track(outside_calls(h), in_flight) for t, h in handlers.items()
            },
            in_flight=in_flight,
            drain=drain_stage,
            code_hash=code,
            contract_hash=contract_hash(descriptors),
            package=candidate.module,
            namespaces=frozenset(
                id(module.__dict__) for module in plugin_modules(candidate.module).values()
            ),
            contract=contract if contract is not None else shared,
        )

    async def _until_healthy(self, name: str, check: HealthCheck, context: PluginContext) -> None:
        limit = self._config.plugins.hot_swap.start_timeout
        deadline = asyncio.get_running_loop().time() + limit
        late = HookTimeoutError(
            f"plugin {name!r}: health not SERVING within {limit:g}s "
            "(plugins.hot_swap.start_timeout)"
        )
        while True:
            result = check(context)
            if inspect.isawaitable(result):
                # A check that never answers is bounded by the same deadline.
                try:
                    async with asyncio.timeout_at(deadline):
                        healthy = await result
                except TimeoutError:
                    raise late from None
            else:
                healthy = result
            if healthy:
                return
            if asyncio.get_running_loop().time() >= deadline:
                raise late
            await asyncio.sleep(0.05)

    def _event_handlers(
        self, name: str, manifest: Manifest, servicers: list[object]
    ) -> dict[str, Any]:
        """The plugin's event handlers, checked against what its manifest declares."""
        handlers: dict[str, Any] = {}
        for servicer in servicers:
            for event_type, handler in subscriptions_of(servicer).items():
                if event_type in handlers:
                    raise PluginError(f"plugin {name!r}: two handlers for {event_type}")
                handlers[event_type] = handler
        for key, declared in (("publishes", manifest.publishes), ("consumes", manifest.consumes)):
            for event_type in declared:
                if not event_type_exists(event_type):
                    raise PluginError(
                        f"plugin {name!r} ({manifest.path}): {key} lists {event_type}, which "
                        "is no known message type; import the stubs that define it"
                    )
        unhandled = sorted(set(manifest.consumes) - set(handlers))
        if unhandled:
            raise PluginError(
                f"plugin {name!r} ({manifest.path}): consumes {unhandled[0]} but no servicer "
                "method handles it; add a method decorated with @subscribe"
            )
        undeclared = sorted(set(handlers) - set(manifest.consumes))
        if undeclared:
            raise PluginError(
                f"plugin {name!r} ({manifest.path}): handles {undeclared[0]} which the "
                "manifest does not list; add it to `consumes`"
            )
        if handlers and self._bus is None:
            raise PluginError(f"plugin {name!r}: consumes events but the host has no event bus")
        return handlers


async def run_hook(hook: Hook, context: PluginContext, limit: float) -> None:
    """Run a start or stop hook (sync or async); HookTimeoutError past ``limit`` s."""
    result = hook(context)
    if inspect.isawaitable(result):
        async with asyncio.timeout(limit) as scope:
            try:
                await result
            except TimeoutError:
                if scope.expired():
                    raise HookTimeoutError(f"hook took longer than {limit}s") from None
                raise


async def _same_code(name: str, candidate: Candidate, code: str) -> None:
    """PluginError unless the plugin's files still hash to ``code`` (when given)."""
    if not code or candidate.package_dir is None:
        return
    try:
        again = await asyncio.to_thread(code_hash, candidate.package_dir)
    except (OSError, CodeTooLargeError) as error:
        raise PluginError(f"plugin {name!r}: cannot hash its code: {error}") from None
    if again != code:
        raise PluginError(
            f"plugin {name!r}: its files changed while it was being loaded; "
            "try again once they are written"
        )


def _check_http_bindings(plugin: str, routes: list[Route]) -> None:
    """Refuse a generation whose HTTP annotations the gateway could not serve, before
    it is swapped in (the gateway rebuilds its routes after the swap)."""
    for route in routes:
        try:
            bindings_for(route.info.descriptor)
        except BindingError as error:
            raise PluginError(f"plugin {plugin!r}: {error}") from None
    # The gateway answers these paths before any route: a binding there is unreachable.
    reserved = reserved_path_bindings(route.info.descriptor for route in routes)
    if reserved:
        raise PluginError(
            f"plugin {plugin!r}: HTTP binding on a path the host answers itself "
            f"({', '.join(sorted(RESERVED_PATHS))}): {'; '.join(reserved)}; "
            "choose another path in the contract's google.api.http options"
        )


def _reason(name: str, manifest: Manifest, error: Exception) -> str:
    """What to tell the operator about a generation that failed to build or start."""
    if isinstance(error, PluginError):
        return str(error)
    if isinstance(error, (ServicerError, TypeError)):
        return f"plugin {name!r} ({manifest.path}): {error}"
    if isinstance(error, HookTimeoutError):
        text = str(error)
        return text if text.startswith("plugin ") else f"plugin {name!r}: start {text}"
    return f"plugin {name!r} ({manifest.path}): start failed: {type(error).__name__}: {error}"
