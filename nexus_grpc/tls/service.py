"""Both ports' TLS for a host: loading, reloads (file watch and SIGHUP), expiry.

Expiry is reported three ways: the gauge ``nexus_tls_certificate_expiry_seconds{port}``
(seconds until notAfter, negative once past), a WARNING log line (when the certificate
enters the ``expiry_warning_days`` window, then hourly), and the health entry
``nexus.tls``: NOT_SERVING while a served certificate is inside that window or expired.
The overall health ("") is left alone, so load balancers keep routing to the host (every
instance usually shares the certificate: taking them out would stop the whole service)
while monitoring that watches ``nexus.tls`` gets its warning in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_grpc.config import Config
from nexus_grpc.tls.ports import GrpcTls, HttpTls, PortTls

__all__ = ["EXPIRY_METRIC", "TLS_HEALTH", "TlsExpiryMetrics", "TlsService"]

#: Health "service" name reporting whether the served certificates are far from expiry.
TLS_HEALTH = "nexus.tls"
EXPIRY_METRIC = "nexus_tls_certificate_expiry_seconds"

_log = logging.getLogger("nexus.tls")

# Seconds between checks when a port polls no files (reload_interval 0): expiry is still
# watched. And between two warnings about the same expiring certificate.
_EXPIRY_CHECK = 60.0
_WARNING_REPEAT = 3600.0
_DAY = 86400.0


class TlsService:
    """The TLS of the gRPC port and of the HTTP port (each None when plaintext)."""

    def __init__(self, config: Config) -> None:
        self.grpc = GrpcTls(config.server.tls) if config.server.tls.enabled else None
        http = config.http
        self.http = HttpTls(http.tls) if http.address and http.tls.enabled else None
        self._tasks: list[asyncio.Task[None]] = []
        self._on_health: Callable[[bool], Awaitable[None]] | None = None
        self._next_warning: dict[str, float] = {}
        self._healthy: bool | None = None

    @property
    def ports(self) -> list[PortTls]:
        """The ports that speak TLS."""
        return [port for port in (self.grpc, self.http) if port is not None]

    async def start(self, on_health: Callable[[bool], Awaitable[None]]) -> None:
        """Report expiry now, then watch the files of every TLS port."""
        self._on_health = on_health
        await self.check_expiry()
        for port in self.ports:
            self._tasks.append(asyncio.create_task(self._watch(port), name=f"tls-{port.port}"))

    async def stop(self) -> None:
        """Stop watching."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self) -> int:
        """Read every port's files again (SIGHUP); the number of ports that changed."""
        changed = 0
        for port in self.ports:
            changed += await port.reload()
        await self.check_expiry()
        return changed

    async def check_expiry(self, now: float | None = None) -> None:
        """Warn about certificates expiring soon and update ``nexus.tls`` health."""
        now = time.time() if now is None else now
        healthy = True
        for port in self.ports:
            left = port.seconds_left(now)
            window = port.config.expiry_warning_days * _DAY
            if left > window:
                self._next_warning.pop(port.port, None)
                continue
            healthy = False
            if now >= self._next_warning.get(port.port, 0.0):
                self._next_warning[port.port] = now + _WARNING_REPEAT
                state = "expired" if left <= 0 else "expires"
                _log.warning(
                    "%s: the certificate (serial %x, %s) %s %s (%.1f days); replace %s",
                    port.where,
                    port.material.serial,
                    port.material.subject,
                    state,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(port.material.not_after)),
                    left / _DAY,
                    port.config.cert_file,
                    extra={"port": port.port, "expiry_seconds": round(left)},
                )
        if healthy != self._healthy and self._on_health is not None:
            self._healthy = healthy
            await self._on_health(healthy)

    async def _watch(self, port: PortTls) -> None:
        interval = port.config.reload_interval
        while True:
            await asyncio.sleep(interval if interval > 0 else _EXPIRY_CHECK)
            try:
                if interval > 0:
                    await port.reload()
                await self.check_expiry()
            except Exception:  # a bug here must not end the watch for good
                _log.exception("%s: checking the certificate files failed", port.where)


class TlsExpiryMetrics(Collector):
    """``nexus_tls_certificate_expiry_seconds{port}``: seconds until a certificate's notAfter."""

    def __init__(self, service: TlsService) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        """The gauge with one sample per TLS port."""
        gauge = GaugeMetricFamily(
            EXPIRY_METRIC,
            "Seconds until the certificate a port serves expires (negative once expired).",
            labels=("port",),
        )
        now = time.time()
        for port in self._service.ports:
            gauge.add_metric((port.port,), port.seconds_left(now))
        yield gauge
