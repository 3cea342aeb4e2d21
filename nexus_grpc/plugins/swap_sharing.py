"""Hot swap across the workers of one ``nexus serve --workers N``.

A LoadPlugin, UnloadPlugin or ReloadPlugin call lands on one worker. That worker
applies the swap, then publishes it on the supervisor's broadcast (topic
``plugins.swap``) with the code hash it loaded, so every other worker imports the
same files (a file changed in between makes theirs fail, not differ). Each other
worker applies it and answers on ``plugins.swapped``; the receiving worker waits for
the answers of the workers it knows to be alive (bounded by the drain and start
timeouts) before it answers the admin call, so a client's next connection, whichever
worker it lands on, sees the new version.

The admin call answers with the receiving worker's own result. Another worker's
failure does not fail it: that worker logs it and keeps its previous version, and
the plugin list it serves shows the reason in ``swap_error``; the receiving worker
logs every failure its peers answered with and every peer that did not answer.

Workers know each other by a ``plugins.peers`` message each publishes once its
plugins are loaded (every worker answers a newcomer once). A worker started later
(a rolling restart, a crashed worker replaced) loads the plugins as they are on disk
then; a swap is not replayed to it.
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

__all__ = ["PEERS_TOPIC", "SWAPPED_TOPIC", "SWAP_TOPIC", "SwapSharing"]

_log = logging.getLogger("nexus.plugins")

SWAP_TOPIC = "plugins.swap"
SWAPPED_TOPIC = "plugins.swapped"
PEERS_TOPIC = "plugins.peers"

#: Seconds added to the drain and start timeouts when waiting for the other workers.
_MARGIN = 10.0


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
        """Tell the other workers this one serves (no-op with one process)."""
        if self._broadcast.connected:
            await self._broadcast.publish(PEERS_TOPIC, {"pid": self._pid, "answer": False})

    async def publish(self, request: SwapRequest, result: SwapResult) -> dict[int, str]:
        """Have every other worker apply ``request`` (done here with ``result``); their
        answers by pid ("" when it applied, else why not; missing: no answer in time)."""
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
        limit = (request.drain_timeout or settings.drain_timeout) + settings.start_timeout
        deadline = asyncio.get_running_loop().time() + limit + _MARGIN
        try:
            await self._broadcast.publish(SWAP_TOPIC, message)
            while not self.peers <= set(waiting.answers):
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                waiting.changed.clear()
                # Woken by an answer, or every second to notice a worker that died.
                try:
                    await asyncio.wait_for(waiting.changed.wait(), min(remaining, 1.0))
                except TimeoutError:
                    continue
        finally:
            del self._waiting[ident]
        for pid, error in sorted(waiting.answers.items()):
            if error:
                _log.warning(
                    "plugin %s: worker %d did not %s it and serves its previous version: %s",
                    request.plugin,
                    pid,
                    request.operation,
                    error,
                    extra={"plugin": request.plugin, "worker": pid},
                )
        for pid in sorted(self.peers - set(waiting.answers)):
            _log.warning(
                "plugin %s: worker %d did not say whether it applied the %s",
                request.plugin,
                pid,
                request.operation,
                extra={"plugin": request.plugin, "worker": pid},
            )
        return waiting.answers

    async def _on_swap(self, data: Any, origin: int) -> None:
        if origin == self._pid:
            return  # applied before it was published
        self._peers.add(origin)
        request, ident = _request_of(data)
        if request is None:
            _log.error("a malformed hot swap message from worker %d was ignored", origin)
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
