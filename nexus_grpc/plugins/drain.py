"""Ending a plugin generation's calls: wait for them, then cut the rest UNAVAILABLE.

Each generation of a plugin has its routes bound with a :class:`DrainStage` of its
own, innermost in the pipeline (around the servicer), so the error stage turns the
status it raises into a proper answer on every transport. Unloading or replacing the
generation waits for its in-flight counter to reach zero, bounded by
``plugins.hot_swap.drain_timeout``, then :meth:`DrainStage.end_all` cancels what is
left; those calls end with UNAVAILABLE (retryable: a client retrying reaches the new
generation, or learns the plugin is gone).

Event deliveries count too (:meth:`DrainStage.track`): the old generation's stop hook
runs once its handlers are done, and a handler still running past the timeout is
cancelled; its delivery fails, so the bus hands the event back (or dead-letters it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from nexus_grpc.errors import StatusError
from nexus_grpc.pipeline.ending import end_tasks
from nexus_grpc.routing import CallHandler, InFlight, MethodInfo

__all__ = ["DrainStage", "drain"]


class PluginGoneError(StatusError):
    """The call's plugin generation was unloaded or replaced before the call ended."""

    def __init__(self, plugin: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            f"plugin {plugin!r} was unloaded or replaced before this call finished; retry it",
            reason="PLUGIN_SWAPPED",
        )


class DrainStage:
    """Knows the task of every call one plugin generation is serving."""

    def __init__(self, plugin: str) -> None:
        self._plugin = plugin
        self._running: set[asyncio.Task[Any]] = set()
        self._ending: set[asyncio.Task[Any]] = set()

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` so its call can be ended with UNAVAILABLE."""
        running = self._running
        ending = self._ending
        plugin = self._plugin

        async def tracked(request: Any, context: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None  # a pipeline handler always runs in a task
            running.add(task)
            try:
                result = await next(request, context)
            except asyncio.CancelledError:
                if task not in ending:
                    raise
                task.uncancel()
                raise PluginGoneError(plugin) from None
            finally:
                running.discard(task)
            if task in ending:
                # The handler swallowed the cancellation: still not a normal end.
                ending.discard(task)
                task.uncancel()
                raise PluginGoneError(plugin)
            return result

        return tracked

    def track(
        self, handler: Callable[[Any, Any], Awaitable[None]], in_flight: InFlight
    ) -> Callable[[Any, Any], Awaitable[None]]:
        """``handler`` (an event handler of this generation) counted in ``in_flight``
        and ended like a call by :meth:`end_all`."""
        running = self._running
        ending = self._ending
        plugin = self._plugin

        async def delivered(event: Any, delivery: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            in_flight.enter()
            running.add(task)
            try:
                await handler(event, delivery)
            except asyncio.CancelledError:
                if task not in ending:
                    raise
                ending.discard(task)
                task.uncancel()
                raise PluginGoneError(plugin) from None
            finally:
                running.discard(task)
                in_flight.leave()
            if task in ending:
                ending.discard(task)
                task.uncancel()
                raise PluginGoneError(plugin)

        return delivered

    @property
    def running(self) -> int:
        """Calls of this generation still running."""
        return len(self._running)

    def end_all(self) -> int:
        """Cancel every call still running; each ends with UNAVAILABLE. How many."""
        return end_tasks(self._running, self._ending)


async def drain(in_flight: InFlight, stage: DrainStage, seconds: float) -> int:
    """Wait up to ``seconds`` for the generation's calls to end, then end the
    rest UNAVAILABLE and wait (briefly) for them to go; how many were cut."""
    if await in_flight.wait_idle(seconds):
        return 0
    cut = stage.end_all()
    # Cancelled calls answer within a loop turn or two; a handler that ignores the
    # cancellation must not hold the swap forever.
    await in_flight.wait_idle(1.0)
    return cut
