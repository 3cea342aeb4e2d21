"""The contract's default deadline, for calls whose client set none."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from nexus_grpc.errors import StatusError
from nexus_grpc.routing import CallHandler, MethodInfo

__all__ = ["DeadlineStage"]


class DeadlineStage:
    """Bounds calls by the policy's ``default_deadline`` when the caller sent no deadline."""

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """``next`` unchanged unless the method declares a default deadline."""
        seconds = method.policy.default_deadline if method.policy else None
        if not seconds:
            return next

        async def bounded(request: Any, context: Any) -> Any:
            if context.time_remaining() is not None:
                return await next(request, context)
            scope = asyncio.timeout(seconds)
            try:
                async with scope:
                    return await next(request, context)
            except TimeoutError:
                if not scope.expired():
                    raise  # the handler's own TimeoutError, not our deadline
                raise StatusError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the method's default deadline of {seconds:g}s passed",
                    reason="DEFAULT_DEADLINE_EXCEEDED",
                ) from None

        return bounded
