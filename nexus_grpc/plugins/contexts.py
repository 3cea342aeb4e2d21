"""What a plugin is given: its :class:`PluginContext`, built for each generation and
checked against what the operator granted it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nexus_grpc.access.audit import AuditLog
from nexus_grpc.auth.principal import Grant
from nexus_grpc.cache import CacheManager
from nexus_grpc.config import Config
from nexus_grpc.events import EventBus, Publisher
from nexus_grpc.events.outbox import Outbox
from nexus_grpc.plugins.bundled import is_bundled
from nexus_grpc.plugins.loader import PluginError
from nexus_grpc.plugins.manifest import Manifest
from nexus_grpc.plugins.services import Services
from nexus_grpc.plugins.spec import PluginContext
from nexus_grpc.plugins.users import AUTH_PLUGIN
from nexus_grpc.routing import Router
from nexus_grpc.storage import Namespace, Storage

__all__ = ["ContextFactory"]

_log = logging.getLogger("nexus.plugins")


class ContextFactory:
    """Builds plugin contexts from the host's parts."""

    def __init__(
        self,
        config: Config,
        *,
        storage: Storage,
        router: Router,
        audit: AuditLog | None,
        tokens: Any,
        bus: EventBus | None,
        outbox: Outbox | None,
        cache: CacheManager | None,
    ) -> None:
        self._config = config
        self._storage = storage
        self._router = router
        self._audit = audit
        self._tokens = tokens
        self._bus = bus
        self._outbox = outbox
        self._cache = cache

    def build(self, manifest: Manifest) -> PluginContext:
        """The context of a new generation of ``manifest``'s plugin; PluginError when
        the manifest asks for grants the operator did not give."""
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

    def restore_outbox(self, manifest: Manifest) -> None:
        """A new generation failed: the outbox relays for ``manifest``, the serving
        one's, again (the new one registered its own before its start hook, which may
        publish)."""
        if self._outbox is not None and manifest.publishes:
            storage = self._storage.namespace(manifest.namespace)
            self._outbox.register(manifest.name, storage, frozenset(manifest.publishes))

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
