"""Hot swap across the workers of one ``nexus serve --workers N``.

A LoadPlugin, UnloadPlugin or ReloadPlugin call lands on one worker. That worker
applies the swap, then publishes it on the supervisor's broadcast (topic
``plugins.swap``) with the code hash it loaded, so every other worker imports the
same files (a file changed in between makes theirs fail, not differ). Each other
worker applies it and answers on ``plugins.swapped`` as soon as the new version
serves there (its old version drains in the background); the receiving worker waits
for the answers of the workers it knows to be alive (bounded by the hook and start
timeouts) before it answers the admin call, so a client's next connection, whichever
worker it lands on, sees the new version.

When another worker failed to apply it or did not answer, the admin call fails
ABORTED naming those workers and why; the receiving worker's own change stays
applied. The failing worker keeps its previous version, logs why, and the plugin list
it serves shows the reason in ``swap_error``. A worker that is stopping applies no
shared swap any more and answers so: it is not waited for.

Workers know each other by a ``plugins.peers`` message each publishes once its
plugins are loaded (every worker answers a newcomer once). Before that, with hot swap
on, a worker asks the supervisor which versions the host serves (see
:mod:`nexus_grpc.supervisor.swaps`): it applies the swaps shared before it started,
and when its plugins still differ (files changed without a swap, a breaking reload
that was refused) it raises :class:`PluginsDiffer` and does not start.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nexus_grpc.errors import StatusError
from nexus_grpc.plugins.swap import OPERATIONS, SwapRequest, SwapResult

if TYPE_CHECKING:
    from nexus_grpc.plugins.swap import HotSwap
    from nexus_grpc.supervisor.channel import Broadcast

__all__ = ["PEERS_TOPIC", "SWAPPED_TOPIC", "SWAP_TOPIC", "PluginsDiffer", "SwapSharing"]

_log = logging.getLogger("nexus.plugins")

SWAP_TOPIC = "plugins.swap"
SWAPPED_TOPIC = "plugins.swapped"
PEERS_TOPIC = "plugins.peers"

#: Seconds added to the hook and start timeouts when waiting for the other workers.
_MARGIN = 10.0

#: The answer of a worker that is stopping: it applies no swap any more.
_STOPPING = "the host is stopping"


class PluginsDiffer(RuntimeError):
    """A worker started later cannot serve the plugin versions the host serves."""


@dataclass
class _Waiting:
    """Answers to one published swap, by worker pid."""

    answers: dict[int, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SwapSharing:
    """Publishes this worker's swaps to the others and applies theirs."""

    def __init__(self, swap: HotSwap, broadcast: Broadcast) -> None:
        self._swap = swap
        self._broadcast = broadcast
        self._pid = os.getpid()
        self._peers: set[int] = set()
        self._waiting: dict[str, _Waiting] = {}
        self._sent = 0
        broadcast.subscribe(SWAP_TOPIC, self._on_swap)
        broadcast.subscribe(SWAPPED_TOPIC, self._on_swapped)
        broadcast.subscribe(PEERS_TOPIC, self._on_peers)

    @property
    def peers(self) -> frozenset[int]:
        """Pids of the other workers known to be alive."""
        return frozenset(pid for pid in self._peers if _alive(pid))

    async def announce(self) -> None:
        """Serve the plugin versions the host serves, then tell the other workers this
        one serves (no-op with one process). :class:`PluginsDiffer` when this worker
        cannot serve the same versions: it must not start."""
        if not self._broadcast.connected:
            return
        if self._swap.settings.enabled:
            await self._catch_up()
        await self._broadcast.publish(PEERS_TOPIC, {"pid": self._pid, "answer": False})

    async def _catch_up(self) -> None:
        """Apply the swaps the host's workers applied before this one started, and check
        that every plugin serves here in the version it serves there."""
        baseline, swaps = await self._broadcast.plugin_state(self._swap.serving())
        target = {name: digest.removeprefix("sha256:") for name, digest in baseline.items()}
        problems: list[str] = []
        for data in swaps:
            request, _ = _request_of(data)
            if request is None:
                continue
            name = request.plugin
            here = self._swap.serving()
            if request.operation == "unload":
                target.pop(name, None)
                if name in here:
                    try:
                        result = await self._swap.apply(request, share=False)
                    except StatusError as error:
                        problems.append(f"plugin {name!r} could not be unloaded: {error.message}")
                        continue
                    for plugin in result.plugins:
                        target.pop(plugin, None)
                continue
            target[name] = request.expected_hash.removeprefix("sha256:")
            if name not in here:
                load = SwapRequest(name, "load", expected_hash=request.expected_hash)
                try:
                    await self._swap.apply(load, share=False)
                except StatusError as error:
                    problems.append(f"plugin {name!r} could not be loaded: {error.message}")
        here = self._swap.serving()
        for name in sorted(set(target) | set(here)):
            if name not in here:
                problems.append(f"plugin {name!r} serves on the other workers, not here")
            elif name not in target:
                problems.append(f"plugin {name!r} serves here, not on the other workers")
            elif here[name] != target[name]:
                problems.append(
                    f"plugin {name!r}: its files hash to sha256:{here[name]}, the other "
                    f"workers serve sha256:{target[name]}"
                )
        if problems:
            reason = (
                "this worker would serve other plugin versions than the host's other "
                f"workers: {'; '.join(problems)}. It does not start: change plugins with "
                "LoadPlugin, UnloadPlugin or ReloadPlugin (force for a breaking contract), "
                "or put their files back as they were"
            )
            await self._broadcast.unfit(reason)
            raise PluginsDiffer(reason)

    async def publish(self, request: SwapRequest, result: SwapResult) -> dict[int, str]:
        """Have every other worker apply ``request`` (done here with ``result``); the
        live workers that did not, by pid, with why (a failure, or no answer in time).
        A worker that is stopping refuses and is not counted: it serves no new calls."""
        if not self._broadcast.connected:
            return {}
        self._sent += 1
        ident = f"{self._pid}-{self._sent}"
        expected = result.code_hash or request.expected_hash
        message = {
            "id": ident,
            "plugin": request.plugin,
            "operation": request.operation,
            "expected_hash": expected,
            "cascade": request.cascade,
            "drain_timeout": request.drain_timeout,
            "force": request.force,
        }
        waiting = self._waiting[ident] = _Waiting()
        settings = self._swap.settings
        # A peer answers once it installed: its start hook (hook_timeout), its health
        # (start_timeout) and a failed start's stop hook (hook_timeout) at most; its
        # drain runs after it answered.
        hooks = self._swap.hook_timeout
        limit = 2 * hooks + settings.start_timeout + _MARGIN
        deadline = asyncio.get_running_loop().time() + limit
        try:
            await self._broadcast.publish(SWAP_TOPIC, message)
            while not self.peers <= set(waiting.answers):
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                waiting.changed.clear()
                # Woken by an answer, or every second to notice a worker that died.
                try:
                    async with asyncio.timeout(min(remaining, 1.0)):
                        await waiting.changed.wait()
                except TimeoutError:
                    continue
        finally:
            del self._waiting[ident]
        failures: dict[int, str] = {}
        for pid, error in sorted(waiting.answers.items()):
            if error and error != _STOPPING:
                failures[pid] = error
                _log.warning(
                    "plugin %s: worker %d did not %s it and serves its previous version: %s",
                    request.plugin,
                    pid,
                    request.operation,
                    error,
                    extra={"plugin": request.plugin, "worker": pid},
                )
        for pid in sorted(self.peers - set(waiting.answers)):
            failures[pid] = f"no answer within {limit:.0f}s"
            _log.warning(
                "plugin %s: worker %d did not say whether it applied the %s",
                request.plugin,
                pid,
                request.operation,
                extra={"plugin": request.plugin, "worker": pid},
            )
        return failures

    async def _on_swap(self, data: Any, origin: int) -> None:
        if origin == self._pid:
            return  # applied before it was published
        self._peers.add(origin)
        request, ident = _request_of(data)
        if request is None:
            _log.error("a malformed hot swap message from worker %d was ignored", origin)
            return
        if self._swap.stopping:
            # Going away: it applies nothing more, and the asker does not wait for it.
            await self._broadcast.publish(
                SWAPPED_TOPIC, {"id": ident, "pid": self._pid, "error": _STOPPING}
            )
            return
        error = ""
        try:
            await self._swap.apply(request, share=False)
        except StatusError as failure:
            error = failure.message
            record = self._swap.record(request.plugin)
            if record is not None:
                record.swap_error = error
            _log.error(
                "plugin %s: the %s another worker applied failed here; the previous "
                "version serves on: %s",
                request.plugin,
                request.operation,
                error,
                extra={"plugin": request.plugin, "worker": origin},
            )
        except Exception as failure:  # whatever it is, the asking worker hears of it
            error = f"{type(failure).__name__}: {failure}"
            _log.exception("plugin %s: applying a shared swap failed", request.plugin)
        await self._broadcast.publish(
            SWAPPED_TOPIC, {"id": ident, "pid": self._pid, "error": error[:4000]}
        )

    def _on_swapped(self, data: Any, origin: int) -> None:
        if not isinstance(data, dict):
            return
        waiting = self._waiting.get(str(data.get("id", "")))
        if waiting is None or origin == self._pid:
            return
        self._peers.add(origin)
        waiting.answers[origin] = str(data.get("error", ""))
        waiting.changed.set()

    async def _on_peers(self, data: Any, origin: int) -> None:
        if origin == self._pid:
            return
        new = origin not in self._peers
        self._peers.add(origin)
        if new and isinstance(data, dict) and not data.get("answer"):
            await self._broadcast.publish(PEERS_TOPIC, {"pid": self._pid, "answer": True})


def _request_of(data: Any) -> tuple[SwapRequest | None, str]:
    """The swap a ``plugins.swap`` message states, checked, and its id."""
    if not isinstance(data, dict):
        return None, ""
    plugin, operation = data.get("plugin"), data.get("operation")
    drain = data.get("drain_timeout")
    if (
        not isinstance(plugin, str)
        or not plugin
        or len(plugin) > 64
        or operation not in OPERATIONS
        or not isinstance(data.get("expected_hash", ""), str)
        or (drain is not None and not isinstance(drain, (int, float)))
    ):
        return None, str(data.get("id", ""))
    request = SwapRequest(
        plugin,
        str(operation),
        expected_hash=str(data.get("expected_hash", "")),
        cascade=bool(data.get("cascade", False)),
        drain_timeout=float(drain) if drain is not None else None,
        force=bool(data.get("force", False)),
    )
    return request, str(data.get("id", ""))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` (a worker on this machine) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
