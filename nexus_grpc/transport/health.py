"""grpc.health.v1 status of the host and of each service, kept in one place."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from nexus_grpc.errors import ShuttingDownError

__all__ = ["OVERALL", "REFRESH_INTERVAL", "HealthState"]

_log = logging.getLogger("nexus.health")

#: The empty service name is the status of the host as a whole.
OVERALL = ""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpcio's servicer plus ``List``, which its contract declares but it leaves out."""

    def __init__(self, state: HealthState) -> None:
        super().__init__()
        self._state = state
        #: Watch calls in progress: shutdown lets them deliver NOT_SERVING before the
        #: host ends every stream.
        self._watches: set[asyncio.Task[Any]] = set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        """grpcio's Check, except that a computed service is evaluated now (and its
        published status updated, for Watch and List)."""
        check = self._state.computed(request.service)
        if check is None:
            return await super().Check(request, context)
        serving = await check()
        await self._state.set(request.service, serving)
        return health_pb2.HealthCheckResponse(status=_SERVING if serving else _NOT_SERVING)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """grpcio's Watch, except that shutdown ends it: NOT_SERVING, then UNAVAILABLE.

        Ending the call itself, right after NOT_SERVING is written, is what makes the
        order certain: were the host to end it from outside, it could cancel the call
        before the watcher's last status went out.
        """
        service = request.service
        if self._state.computed(service) is not None:
            # Evaluated on each Check: a watcher needs it evaluated on a clock too.
            await self._state.refresh(service)
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        task = asyncio.current_task()
        if task is not None:
            self._watches.add(task)
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, _UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._gracefully_shutting_down:
                        raise ShuttingDownError()
                    await condition.wait()
        finally:
            if task is not None:
                self._watches.discard(task)
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]

    async def enter_graceful_shutdown(self, settle: float = 1.0) -> None:
        """Everything NOT_SERVING for good; wait up to ``settle`` seconds for watchers
        to have been told and their calls to end."""
        await super().enter_graceful_shutdown()
        # Watchers of a service with no status were not woken by the base class.
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()
        pending = [task for task in self._watches if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=settle)

    def watched(self, service: str) -> bool:
        """Whether a Watch call of ``service`` is in progress."""
        count: int = self._watcher_count_by_service.get(service, 0)
        return count > 0

    async def forget(self, service: str) -> None:
        """Drop ``service``'s status: Check answers NOT_FOUND and Watch SERVICE_UNKNOWN,
        as grpc.health.v1 specifies for a service the server does not know."""
        self._server_status.pop(service, None)
        condition = self._server_watchers.get(service)
        if condition is not None:
            async with condition:
                condition.notify_all()

    async def List(
        self, request: health_pb2.HealthListRequest, context: object
    ) -> health_pb2.HealthListResponse:
        """Every service with a status, and its status."""
        response = health_pb2.HealthListResponse()
        for service, serving in self._state.statuses().items():
            response.statuses[service].status = _SERVING if serving else _NOT_SERVING
        return response


#: Seconds between two evaluations of a computed service while it is watched.
REFRESH_INTERVAL = 1.0


class HealthState:
    """Serving statuses, published through the standard grpc.health.v1 servicer."""

    def __init__(self) -> None:
        self.servicer = _HealthServicer(self)
        self._serving: dict[str, bool] = {}
        self._computed: dict[str, Callable[[], Awaitable[bool]]] = {}
        #: The task evaluating each watched computed service (strong references).
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._shutting_down = False
        #: Computed services whose check failed last time (logged once until it works).
        self._failing: set[str] = set()

    async def compute(self, service: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Publish ``service`` with the status ``check`` gives, evaluated again on every
        ``Check`` call, and every :data:`REFRESH_INTERVAL` seconds while a Watch call
        of it is in progress (readiness, liveness)."""
        self._computed[service] = check
        await self.set(service, await check())

    async def refresh(self, service: str) -> None:
        """Evaluate the computed ``service`` now, and again every
        :data:`REFRESH_INTERVAL` seconds for as long as it is watched: a watcher (gRPC
        client-side health checking, a balancer) learns of a change within that time.
        Once the host is shutting down, statuses stay as :meth:`shut_down` left them."""
        if self._shutting_down:
            return
        check = self._computed[service]
        await self.set(service, await self._evaluate(service, check))
        task = self._refreshing.get(service)
        if task is None or task.done():
            # A context of its own: not the first watcher's call.
            self._refreshing[service] = asyncio.get_running_loop().create_task(
                self._refresh_while_watched(service, check),
                name=f"nexus-health-{service}",
                context=contextvars.Context(),
            )

    async def _refresh_while_watched(
        self, service: str, check: Callable[[], Awaitable[bool]]
    ) -> None:
        # The watcher that started this may not be counted yet: look after the sleep.
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            if (
                self._shutting_down
                or not self.servicer.watched(service)
                or self._computed.get(service) is not check
                or service not in self._serving  # forgotten
            ):
                return
            serving = await self._evaluate(service, check)
            if serving != self._serving.get(service):
                await self.set(service, serving)

    async def _evaluate(self, service: str, check: Callable[[], Awaitable[bool]]) -> bool:
        """``check()``; a check that fails says NOT_SERVING rather than failing the
        watcher's call or ending the refreshing (logged once until it works again)."""
        try:
            serving = await check()
        except Exception:
            if service not in self._failing:
                self._failing.add(service)
                _log.exception("evaluating the health of %r failed; NOT_SERVING", service)
            return False
        self._failing.discard(service)
        return serving

    def computed(self, service: str) -> Callable[[], Awaitable[bool]] | None:
        """The check of a computed service; None for a service whose status is set."""
        return self._computed.get(service)

    async def set(self, service: str, serving: bool) -> None:
        """Publish ``service``'s status; watchers are notified."""
        self._serving[service] = serving
        await self.servicer.set(service, _SERVING if serving else _NOT_SERVING)

    async def forget(self, service: str) -> None:
        """The host no longer serves ``service`` (its plugin was unloaded): it has no
        status any more, and its watchers are told SERVICE_UNKNOWN."""
        self._serving.pop(service, None)
        await self.servicer.forget(service)

    def statuses(self) -> dict[str, bool]:
        """Every service with a status: True when serving."""
        return dict(self._serving)

    def is_serving(self, service: str) -> bool | None:
        """The status last set for ``service``; None when it has none."""
        return self._serving.get(service)

    async def shut_down(self) -> None:
        """Mark everything NOT_SERVING for good: the host is going away."""
        self._shutting_down = True
        for task in self._refreshing.values():
            task.cancel()
        self._refreshing.clear()
        for service in self._serving:
            self._serving[service] = False
        await self.servicer.enter_graceful_shutdown()
