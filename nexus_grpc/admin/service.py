"""nexus.admin.v1.AdminService: the host's plugins, their state and their health, the
audit log, the event bus's dead letters, replay and backlog, the storage indexes, and
restarts of the worker processes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from nexus_grpc.access.audit import AuditLog
from nexus_grpc.admin.events import EventsAdmin
from nexus_grpc.admin.indexes import IndexesAdmin
from nexus_grpc.admin.plugins import PluginsAdmin, change_message
from nexus_grpc.errors import NotFoundError, StatusError
from nexus_grpc.plugins.manager import PluginManager, PluginRecord
from nexus_grpc.supervisor.channel import NoSupervisor, RestartRunning, SupervisorUnavailable
from nexus_grpc.transport.health import HealthState

__all__ = ["AdminServicer"]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Reports what the plugin manager knows, live; operates the event bus ``bus``."""

    def __init__(
        self,
        manager: PluginManager,
        health: HealthState,
        audit: AuditLog,
        *,
        bus: object | None = None,
        indexes: IndexesAdmin | None = None,
        restart_workers: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._manager = manager
        self._restart_workers = restart_workers
        self._health = health
        self._audit = audit
        self._events = EventsAdmin(bus)
        self._indexes = indexes
        self._plugins = PluginsAdmin(manager, audit)

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

    async def LoadPlugin(
        self, request: admin_pb2.LoadPluginRequest, context: Any
    ) -> admin_pb2.PluginChange:
        """Load a plugin of the configured folders or entry points into the running host."""
        return self._change(await self._plugins.load(request, context), request.name)

    async def UnloadPlugin(
        self, request: admin_pb2.UnloadPluginRequest, context: Any
    ) -> admin_pb2.PluginChange:
        """Drain and stop a plugin (and its dependents, with cascade)."""
        return self._change(await self._plugins.unload(request, context), request.name)

    async def ReloadPlugin(
        self, request: admin_pb2.ReloadPluginRequest, context: Any
    ) -> admin_pb2.PluginChange:
        """Swap a plugin for its code as it is now, dropping no call."""
        return self._change(await self._plugins.reload(request, context), request.name)

    def _change(self, result: Any, name: str) -> admin_pb2.PluginChange:
        change = change_message(result)
        record = self._manager.record(name)
        if record is not None:
            change.plugin.CopyFrom(self._describe(record))
        return change

    async def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: Any
    ) -> admin_pb2.ListDeadLettersResponse:
        """Dead letters, oldest first."""
        return await self._events.list_dead_letters(request)

    async def RedriveDeadLetter(
        self, request: admin_pb2.RedriveDeadLetterRequest, context: Any
    ) -> admin_pb2.RedriveDeadLetterResponse:
        """Deliver a dead letter to its group again; NOT_FOUND when there is none."""
        return await self._events.redrive(request)

    async def ReplayEvents(
        self, request: admin_pb2.ReplayEventsRequest, context: Any
    ) -> admin_pb2.ReplayEventsResponse:
        """Make a group handle a type's events again (Redis bus only)."""
        return await self._events.replay(request)

    async def GetEventStats(
        self, request: admin_pb2.GetEventStatsRequest, context: Any
    ) -> admin_pb2.EventStats:
        """Pending, lag and dead letters per consumer group."""
        return await self._events.stats()

    async def ListIndexes(
        self, request: admin_pb2.ListIndexesRequest, context: Any
    ) -> admin_pb2.ListIndexesResponse:
        """The indexes nexus built, and the retired ones."""
        return await self._storage_indexes().list()

    async def RetireIndexes(
        self, request: admin_pb2.RetireIndexesRequest, context: Any
    ) -> admin_pb2.RetireIndexesResponse:
        """Retire the indexes of a message type no process declares any more."""
        return await self._storage_indexes().retire(request)

    def _storage_indexes(self) -> IndexesAdmin:
        if self._indexes is None:
            raise StatusError(grpc.StatusCode.UNIMPLEMENTED, "this host has no storage")
        return self._indexes

    async def RestartWorkers(
        self, request: admin_pb2.RestartWorkersRequest, context: Any
    ) -> admin_pb2.RestartWorkersResponse:
        """Start a rolling restart of the worker processes (see the contract)."""
        if request.policy not in (
            admin_pb2.RESTART_POLICY_UNSPECIFIED,
            admin_pb2.RESTART_POLICY_ROLLING,
        ):
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"policy: unknown restart policy {request.policy} (only ROLLING is offered)",
            )
        if self._restart_workers is None:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, "this host has no workers")
        try:
            count = await self._restart_workers()
        except NoSupervisor as error:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        except RestartRunning as error:
            raise StatusError(grpc.StatusCode.ABORTED, str(error)) from None
        except SupervisorUnavailable as error:
            # Starting, stopping or not answering: the same call later may succeed.
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE, f"{error}; try again in a few seconds"
            ) from None
        return admin_pb2.RestartWorkersResponse(workers=count)

    def _describe(self, record: PluginRecord) -> admin_pb2.Plugin:
        manifest = record.manifest
        plugin = admin_pb2.Plugin(
            name=record.name,
            source=record.source,
            state=cast(
                admin_pb2.PluginState, admin_pb2.PluginState.Value(f"PLUGIN_STATE_{record.state}")
            ),
            error=record.error,
            swap_error=record.swap_error,
        )
        generation = record.current
        if generation is not None:
            plugin.generation = generation.number
            if generation.code_hash:
                plugin.code_hash = f"sha256:{generation.code_hash}"
            if generation.contract_hash:
                plugin.contract_hash = f"sha256:{generation.contract_hash}"
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
