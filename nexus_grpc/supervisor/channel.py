"""The line between the supervisor and each worker, and the broadcast it carries.

Each worker gets one end of a Unix ``socketpair`` (inherited as a file descriptor, its
number passed on the command line); the supervisor keeps the other. Both ends speak
newline-delimited JSON objects, at most :data:`MAX_MESSAGE_BYTES` each:

- worker → supervisor ``{"kind": "ready"}``: the worker listens on both ports and its
  health is SERVING (a rolling restart retires the old worker only after this).
- worker → supervisor ``{"kind": "broadcast", "topic": T, "data": D}``: deliver ``D``
  to every worker, the sender included.
- supervisor → worker ``{"kind": "message", "topic": T, "data": D, "origin": PID}``:
  one broadcast, in the order the supervisor received them.
- worker → supervisor ``{"kind": "restart", "id": N}``: start a rolling restart of the
  workers (AdminService.RestartWorkers); the supervisor answers
  ``{"kind": "reply", "id": N, "workers": COUNT}`` or ``{..., "error": TEXT,
  "reason": "running" | "unavailable"}``.
- worker → supervisor ``{"kind": "state", "id": N, "plugins": {NAME: HASH}}``: a
  worker whose plugins are loaded asks which versions the host serves (see
  :mod:`nexus_grpc.plugins.swap_sharing`); the supervisor answers ``{"kind": "reply",
  "id": N, "baseline": {NAME: HASH}, "swaps": [SWAP, ...]}``: the plugins of the first
  worker that asked (this one's own when it is the first) and the latest
  ``plugins.swap`` message relayed for each plugin since.
- worker → supervisor ``{"kind": "unfit", "reason": TEXT}``: this worker cannot serve
  what the others serve and exits before it is ready: its exit is no crash.
- worker → supervisor ``{"kind": "hand_over", "id": N}``: a worker beginning to stop
  (not retired) asks whether another worker of its slot stays on the slot's HTTP
  socket (being started, or alive and neither retiring nor stopping: it may listen
  before it serves). The supervisor counts the asking worker as stopping from then on
  (no SIGTERM of its own at a stop), gives the slot's next worker a new socket when
  none stays, and answers
  ``{"kind": "reply", "id": N, "hand_over": BOOL}``. With true the stopping worker
  leaves the socket listening, else it ends the socket's listening for every holder.

Signals complete the line: SIGTERM stops a worker as it stops a host (health
NOT_SERVING, ``server.shutdown_delay``, drain); :data:`RETIRE_SIGNAL` (SIGUSR2) drains a
worker a rolling restart replaces, without turning health NOT_SERVING: the host as a
whole keeps serving.

In a worker, :class:`Broadcast` is the whole API::

    broadcast.subscribe("plugins", on_plugins)      # on_plugins(data, origin_pid)
    await broadcast.publish("plugins", {"load": "orders"})

``on_plugins`` then runs in every worker (on its event loop; a coroutine function is
awaited in a task of its own). Without a supervisor (``server.workers = 1``) the same
object delivers to the local subscribers only, so callers need not know how many
processes there are. A message is fire-and-forget: a worker started later does not
get earlier messages (state that must survive belongs in storage; a broadcast says
"read it again"). When the supervisor goes away the worker sees the line close and
shuts itself down (see :mod:`nexus_grpc.supervisor.worker`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "MAX_MESSAGE_BYTES",
    "RETIRE_SIGNAL",
    "Broadcast",
    "Handler",
    "NoSupervisor",
    "RestartRunning",
    "SupervisorUnavailable",
    "decode",
    "encode",
]

#: Sent to a worker a rolling restart replaces: drain quietly (see the module docstring).
RETIRE_SIGNAL = signal.SIGUSR2

#: Largest message on the line, in bytes (the JSON and its newline).
MAX_MESSAGE_BYTES = 1024 * 1024

#: Seconds a worker waits for the supervisor's answer to a request.
_REPLY_TIMEOUT = 10.0
#: Seconds a stopping worker waits to learn whether it hands its HTTP socket over: its
#: HTTP port keeps accepting meanwhile.
_HAND_OVER_TIMEOUT = 1.0

#: A subscriber: called with the message's data and the sending worker's pid.
Handler = Callable[[Any, int], Awaitable[None] | None]

_log = logging.getLogger("nexus.supervisor")


class NoSupervisor(RuntimeError):
    """This process is the whole host (``server.workers = 1``): there are no workers."""


class RestartRunning(RuntimeError):
    """A rolling restart is running already."""


class SupervisorUnavailable(RuntimeError):
    """The supervisor cannot restart now (the workers start or stop) or did not answer."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line; ValueError when it is not JSON or too large."""
    line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(line)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return line


def decode(line: bytes) -> dict[str, Any] | None:
    """The message on ``line``; None (logged) when it is not a JSON object with a kind."""
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
        _log.warning("ignored a malformed message on the worker line (%d bytes)", len(line))
        return None
    return message


class Broadcast:
    """Messages delivered to every worker (see the module docstring)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        #: Set when the supervisor's end of the line closed (the supervisor is gone).
        self.closed = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Whether messages go through a supervisor (a worker of several)."""
        return self._writer is not None

    async def connect(self, fd: int) -> None:
        """Use the inherited socket ``fd`` as the line to the supervisor."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(
            sock=sock, limit=MAX_MESSAGE_BYTES
        )
        self._reader_task = asyncio.create_task(self._read(reader), name="nexus-worker-line")

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call ``handler(data, origin_pid)`` for every message published on ``topic``."""
        self._handlers.setdefault(topic, []).append(handler)

    async def publish(self, topic: str, data: Any) -> None:
        """Deliver ``data`` (JSON-serialisable) to ``topic``'s subscribers in every worker."""
        if self._writer is None:
            self._deliver(topic, data, os.getpid())
            return
        await self._send({"kind": "broadcast", "topic": topic, "data": data})

    async def restart_workers(self) -> int:
        """Have the supervisor start a rolling restart; the number of workers it replaces.

        :class:`NoSupervisor` without a supervisor; :class:`RestartRunning` when a
        restart is running already; :class:`SupervisorUnavailable` when the workers
        start or stop, or the supervisor does not answer.
        """
        if self._writer is None:
            raise NoSupervisor("this host runs one process (server.workers = 1): no workers")
        answer = await self._request({"kind": "restart"})
        if "error" in answer:
            if answer.get("reason") == "running":
                raise RestartRunning(str(answer["error"]))
            raise SupervisorUnavailable(str(answer["error"]))
        return int(answer.get("workers", 0))

    async def plugin_state(self, serving: dict[str, str]) -> tuple[dict[str, str], list[Any]]:
        """The plugins the host serves, as the supervisor recorded them: the code hash of
        each plugin the first worker served (``serving`` becomes it when this worker is
        the first), and the latest swap shared for each plugin since, oldest first.

        :class:`NoSupervisor` without a supervisor; :class:`SupervisorUnavailable`
        when it does not answer."""
        if self._writer is None:
            raise NoSupervisor("this host runs one process (server.workers = 1): no workers")
        answer = await self._request({"kind": "state", "plugins": serving})
        baseline, swaps = answer.get("baseline"), answer.get("swaps")
        if not isinstance(baseline, dict) or not isinstance(swaps, list):
            raise SupervisorUnavailable("the supervisor sent no plugin state")
        return {str(k): str(v) for k, v in baseline.items()}, swaps

    async def unfit(self, reason: str) -> None:
        """Tell the supervisor this worker will not serve, and why (it exits next); its
        restart is then no crash (no-op without a supervisor)."""
        if self._writer is not None:
            await self._send({"kind": "unfit", "reason": reason[:4000]})

    async def hands_over(self) -> bool:
        """Whether another worker of this one's slot stays on the slot's HTTP socket,
        so that this worker, stopping, must leave it listening. False without a
        supervisor or once it is gone; True when it is there but does not answer within
        a second: ending a socket a partner listens on would leave that partner unable
        to accept for good, while a socket left listening is closed by the supervisor
        once this worker has exited."""
        if self._writer is None or self.closed.is_set():
            return False
        try:
            answer = await self._request({"kind": "hand_over"}, answer_within=_HAND_OVER_TIMEOUT)
        except (SupervisorUnavailable, OSError):
            return not self.closed.is_set()
        return answer.get("hand_over") is True

    async def _request(
        self, message: dict[str, Any], *, answer_within: float = _REPLY_TIMEOUT
    ) -> dict[str, Any]:
        """Send ``message`` with a fresh id; the supervisor's reply to it."""
        self._next_id += 1
        ident = self._next_id
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = reply
        try:
            await self._send({**message, "id": ident})
            async with asyncio.timeout(answer_within):
                return await reply
        except TimeoutError:
            raise SupervisorUnavailable(
                f"the supervisor did not answer within {answer_within:g}s"
            ) from None
        finally:
            self._replies.pop(ident, None)

    async def ready(self) -> None:
        """Tell the supervisor this worker serves (no-op without one)."""
        if self._writer is not None:
            await self._send({"kind": "ready"})

    async def close(self) -> None:
        """Stop reading and close the line."""
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(encode(message))
        await self._writer.drain()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    _log.error("the supervisor sent a message over %d bytes", MAX_MESSAGE_BYTES)
                    break
                message = decode(line)
                if message is None:
                    continue
                if message["kind"] == "reply":
                    waiting = self._replies.get(message.get("id"))  # type: ignore[arg-type]
                    if waiting is not None and not waiting.done():
                        waiting.set_result(message)
                    continue
                if message["kind"] != "message":
                    continue
                origin = message.get("origin")
                self._deliver(
                    str(message.get("topic", "")),
                    message.get("data"),
                    origin if isinstance(origin, int) else 0,
                )
        except OSError as error:
            _log.error("the line to the supervisor failed: %s", error)
        finally:
            self.closed.set()
            for waiting in self._replies.values():
                if not waiting.done():
                    waiting.set_exception(SupervisorUnavailable("the supervisor is gone"))

    def _deliver(self, topic: str, data: Any, origin: int) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                result = handler(data, origin)
            except Exception:
                _log.exception("broadcast handler of %r failed", topic)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._await(topic, result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _await(topic: str, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception:
            _log.exception("broadcast handler of %r failed", topic)
