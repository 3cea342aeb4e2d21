"""grpc.health.v1 status of the host and of each service, kept in one place."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

__all__ = ["OVERALL", "HealthState"]

#: The empty service name is the status of the host as a whole.
OVERALL = ""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpcio's servicer plus ``List``, which its contract declares but it leaves out."""

    def __init__(self, state: HealthState) -> None:
        super().__init__()
        self._state = state

    async def List(
        self, request: health_pb2.HealthListRequest, context: object
    ) -> health_pb2.HealthListResponse:
        """Every service with a status, and its status."""
        response = health_pb2.HealthListResponse()
        for service, serving in self._state.statuses().items():
            response.statuses[service].status = _SERVING if serving else _NOT_SERVING
        return response


class HealthState:
    """Serving statuses, published through the standard grpc.health.v1 servicer."""

    def __init__(self) -> None:
        self.servicer = _HealthServicer(self)
        self._serving: dict[str, bool] = {}

    async def set(self, service: str, serving: bool) -> None:
        """Publish ``service``'s status; watchers are notified."""
        self._serving[service] = serving
        await self.servicer.set(service, _SERVING if serving else _NOT_SERVING)

    def statuses(self) -> dict[str, bool]:
        """Every service with a status: True when serving."""
        return dict(self._serving)

    def is_serving(self, service: str) -> bool | None:
        """The status last set for ``service``; None when it has none."""
        return self._serving.get(service)

    async def shut_down(self) -> None:
        """Mark everything NOT_SERVING for good: the host is going away."""
        for service in self._serving:
            self._serving[service] = False
        await self.servicer.enter_graceful_shutdown()
