"""nexus.admin.v1.AdminService: the host's plugins, their state and their health."""

from __future__ import annotations

from typing import Any, cast

from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from nexus_grpc.audit import AuditLog
from nexus_grpc.errors import NotFoundError
from nexus_grpc.health import HealthState
from nexus_grpc.plugins.manager import PluginManager, PluginRecord

__all__ = ["AdminServicer"]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Reports what the plugin manager knows, live."""

    def __init__(self, manager: PluginManager, health: HealthState, audit: AuditLog) -> None:
        self._manager = manager
        self._health = health
        self._audit = audit

    async def ListAuditRecords(
        self, request: admin_pb2.ListAuditRecordsRequest, context: Any
    ) -> admin_pb2.ListAuditRecordsResponse:
        """Audit records, newest first."""
        page = await self._audit.list(
            page_size=request.page_size,
            page_token=request.page_token,
            actor=request.actor,
            action=request.action,
        )
        return admin_pb2.ListAuditRecordsResponse(
            records=page.items, next_page_token=page.next_page_token
        )

    async def ListPlugins(
        self, request: admin_pb2.ListPluginsRequest, context: Any
    ) -> admin_pb2.ListPluginsResponse:
        """Every plugin the host discovered, by name."""
        return admin_pb2.ListPluginsResponse(
            plugins=[self._describe(record) for record in self._manager.records()]
        )

    async def GetPlugin(
        self, request: admin_pb2.GetPluginRequest, context: Any
    ) -> admin_pb2.Plugin:
        """One plugin by name; NOT_FOUND when the host never discovered it."""
        record = self._manager.record(request.name)
        if record is None:
            raise NotFoundError("plugin", request.name)
        return self._describe(record)

    def _describe(self, record: PluginRecord) -> admin_pb2.Plugin:
        manifest = record.manifest
        plugin = admin_pb2.Plugin(
            name=record.name,
            source=record.source,
            state=cast(
                admin_pb2.PluginState, admin_pb2.PluginState.Value(f"PLUGIN_STATE_{record.state}")
            ),
            error=record.error,
        )
        if manifest is not None:
            plugin.version = manifest.version
            plugin.category = cast(
                admin_pb2.Category,
                admin_pb2.Category.Value(f"CATEGORY_{manifest.category.upper()}"),
            )
            plugin.description = manifest.description
            plugin.requires.extend(manifest.requires)
        plugin.services.extend(
            admin_pb2.ServiceStatus(name=name, serving=bool(self._health.is_serving(name)))
            for name in record.services
        )
        return plugin
