"""Prometheus metrics of every call, with go-grpc-prometheus names and labels.

Dashboards and alerts written for go-grpc-prometheus work unchanged: the series are
``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_handling_seconds``, ``grpc_server_msg_received_total`` and
``grpc_server_msg_sent_total`` with the labels ``grpc_type``, ``grpc_service``,
``grpc_method`` (and ``grpc_code``, spelled as grpc-go spells codes: ``OK``,
``NotFound``, ``Canceled`` ...), plus two of ours: ``transport`` (grpc, rest, grpc-web;
inproc for one plugin calling another, a series that appears once such a call happened)
and ``plugin``. Besides them: ``nexus_server_in_flight_calls{plugin}`` and
``nexus_server_unknown_method_total{transport}``.

Cost is what matters here (the whole pipeline has ~10 µs per call). Even with label
children bound once per method, prometheus-client's metric objects take a lock per
update (~0.3 µs each; a call needs six or seven updates). So the stage keeps plain
numbers in one slotted object per method and transport, bound when the stage is bound,
and a collector turns them into metric families when ``/metrics`` is scraped. All
updates happen on the event loop's thread (grpc.aio and the gateway serve calls there),
so no lock is needed; a scrape from another thread may at worst see a call half
counted.

Label values come only from descriptors, a fixed set of transports and the fixed set of
status codes, so cardinality is bounded by the contracts. Unknown methods never reach a
stage; :meth:`Metrics.count_unknown` counts them under their transport only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nexus_grpc.errors import StatusError
from nexus_grpc.pipeline.codes import as_code, cancelled_code, code_label
from nexus_grpc.routing import Arity, CallHandler, MethodInfo

__all__ = [
    "DEFAULT_BUCKETS",
    "LAZY_TRANSPORTS",
    "TRANSPORTS",
    "Metrics",
    "MetricsStage",
    "code_label",
]

#: go-grpc-prometheus' histogram buckets (Prometheus' ``DefBuckets``), in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

#: Transports a call can arrive by; a context naming any other is counted as "other".
TRANSPORTS: tuple[str, ...] = ("grpc", "rest", "grpc-web")
#: Transports whose series are bound on first use (most hosts never see them).
LAZY_TRANSPORTS: frozenset[str] = frozenset({"inproc"})
_OTHER = "other"

_OK = grpc.StatusCode.OK

_log = logging.getLogger("nexus.metrics")


class _Series:
    """The numbers of one method on one transport; updated in place by the stage."""

    __slots__ = ("buckets", "failed", "labels", "ok", "received", "sent", "started", "sum")

    def __init__(self, labels: tuple[str, str, str, str, str], bucket_count: int) -> None:
        #: grpc_type, grpc_service, grpc_method, transport, plugin.
        self.labels = labels
        self.started = 0
        self.received = 0
        self.sent = 0
        #: Calls that ended OK; the common case gets a plain attribute.
        self.ok = 0
        #: Calls that ended with any other code.
        self.failed: dict[grpc.StatusCode, int] = {}
        #: Non-cumulative histogram bucket counts; the last one is +Inf.
        self.buckets = [0] * (bucket_count + 1)
        self.sum = 0.0

    def count_failure(self, code: grpc.StatusCode) -> None:
        self.failed[code] = self.failed.get(code, 0) + 1


class _Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Metrics:
    """The host's metrics, in a registry of their own.

    Each instance has its own :class:`~prometheus_client.CollectorRegistry` (never the
    process-wide default), so several hosts in one process — tests — do not clash.
    Other components may register their own collectors on :attr:`registry`; with
    ``process_metrics`` (the default) it also has the ``process_*``, ``python_info``
    and ``python_gc_*`` series the default registry would have had.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.buckets: tuple[float, ...] = tuple(sorted(float(b) for b in buckets))
        if not self.buckets or self.buckets[-1] == float("inf"):
            raise ValueError("histogram buckets must be finite upper bounds (+Inf is implied)")
        self._series: dict[tuple[str, str, str, str, str], _Series] = {}
        self._in_flight: dict[str, _Gauge] = {}
        self._unknown: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)
        self._scrape_hooks: list[Callable[[], Awaitable[None]]] = []
        self._shared: Callable[[CollectorRegistry], bytes] | None = None
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def count_unknown(self, transport: str) -> None:
        """Count a call of a method no route serves; ``transport`` is grpc, rest or grpc-web."""
        key = transport if transport in self._unknown else _OTHER
        self._unknown[key] = self._unknown.get(key, 0) + 1

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` answers); with
        :meth:`share`, every worker's numbers merged."""
        if self._shared is not None:
            return self._shared(self.registry)
        return generate_latest(self.registry)

    def share(self, exposition: Callable[[CollectorRegistry], bytes]) -> None:
        """Answer scrapes with ``exposition(registry)`` instead: a worker of several
        merges its numbers with the others' (:mod:`nexus_grpc.supervisor.metrics`)."""
        self._shared = exposition

    def on_scrape(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` before each ``/metrics`` exposition: collectors whose values
        need I/O (the Redis event bus's backlog) refresh them there, within a time
        limit of their own, since collectors themselves are synchronous."""
        self._scrape_hooks.append(hook)

    async def refresh(self) -> None:
        """Run the scrape hooks; a failing hook is logged, never fails the scrape."""
        for hook in self._scrape_hooks:
            try:
                await hook()
            except Exception:
                _log.exception("metrics scrape hook failed")

    def stage(self) -> MetricsStage:
        """A pipeline stage recording into these metrics."""
        return MetricsStage(self)

    def _bind(self, labels: tuple[str, str, str, str, str]) -> _Series:
        # The same method bound again (a new routing generation) keeps counting on.
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(labels, len(self.buckets))
        return series

    def _gauge(self, plugin: str) -> _Gauge:
        gauge = self._in_flight.get(plugin)
        if gauge is None:
            gauge = self._in_flight[plugin] = _Gauge()
        return gauge


_LABELS = ("grpc_type", "grpc_service", "grpc_method", "transport", "plugin")
_HANDLED_LABELS = ("grpc_type", "grpc_service", "grpc_method", "grpc_code", "transport", "plugin")


class _Collector(Collector):
    """Turns the stage's numbers into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (no samples), for duplicate detection."""
        return list(self._families([], {}, {}))

    def collect(self) -> Iterable[Metric]:
        """Every family with its current samples."""
        metrics = self._metrics
        return list(
            self._families(
                list(metrics._series.values()), dict(metrics._in_flight), dict(metrics._unknown)
            )
        )

    def _families(
        self, all_series: list[_Series], in_flight: dict[str, _Gauge], unknown: dict[str, int]
    ) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.", labels=_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=_HANDLED_LABELS,
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been "
            "application-level handled by the server.",
            labels=_LABELS,
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server.",
            labels=_LABELS,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server.",
            labels=_LABELS,
        )
        bounds = [*(_le(b) for b in self._metrics.buckets), "+Inf"]
        for series in all_series:
            labels = series.labels
            started.add_metric(labels, series.started)
            received.add_metric(labels, series.received)
            sent.add_metric(labels, series.sent)
            grpc_type, service, method, transport, plugin = labels
            # OK is always there; other codes appear once they happened (17 codes x
            # 3 transports x every method at zero would swamp the exposition).
            handled.add_metric((grpc_type, service, method, "OK", transport, plugin), series.ok)
            for code, count in sorted(series.failed.items(), key=lambda item: item[0].value):
                code_labels = (grpc_type, service, method, code_label(code), transport, plugin)
                handled.add_metric(code_labels, count)
            cumulative, total = [], 0
            for bound, count in zip(bounds, series.buckets, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            seconds.add_metric(labels, cumulative, series.sum)
        yield from (started, handled, seconds, received, sent)
        gauge = GaugeMetricFamily(
            "nexus_server_in_flight_calls", "Calls being served right now.", labels=("plugin",)
        )
        for plugin, value in sorted(in_flight.items()):
            gauge.add_metric((plugin,), value.value)
        yield gauge
        unknown_family = CounterMetricFamily(
            "nexus_server_unknown_method",
            "Calls of methods no plugin serves (answered UNIMPLEMENTED or 404).",
            labels=("transport",),
        )
        for transport, count in unknown.items():
            unknown_family.add_metric((transport,), count)
        yield unknown_family


def _le(bound: float) -> str:
    # Prometheus' own spelling of bucket bounds: 0.005, 1.0, 10.0.
    return repr(float(bound))


class MetricsStage:
    """Counts and times every call; bind it outside the error stage.

    Outside the error stage it sees the status the client gets: a handled error arrives
    as ``grpc.aio.AbortError`` with the code already set on the context. Codes: a call
    that returns has ``context.code()`` or OK; an aborted one the code the context
    holds; a cancelled one DEADLINE_EXCEEDED when its deadline has passed, else
    CANCELLED; a :class:`StatusError` (no error stage below) its code; anything else
    INTERNAL, which is what the error stage would have answered.

    Messages: unary requests and responses count one each (a response only when the
    call succeeds, as in go-grpc-prometheus); streamed requests are counted by wrapping
    the request iterator, streamed responses by handing the stages below a small proxy
    of the context whose ``write`` counts. Unary methods get neither wrapper.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Bind ``method``'s series (all transports) and wrap ``next`` with the counting."""
        metrics = self._metrics
        base = (method.arity.grpc_type, method.service, method.method)
        plugin = method.plugin
        by_transport = {t: metrics._bind((*base, t, plugin)) for t in TRANSPORTS}

        def other_transport(transport: str) -> _Series:
            # Bounded: two more series per method at most, whatever a context claims.
            key = transport if transport in LAZY_TRANSPORTS else _OTHER
            series = by_transport.get(key)
            if series is None:
                series = by_transport[key] = metrics._bind((*base, key, plugin))
            return series

        gauge = metrics._gauge(plugin)
        bounds = metrics.buckets
        if method.arity is Arity.UNARY_UNARY:
            return _unary(next, by_transport, other_transport, gauge, bounds)
        return _streaming(next, by_transport, other_transport, gauge, bounds, method.arity)


def _unary(
    next: CallHandler,
    by_transport: dict[str, _Series],
    other_transport: Any,
    gauge: _Gauge,
    bounds: tuple[float, ...],
) -> CallHandler:
    # The hot path: no wrappers, no proxy, plain arithmetic on bound objects.
    perf_counter = time.perf_counter
    lookup = by_transport.get

    async def measured(request: Any, context: Any) -> Any:
        transport = getattr(context, "transport", "grpc")
        series = lookup(transport) or other_transport(transport)
        series.started += 1
        series.received += 1
        gauge.value += 1
        started = perf_counter()
        try:
            response = await next(request, context)
        except BaseException as failure:
            elapsed = perf_counter() - started
            gauge.value -= 1
            series.buckets[bisect_left(bounds, elapsed)] += 1
            series.sum += elapsed
            series.count_failure(_failure_code(failure, context))
            raise
        elapsed = perf_counter() - started
        gauge.value -= 1
        series.buckets[bisect_left(bounds, elapsed)] += 1
        series.sum += elapsed
        code = context.code()
        if code is None or code is _OK:
            series.ok += 1
            series.sent += 1
        else:
            series.count_failure(as_code(code))
        return response

    return measured


def _streaming(
    next: CallHandler,
    by_transport: dict[str, _Series],
    other_transport: Any,
    gauge: _Gauge,
    bounds: tuple[float, ...],
    arity: Arity,
) -> CallHandler:
    client_streams = arity in (Arity.STREAM_UNARY, Arity.STREAM_STREAM)
    server_streams = arity in (Arity.UNARY_STREAM, Arity.STREAM_STREAM)
    perf_counter = time.perf_counter
    lookup = by_transport.get

    async def measured(request: Any, context: Any) -> Any:
        transport = getattr(context, "transport", "grpc")
        series = lookup(transport) or other_transport(transport)
        series.started += 1
        if client_streams:
            request = _counted(request, series)
        else:
            series.received += 1
        inner = _CountingContext(context, series) if server_streams else context
        gauge.value += 1
        started = perf_counter()
        code = _OK
        try:
            response = await next(request, inner)
            code = as_code(context.code())
            return response
        except BaseException as failure:
            code = _failure_code(failure, context)
            raise
        finally:
            elapsed = perf_counter() - started
            gauge.value -= 1
            series.buckets[bisect_left(bounds, elapsed)] += 1
            series.sum += elapsed
            if code is _OK:
                series.ok += 1
                if not server_streams:
                    series.sent += 1
            else:
                series.count_failure(code)

    return measured


async def _counted(requests: AsyncIterator[Any], series: _Series) -> AsyncIterator[Any]:
    async for request in requests:
        series.received += 1
        yield request


class _CountingContext:
    """The call's context with a ``write`` that counts sent messages; the rest delegates.

    grpc's context class is left alone: the proxy exists only for calls of methods that
    stream responses, and only the stages below this one and the handler see it.
    """

    __slots__ = ("_context", "_series")

    def __init__(self, context: Any, series: _Series) -> None:
        self._context = context
        self._series = series

    async def write(self, message: Any) -> None:
        """Send one streamed response; count it once it is sent."""
        await self._context.write(message)
        self._series.sent += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _failure_code(failure: BaseException, context: Any) -> grpc.StatusCode:
    if isinstance(failure, asyncio.CancelledError):
        return cancelled_code(context)
    if isinstance(failure, grpc.aio.AbortError):
        code = context.code()
        return grpc.StatusCode.UNKNOWN if code is None else as_code(code)
    if isinstance(failure, StatusError):
        return failure.code
    return grpc.StatusCode.INTERNAL
