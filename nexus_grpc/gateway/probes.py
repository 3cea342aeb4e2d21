"""Liveness and readiness, for HTTP-only checkers and gRPC health alike.

Load balancers and orchestrators that cannot speak grpc.health.v1 poll ``/healthz``
and ``/readyz`` on the HTTP port. Both are answered by the gateway before any route,
the pipeline, auth or rate limits, so a probe can neither be refused for lack of a
token nor throttled into reporting a healthy host as failed, nor be shadowed by a
plugin's route. The same verdicts are published on the gRPC port as the health
services :data:`LIVENESS` and :data:`READINESS` (kubelet's native gRPC probes, ``nexus
health --service``), computed by this module on every check: both ports agree.

- liveness (``/healthz``, ``nexus.liveness``) is true whenever the event loop runs: no
  dependency is checked, so an outage of the database never gets a healthy process
  restarted.
- readiness (``/readyz``, ``nexus.readiness``) is true only when the host is started
  and not draining, every plugin loaded (a FAILED plugin counts only under
  ``plugins.strict``: without it the host serves without the plugin, and the body
  reports it) and its services SERVING, the storage reachable and the event bus
  reachable (when it is Redis); otherwise 503 with a small JSON body naming what is
  not ready. It reads the host's own health state (the statuses grpc.health.v1
  publishes) rather than checking anew; the one active check is the storage probe,
  run at most once per ``probe_interval`` whatever the polling rate, because the
  storage turns unhealthy by itself only when a call fails on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from nexus_grpc.transport.health import OVERALL, HealthState

__all__ = ["LIVENESS", "PROBE_PATHS", "READINESS", "ProbeAnswer", "Probes", "ReadinessSources"]

#: The paths the probes answer (GET and HEAD).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
#: gRPC health service names of the liveness and readiness verdicts.
LIVENESS = "nexus.liveness"
READINESS = "nexus.readiness"

#: Health "service" names the host publishes besides plugin services, and what a
#: readiness failure of each is called. TLS expiry is a warning, not unreadiness.
_EVENTS = "nexus.events"
_STORAGE = "nexus.storage"
_TLS = "nexus.tls"
_HOST_SERVICES = frozenset({OVERALL, _EVENTS, _STORAGE, _TLS, LIVENESS, READINESS})


@dataclass(frozen=True)
class ProbeAnswer:
    """One probe response: HTTP status and JSON body."""

    status: int
    body: bytes


@dataclass(frozen=True)
class ReadinessSources:
    """Where readiness is read from; callables because the host fills them in as it
    starts (the gateway is built before storage and plugins exist)."""

    health: HealthState
    #: True from the moment the host starts to stop (before health turns NOT_SERVING).
    draining: Callable[[], bool]
    #: (name, state, health service names) of every plugin record; empty before the
    #: plugins are loaded.
    plugins: Callable[[], Iterable[tuple[str, str, tuple[str, ...]]]]
    #: Probe the storage now (True when it works); None before storage is open.
    storage_probe: Callable[[], Callable[[], Awaitable[bool]] | None]
    #: Seconds a storage probe result is reused.
    probe_interval: float = 2.0
    #: ``plugins.strict``: a FAILED plugin makes the host not ready (else it is reported).
    strict_plugins: bool = False


class Probes:
    """Answers the liveness and readiness paths."""

    def __init__(self, sources: ReadinessSources) -> None:
        self._sources = sources
        self._probed_at = -float("inf")
        self._probe_ok = True
        self._probing: asyncio.Future[bool] | None = None

    async def answer(self, path: str) -> ProbeAnswer:
        """The response to ``GET path`` (one of :data:`PROBE_PATHS`)."""
        if path == "/healthz":
            return ProbeAnswer(200, b'{"status":"alive"}')
        problems, degraded = await self.readiness()
        if not problems:
            if not degraded:
                return ProbeAnswer(200, b'{"status":"ready"}')
            body: dict[str, object] = {"status": "ready", "degraded": degraded}
            return ProbeAnswer(200, json.dumps(body, separators=(",", ":")).encode())
        body = {"status": "not ready", "checks": problems}
        if degraded:
            body["degraded"] = degraded
        return ProbeAnswer(503, json.dumps(body, separators=(",", ":")).encode())

    async def alive(self) -> bool:
        """Liveness: the event loop runs this, so the process is alive."""
        return True

    async def ready(self) -> bool:
        """Readiness, as ``/readyz`` answers it (the ``nexus.readiness`` check)."""
        problems, _ = await self.readiness()
        return not problems

    async def not_ready(self) -> dict[str, str]:
        """What keeps the host from being ready, by part; empty when it is ready."""
        problems, _ = await self.readiness()
        return problems

    async def readiness(self) -> tuple[dict[str, str], dict[str, str]]:
        """(what keeps the host from being ready, what it serves without), by part."""
        sources = self._sources
        if sources.draining():
            return {"host": "draining"}, {}
        health = sources.health
        overall = health.is_serving(OVERALL)
        if overall is None:
            return {"host": "starting"}, {}
        problems: dict[str, str] = {}
        degraded: dict[str, str] = {}
        # Without plugins.strict the host serves without a failed plugin: its failure
        # and its services' NOT_SERVING are reported, not a reason to leave rotation.
        tolerated: set[str] = set()
        for name, state, services in sources.plugins():
            if state == "FAILED":
                (problems if sources.strict_plugins else degraded)[f"plugin {name}"] = "failed"
                if not sources.strict_plugins:
                    tolerated.update(services)
        for service, serving in health.statuses().items():
            if not serving and service not in _HOST_SERVICES:
                into = degraded if service in tolerated else problems
                into[f"service {service}"] = "not serving"
        if health.is_serving(_EVENTS) is False:
            problems["events"] = "unreachable"
        if health.is_serving(_STORAGE) is False or not await self._storage_works():
            problems["storage"] = "unreachable"
        if not overall and not problems:
            # The overall status follows the parts above; NOT_SERVING for another reason.
            problems["host"] = "not serving"
        return problems, degraded

    async def _storage_works(self) -> bool:
        """The last storage probe's result, probing again once it is older than the
        interval; concurrent readiness checks share one probe."""
        probe = self._sources.storage_probe()
        if probe is None:
            return True
        if time.monotonic() - self._probed_at < self._sources.probe_interval:
            return self._probe_ok
        if self._probing is None or self._probing.done():
            # A context of its own: the probe's storage spans belong to no request.
            self._probing = asyncio.get_running_loop().create_task(
                self._probe(probe), context=contextvars.Context()
            )
        return await asyncio.shield(self._probing)

    async def _probe(self, probe: Callable[[], Awaitable[bool]]) -> bool:
        try:
            ok = await probe()
        except Exception:  # the probe bounds and classifies its failures; be safe
            ok = False
        self._probe_ok = ok
        self._probed_at = time.monotonic()
        return ok
