"""The plugin lifecycle: discover, order by requirements, load, start, serve, stop.

A broken plugin never takes the host down: it is recorded as failed with the reason,
its services report NOT_SERVING, the plugins requiring it fail too, and everything
else starts. With ``plugins.strict`` the host refuses to start instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_grpc.access.audit import AuditLog
from nexus_grpc.access.policy import MISSING_POLICY_FIX, methods_without_policy
from nexus_grpc.auth.principal import Grant
from nexus_grpc.cache import CacheManager
from nexus_grpc.config import Config
from nexus_grpc.events import EventBus, Publisher, event_type_exists, subscriptions_of
from nexus_grpc.events.outbox import Outbox
from nexus_grpc.gateway.bindings import RESERVED_PATHS, reserved_path_bindings
from nexus_grpc.pipeline import Stage
from nexus_grpc.plugins.bundled import is_bundled
from nexus_grpc.plugins.discovery import Candidate, discover_configured, excluded_by
from nexus_grpc.plugins.loader import LoadedPlugin, PluginError, import_plugin
from nexus_grpc.plugins.manifest import Manifest
from nexus_grpc.plugins.services import Services, outside_calls
from nexus_grpc.plugins.spec import Hook, PluginContext
from nexus_grpc.plugins.users import AUTH_PLUGIN
from nexus_grpc.routing import InFlight, Router
from nexus_grpc.storage import Namespace, Storage
from nexus_grpc.transport.health import HealthState
from nexus_grpc.transport.servicers import (
    ServicerError,
    bind_servicer,
    build_routes,
    construct_servicer,
)

__all__ = ["PluginManager", "PluginRecord", "PluginState", "StrictModeError"]

_log = logging.getLogger("nexus.plugins")


class HookTimeoutError(Exception):
    """A start or stop hook ran past ``plugins.hook_timeout``."""


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
    loaded: LoadedPlugin | None = None
    context: PluginContext | None = None
    in_flight: InFlight = field(default_factory=InFlight)

    @property
    def services(self) -> tuple[str, ...]:
        """Services the manifest declares."""
        return self.manifest.services if self.manifest else ()


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
        self._cache = cache
        self._bus = bus
        self._outbox = outbox
        self._audit = audit
        self._tokens = tokens
        self._storage = storage
        self._router = router
        self._stages = stages
        self._health = health
        self._records: dict[str, PluginRecord] = {}
        self._candidates: dict[str, Candidate] = {}
        self._start_order: list[str] = []
        # Services of failed plugins, published NOT_SERVING once loading is done (the
        # failure is recorded in sync code; publishing health is async).
        self._unhealthy: list[str] = []

    def records(self) -> list[PluginRecord]:
        """Every plugin record, sorted by name."""
        return [self._records[name] for name in sorted(self._records)]

    def record(self, name: str) -> PluginRecord | None:
        """The record of plugin ``name``."""
        return self._records.get(name)

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
            assert record.loaded is not None and record.context is not None
            hook = record.loaded.plugin.on_stop
            if hook is not None:
                try:
                    await self._run_hook(hook, record.context)
                except Exception:
                    _log.exception("plugin %r: stop hook failed", name, extra={"plugin": name})
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
        for required in manifest.requires:
            if "." in required:  # a service the plugin calls
                problem = self._unmet_service(required)
                if problem is not None:
                    self._fail(record, f"plugin {record.name!r} ({manifest.path}): {problem}")
                    return
                continue
            other = self._records.get(required)
            if other is None:
                known = ", ".join(sorted(self._records)) or "none"
                self._fail(
                    record,
                    f"requires plugin {required!r}, which was not found (discovered: {known}); "
                    "install it or remove it from `requires`",
                )
                return
            if other.state != PluginState.SERVING:
                self._fail(
                    record,
                    f"requires plugin {required!r}, which is {other.state.lower()}"
                    + (f": {other.error}" if other.error else ""),
                )
                return
        candidate = self._candidates[record.name]
        try:
            loaded = import_plugin(candidate)
            for service in manifest.services:
                owner = self._router.table.plugin_of(service)
                if owner is not None:
                    raise PluginError(
                        f"plugin {record.name!r}: service {service} is served by plugin "
                        f"{owner!r} already; two plugins cannot serve the same service"
                    )
            context = self._context(manifest)
            servicers = [construct_servicer(cls, context) for cls in loaded.plugin.services]
            routes = []
            for servicer in servicers:
                for binding in bind_servicer(servicer):
                    routes.extend(
                        build_routes(
                            binding,
                            plugin=record.name,
                            category=manifest.category,
                            stages=self._stages,
                            in_flight=record.in_flight,
                        )
                    )
            reserved = reserved_path_bindings(route.info.descriptor for route in routes)
            if reserved:
                raise PluginError(
                    f"plugin {record.name!r}: HTTP binding on a path the host answers itself "
                    f"({', '.join(sorted(RESERVED_PATHS))}): {'; '.join(reserved)}; "
                    "choose another path in the contract's google.api.http options"
                )
            subscribers = [construct_servicer(cls, context) for cls in loaded.plugin.subscribers]
            handlers = self._event_handlers(record.name, manifest, [*servicers, *subscribers])
            if loaded.plugin.on_start is not None:
                await self._run_hook(loaded.plugin.on_start, context)
        except PluginError as error:
            self._fail(record, str(error), error)
            return
        except (ServicerError, TypeError) as error:
            self._fail(record, f"plugin {record.name!r} ({manifest.path}): {error}", error)
            return
        except HookTimeoutError as error:
            self._fail(record, f"plugin {record.name!r}: start {error}")
            return
        except Exception as error:
            self._fail(
                record,
                f"plugin {record.name!r} ({manifest.path}): start failed: "
                f"{type(error).__name__}: {error}",
                error,
            )
            return
        self._router.add(routes)
        if self._bus is not None:
            for event_type, handler in handlers.items():
                self._bus.subscribe(record.name, event_type, outside_calls(handler))
        record.loaded, record.context, record.state = loaded, context, PluginState.SERVING
        self._start_order.append(record.name)
        for service in manifest.services:
            await self._health.set(service, True)
        for path in methods_without_policy(route.info.descriptor for route in routes):
            _log.warning(
                "plugin %r: %s declares no access policy, so every call to it is denied; %s",
                record.name,
                path,
                MISSING_POLICY_FIX,
                extra={"plugin": record.name, "method": path},
            )
        _log.info(
            "plugin %s %s serving %s",
            manifest.name,
            manifest.version,
            ", ".join(manifest.services) or "no services",
            extra={"plugin": manifest.name},
        )

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

    def _context(self, manifest: Manifest) -> PluginContext:
        self._check_permissions(manifest)
        data_dir = Path(self._config.data_dir) / "plugins" / manifest.name
        storage = self._storage.namespace(manifest.namespace)
        return PluginContext(
            name=manifest.name,
            category=manifest.category,
            config=dict(self._config.plugin.get(manifest.name, {})),
            storage=storage,
            logger=logging.getLogger(f"nexus.plugins.{manifest.name}"),
            data_dir=data_dir,
            audit=self._audit,
            tokens=self._tokens if self._may_issue_tokens(manifest) else None,
            events=self._publisher(manifest, storage),
            cache=self._cache.for_namespace(storage.name) if self._cache is not None else None,
            services=Services(
                self._router,
                manifest.name,
                manifest.required_services,
                permissions=manifest.permissions,
                source=manifest.path,
            ),
        )

    def _may_issue_tokens(self, manifest: Manifest) -> bool:
        """Only the bundled auth plugin and the plugins the operator lists may mint
        tokens: any other plugin holding the issuer could make itself an admin. The list
        adds to the bundled auth plugin, never replaces it (logins need the issuer)."""
        bundled = is_bundled(manifest.path)
        if manifest.name == AUTH_PLUGIN and bundled:
            return True
        if manifest.name not in self._config.auth.issuer_plugins:
            return False
        if not bundled:
            _log.warning(
                "plugin %r (%s) may mint tokens for any user: auth.issuer_plugins names it",
                manifest.name,
                Path(manifest.path).parent,
            )
        return True

    def _check_permissions(self, manifest: Manifest) -> None:
        """Fail the plugin when its manifest asks for grants the operator did not give.

        Installing a plugin must not be enough to hand it, say, ``roles.manage``.
        """
        granted = {
            Grant.parse(g) for g in self._config.auth.plugin_permissions.get(manifest.name, ())
        }
        missing = [p for p in manifest.permissions if Grant.parse(p) not in granted]
        if missing:
            listed = ", ".join(f'"{p}"' for p in manifest.permissions)
            raise PluginError(
                f"plugin {manifest.name!r} ({manifest.path}): its manifest asks for "
                f"{', '.join(missing)}, which the operator has not granted; add "
                f"`{manifest.name} = [{listed}]` under [auth.plugin_permissions] in the "
                "host configuration, or remove them from `permissions`"
            )

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

    def _publisher(self, manifest: Manifest, storage: Namespace) -> Publisher | None:
        if self._bus is None:
            return None
        declared = frozenset(manifest.publishes)
        outbox, inbox = self._outbox, None
        if outbox is not None:
            if declared:
                outbox.register(manifest.name, storage, declared)
            if manifest.consumes:
                inbox = outbox.inbox(storage, self._config.events.inbox_retention)
        return Publisher(self._bus, manifest.name, declared, outbox=outbox, inbox=inbox)

    async def _run_hook(self, hook: Hook, context: PluginContext) -> None:
        result = hook(context)
        if inspect.isawaitable(result):
            limit = self._config.plugins.hook_timeout
            async with asyncio.timeout(limit) as scope:
                try:
                    await result
                except TimeoutError:
                    if scope.expired():
                        raise HookTimeoutError(f"hook took longer than {limit}s") from None
                    raise

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
