"""The admin calls that change plugins in a running host: LoadPlugin, UnloadPlugin,
ReloadPlugin. Each is audited (``plugins.load``, ``plugins.unload``,
``plugins.reload``) with the code hash it loaded, besides the ``admin.call`` record
every administrative call leaves."""

from __future__ import annotations

from typing import Any

from nexus.admin.v1 import admin_pb2

from nexus_grpc.access.audit import AuditLog, Outcome
from nexus_grpc.auth.principal import ANONYMOUS, principal_var
from nexus_grpc.errors import StatusError
from nexus_grpc.plugins.manager import PluginManager
from nexus_grpc.plugins.swap import SwapRequest, SwapResult

__all__ = ["PluginsAdmin", "change_message"]


def change_message(result: SwapResult) -> admin_pb2.PluginChange:
    """``result`` as the admin contract states it (without the plugin itself)."""
    return admin_pb2.PluginChange(
        plugins=list(result.plugins),
        services_added=sorted(result.added.services),
        services_removed=sorted(result.removed.services),
        methods_added=sorted(result.added.methods),
        methods_removed=sorted(result.removed.methods),
        http_routes_added=sorted(result.added.routes),
        http_routes_removed=sorted(result.removed.routes),
        calls_cut=result.cut_calls,
        swap_millis=round(result.swap_seconds * 1000, 3),
    )


class PluginsAdmin:
    """Turns the admin requests into :class:`SwapRequest`\\ s and audits each."""

    def __init__(self, manager: PluginManager, audit: AuditLog) -> None:
        self._manager = manager
        self._audit = audit

    async def load(self, request: admin_pb2.LoadPluginRequest, context: Any) -> SwapResult:
        """Apply a LoadPlugin request."""
        swap = SwapRequest(request.name, "load", expected_hash=request.expected_code_hash)
        return await self._apply(swap, context)

    async def unload(self, request: admin_pb2.UnloadPluginRequest, context: Any) -> SwapResult:
        """Apply an UnloadPlugin request."""
        swap = SwapRequest(
            request.name,
            "unload",
            cascade=request.cascade,
            drain_timeout=request.drain_timeout_millis / 1000 or None,
        )
        return await self._apply(swap, context)

    async def reload(self, request: admin_pb2.ReloadPluginRequest, context: Any) -> SwapResult:
        """Apply a ReloadPlugin request."""
        swap = SwapRequest(
            request.name,
            "reload",
            expected_hash=request.expected_code_hash,
            drain_timeout=request.drain_timeout_millis / 1000 or None,
        )
        return await self._apply(swap, context)

    async def _apply(self, swap: SwapRequest, context: Any) -> SwapResult:
        principal = principal_var.get()
        actor = principal.subject if principal else ANONYMOUS
        try:
            result = await self._manager.swap.apply(swap)
        except StatusError as error:
            await self._audit.record(
                actor=actor,
                action=f"plugins.{swap.operation}",
                target=swap.plugin,
                outcome=Outcome.FAILED,
                reason=error.message,
                context=context,
            )
            raise
        reason = ", ".join(result.plugins)
        if result.code_hash:
            reason = f"code sha256:{result.code_hash}, generation {result.generation}"
        await self._audit.record(
            actor=actor,
            action=f"plugins.{swap.operation}",
            target=swap.plugin,
            outcome=Outcome.SUCCEEDED,
            reason=reason,
            context=context,
        )
        return result
