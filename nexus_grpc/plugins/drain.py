"""Ending a plugin generation's calls: wait for them, then cut the rest UNAVAILABLE.

Each generation of a plugin has its routes bound with a :class:`DrainStage` of its
own, innermost in the pipeline (around the servicer), so the error stage turns the
status it raises into a proper answer on every transport. Unloading or replacing the
generation waits for its in-flight counter to reach zero, bounded by
``plugins.hot_swap.drain_timeout``, then :meth:`DrainStage.end_all` cancels what is
left; those calls end with UNAVAILABLE (retryable: a client retrying reaches the new
generation, or learns the plugin is gone).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from nexus_grpc.errors import StatusError
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

    @property
    def running(self) -> int:
        """Calls of this generation still running."""
        return len(self._running)

    def end_all(self) -> int:
        """Cancel every call still running; each ends with UNAVAILABLE. How many."""
        count = 0
        for task in list(self._running):
            if task.done() or task in self._ending:
                continue
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
            task.cancel()
            count += 1
        return count


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
