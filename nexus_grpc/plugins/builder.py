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
from nexus_grpc.plugins.discovery import Candidate
from nexus_grpc.plugins.drain import DrainStage
from nexus_grpc.plugins.fingerprint import contract_hash
from nexus_grpc.plugins.generation import Generation
from nexus_grpc.plugins.loader import LoadedPlugin, PluginError, import_plugin
from nexus_grpc.plugins.manifest import Manifest
from nexus_grpc.plugins.modules import fresh_import, plugin_modules
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

    def import_generation(self, candidate: Candidate, *, fresh: bool) -> LoadedPlugin:
        """Import the plugin's code (and with it its contract) for a new generation.

        This is where a generation's contract is loaded: the generated stubs the
        plugin imports register its ``.proto`` files in the default descriptor pool,
        which takes a file again only when it is unchanged, so a reload may change
        code but not the contract. ``fresh`` imports the plugin's own modules anew
        (a reload): the old generation keeps the modules it holds.
        """
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
    ) -> Generation:
        """Import, construct and start generation ``number`` of plugin ``name``, off to
        the side: nothing is routed to it yet. PrepareError says why it cannot be, and
        leaves nothing started behind (``serving``, the manifest of the generation
        serving now, gets its outbox registration back)."""
        manifest = candidate.manifest
        assert manifest is not None
        started: tuple[Plugin, PluginContext] | None = None
        try:
            loaded = self.import_generation(candidate, fresh=fresh)
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
            if loaded.plugin.on_start is not None:
                await run_hook(loaded.plugin.on_start, context, self._hook_timeout)
            started = (loaded.plugin, context)
            if loaded.plugin.health is not None:
                await self._until_healthy(name, loaded.plugin.health, context)
        except BaseException as error:
            if started is not None:
                plugin, context = started
                if plugin.on_stop is not None:
                    with contextlib.suppress(Exception):
                        await run_hook(plugin.on_stop, context, self._hook_timeout)
            if serving is not None:
                self._contexts.restore_outbox(serving)
            if not isinstance(error, Exception):
                raise
            raise PrepareError(_reason(name, manifest, error), error) from error
        return Generation(
            number=number,
            loaded=loaded,
            context=context,
            routes=routes,
            handlers={t: outside_calls(h) for t, h in handlers.items()},
            in_flight=in_flight,
            drain=drain_stage,
            code_hash=code,
            contract_hash=contract_hash(descriptors),
            package=candidate.module,
            namespaces=frozenset(
                id(module.__dict__) for module in plugin_modules(candidate.module).values()
            ),
        )

    async def _until_healthy(self, name: str, check: HealthCheck, context: PluginContext) -> None:
        limit = self._config.plugins.hot_swap.start_timeout
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            result = check(context)
            healthy = await result if inspect.isawaitable(result) else result
            if healthy:
                return
            if asyncio.get_running_loop().time() >= deadline:
                raise HookTimeoutError(
                    f"plugin {name!r}: health not SERVING within {limit:g}s "
                    "(plugins.hot_swap.start_timeout)"
                )
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
