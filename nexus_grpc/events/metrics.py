"""Prometheus metrics of the event bus, collected at scrape time.

Counters of this process, kept by the bus as plain numbers (:class:`EventCounters`):

* ``nexus_events_published_total{type}``
* ``nexus_events_handled_total{group,type,outcome}``, outcome ``ok``, ``retry`` (the
  handler failed and the event will be retried), ``unavailable`` (it failed because
  storage or the bus was down: retried without counting an attempt) or
  ``dead_letter`` (failed for the last time, set aside)

Labels come from what this process declared, never from event data: ``type`` is a
type its plugins publish or the group consumes (on Redis, an entry of a stray type in a
consumed stream counts as the stream's type), ``group`` a subscribed group.

Gauges of each consumer group subscribed here, from :meth:`EventOperations.stats`:

* ``nexus_events_pending{group}``: read but not acknowledged
* ``nexus_events_lag{group}``: not read yet
* ``nexus_events_dead_letters{group}``

On Redis the gauges take a few commands, so they are refreshed by :meth:`refresh`,
which ``/metrics`` awaits before rendering: concurrent scrapes share one refresh, and a
scrape waits for it ``timeout`` seconds at most. A refresh still running then goes on
in the background and that scrape gets the previous values; a failed one (Redis down)
leaves the gauges out until one succeeds, rather than reporting stale numbers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_grpc.events.bus import EventCounters, EventOperations, GroupStats

__all__ = ["EventMetrics"]

_log = logging.getLogger("nexus.events")


class EventMetrics(Collector):
    """The bus's counters and backlog gauges; register it, and call :meth:`refresh`
    before each scrape."""

    def __init__(self, bus: EventOperations, *, timeout: float = 0.5) -> None:
        self._bus = bus
        self._timeout = timeout
        self._stats: list[GroupStats] | None = None
        self._refreshing: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Update the gauges; returns after ``timeout`` seconds at most, never raises."""
        task = self._refreshing
        if task is None or task.done():
            # Shared by every scrape waiting on it: none of their contexts.
            task = self._refreshing = asyncio.create_task(
                self._read_stats(), name="nexus-events-metrics", context=contextvars.Context()
            )
        # Not cancelled at the timeout: a cancellation can get lost inside a Redis call
        # (see _redis_runtime.cancel_and_wait); the bus's command timeouts end it.
        await asyncio.wait([task], timeout=self._timeout)

    async def _read_stats(self) -> None:
        try:
            self._stats = await self._bus.stats()
        except Exception as error:  # a scrape must never fail because of the broker
            self._stats = None
            _log.debug("event bus metrics not refreshed: %s", error)

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (no samples), for duplicate detection."""
        return list(self._families(EventCounters(), []))

    def collect(self) -> Iterable[Metric]:
        """Every family with its current samples."""
        return list(self._families(self._bus.counters, self._stats or []))

    def _families(self, counters: EventCounters, stats: list[GroupStats]) -> Iterator[Metric]:
        published = CounterMetricFamily(
            "nexus_events_published",
            "Events this process handed to the event bus, by event type.",
            labels=("type",),
        )
        for event_type, count in sorted(dict(counters.published).items()):
            published.add_metric((event_type,), count)
        yield published
        handled = CounterMetricFamily(
            "nexus_events_handled",
            "Handler runs of this process by consumer group, event type and outcome "
            "(ok; retry: failed, will be retried; dead_letter: failed for the last time).",
            labels=("group", "type", "outcome"),
        )
        for labels, count in sorted(dict(counters.handled).items()):
            handled.add_metric(labels, count)
        yield handled
        gauges = {
            "pending": GaugeMetricFamily(
                "nexus_events_pending",
                "Events a consumer group has read but not acknowledged yet.",
                labels=("group",),
            ),
            "lag": GaugeMetricFamily(
                "nexus_events_lag",
                "Events a consumer group has not read yet.",
                labels=("group",),
            ),
            "dead_letters": GaugeMetricFamily(
                "nexus_events_dead_letters",
                "Events a consumer group gave up on (dead letters).",
                labels=("group",),
            ),
        }
        for group in stats:
            gauges["pending"].add_metric((group.group,), group.pending)
            gauges["lag"].add_metric((group.group,), group.lag)
            gauges["dead_letters"].add_metric((group.group,), group.dead_letters)
        yield from gauges.values()
