"""The supervisor: N worker processes, kept running, stopped and rolled together.

It follows grpcio's fork model by never holding any gRPC object: the supervisor's
modules import neither grpc nor the host (``nexus_grpc`` re-exports its public names
lazily; a test checks that importing them leaves grpc out; the ``nexus`` command line
around them imports the grpc module, which starts nothing), and it starts each worker
as a new interpreter, not a fork, so a worker inherits nothing of it (``nexus serve``
again, with the ports it reserved and one end of a socketpair, see
:mod:`nexus_grpc.supervisor.channel`). Workers run in a session of their own so that a
terminal's Ctrl-C reaches the supervisor alone, which then stops them in order.

- A worker that dies is started again after a backoff (also one that served and died
  while the others were starting: start-up waits for its replacement); too many
  deaths in a window is a crash loop: everything stops and the supervisor exits 1
  saying so (:mod:`nexus_grpc.supervisor.policy`). Every death is logged. A worker
  that served and stopped on its own with status 0 (an operator's SIGTERM to it: it
  says so on the line as its stop begins) did not die: it is started again at once,
  and not counted (once per slot every ``stable_after`` seconds). A worker
  whose process cannot be started counts as one that died at once (at start-up it
  fails the start; in a rolling restart it stops the roll, the old worker serving).
- A worker is known from the moment its process exists, and a stop first ends the
  starts under way: no worker outlives its supervisor unknown.
- SIGTERM or SIGINT: every worker gets SIGTERM and drains as a single host does
  (health NOT_SERVING, ``server.shutdown_delay``, then ``server.grace_period`` for the
  calls in flight); a second signal is passed on too, which cancels what is left.
  A worker still running ``stop_timeout`` seconds later is killed. A worker a rolling
  restart is retiring drains already: it gets no SIGTERM of its own (which it would
  take for the second one, cancelling its calls).
- SIGHUP: rolling restart, one worker at a time: the replacement starts, binds the
  gRPC port and gets its slot's HTTP socket, and only once it reports ready
  (listening, health SERVING) does the old one get
  :data:`~nexus_grpc.supervisor.channel.RETIRE_SIGNAL` and drain (its health stays
  SERVING: the host as a whole does not go away). Replacements read the
  configuration file again, so a rolling restart also applies configuration changes
  and renewed certificates (not the ports or the worker count, which the supervisor
  holds; replacements are told the worker count, so a file that cannot serve that
  many workers is refused and the old workers keep serving). A SIGHUP during a
  rolling restart (or during start-up) queues one more roll. The kernel keeps handing
  new connections to the listeners left, so clients see no refused connection. The
  HTTP port's listeners are the supervisor's, one per slot (``listeners``,
  :class:`~nexus_grpc.supervisor.ports.SlotListeners`): a replacement serves on its
  predecessor's socket, so no HTTP listener closes during a roll.
- Plugins swapped at runtime: the supervisor records the versions the host serves and
  each worker started later serves the same (:mod:`nexus_grpc.supervisor.swaps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nexus_grpc.supervisor.channel import MAX_MESSAGE_BYTES, RETIRE_SIGNAL, decode, encode
from nexus_grpc.supervisor.metrics import forget_worker
from nexus_grpc.supervisor.policy import CrashLoop, RestartPolicy
from nexus_grpc.supervisor.ports import SlotListeners
from nexus_grpc.supervisor.swaps import PluginState

__all__ = ["Supervisor", "WorkerCommand"]

#: The command line of a worker, given the number of its end of the line, its slot and
#: the descriptor of the slot's HTTP listener (None without ``listeners``).
WorkerCommand = Callable[[int, int, int | None], Sequence[str]]

_log = logging.getLogger("nexus.supervisor")

#: Seconds before a worker that would serve other plugin versions is tried again.
_UNFIT_RETRY = 30.0


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log the exception ``task`` ended with (a defect: nobody awaits it)."""
    if not task.cancelled() and task.exception() is not None:
        _log.error("%s failed", task.get_name(), exc_info=task.exception())


@dataclass(eq=False)
class _Worker:
    slot: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: Being replaced or stopped on purpose: its exit is no crash.
    retiring: bool = False
    #: Stopping on its own (a SIGTERM not from the supervisor): it drains already.
    leaving: bool = False
    #: Why it will not serve (its plugins differ from the host's): its exit is no crash.
    unfit: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Runs ``count`` workers until a signal stops them (see the module docstring)."""

    def __init__(
        self,
        count: int,
        command: WorkerCommand,
        *,
        metrics_dir: Path,
        stop_timeout: float,
        ready_timeout: float = 120.0,
        policy: RestartPolicy | None = None,
        listeners: SlotListeners | None = None,
    ) -> None:
        self.count = count
        self._command = command
        self._listeners = listeners
        self._metrics_dir = metrics_dir
        self._stop_timeout = stop_timeout
        self._ready_timeout = ready_timeout
        self._crashes = CrashLoop(policy or RestartPolicy())
        #: The worker serving each slot now.
        self._current: dict[int, _Worker] = {}
        #: Every worker process still running (current, retiring, replacements).
        self._alive: set[_Worker] = set()
        self._stopping = False
        #: A signal or stop() asked to stop: workers not ready then are no failure.
        self._stop_asked = False
        #: Every worker served once: from now on a death is restarted.
        self._serving = False
        self._done = asyncio.Event()
        self._failure: str | None = None
        self._rolling: asyncio.Task[None] | None = None
        #: The replacement a rolling restart waits for (it says why that one stops).
        self._awaited: _Worker | None = None
        #: A SIGHUP arrived while a roll ran (or before the workers served): roll again.
        self._roll_again = False
        #: Restarts waiting for their backoff or starting a worker → the slot of each.
        self._restarts: dict[asyncio.Task[None], int] = {}
        #: Slot → workers being started for it (not in ``_alive`` yet).
        self._spawning: Counter[int] = Counter()
        #: The plugin versions the host serves, for workers started later.
        self._plugins = PluginState()

    async def run(self, on_ready: Callable[[list[int]], None] | None = None) -> int:
        """Start the workers, supervise them until stopped; the exit status.

        The first worker starts alone (it creates the database schema and any
        generated keys), the others once it serves. ``on_ready`` gets the workers'
        pids once all serve.
        """
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self._on_stop_signal, number)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            if await self._start_all():
                self._serving = True
                if on_ready is not None:
                    on_ready([self._current[slot].pid for slot in sorted(self._current)])
                if self._roll_again:
                    self._start_rolls()
                await self._done.wait()
            await self._stop_all()
        except BaseException:
            # Cancelled, or a defect: no worker may outlive this supervisor unknown.
            self._abandon()
            raise
        finally:
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(number)
        if self._failure is not None:
            _log.error("nexus workers stopped: %s", self._failure)
            return 1
        _log.info("nexus workers stopped")
        return 0

    def stop(self) -> None:
        """Stop every worker and return from :meth:`run` (what SIGTERM does)."""
        self._stop_asked = True
        self._done.set()

    def broadcast(self, topic: str, data: object) -> None:
        """Deliver ``data`` to ``topic``'s subscribers in every running worker (its
        origin is the supervisor's pid)."""
        self._broadcast({"kind": "message", "topic": topic, "data": data, "origin": os.getpid()})

    def pids(self) -> dict[int, int]:
        """The pid of the worker serving each slot now."""
        return {slot: worker.pid for slot, worker in self._current.items()}

    async def _start_all(self) -> bool:
        first = await self._spawn(0)
        if first is None:
            return self._fail_start(self._spawn_failure(0))
        await self._until_ready(first)
        if not first.ready.is_set():
            return self._fail_start(self._not_ready(first))
        others = []
        for slot in range(1, self.count):
            if self._done.is_set():
                return False
            worker = await self._spawn(slot)
            if worker is None:
                return self._fail_start(self._spawn_failure(slot))
            others.append(worker)
        for worker in others:
            await self._until_ready(worker)
            # One that served and died since is being restarted (see _watch).
            if not worker.ready.is_set():
                return self._fail_start(self._not_ready(worker))
        return await self._until_all_ready()

    async def _until_all_ready(self) -> bool:
        """Whether every slot has a ready worker: one that served and died while the
        others started was restarted (see :meth:`_watch`), and start-up waits for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while not self._done.is_set():
            workers = [self._current.get(slot) for slot in range(self.count)]
            if all(w is not None and w.ready.is_set() for w in workers):
                return True
            if not self._restarts and any(w is None for w in workers):
                # A restarted worker exited before it served (logged by _watch).
                if self._failure is None:
                    self._failure = "a worker restarted during start-up exited before it served"
                self._done.set()
                return False
            if loop.time() > deadline:
                if self._failure is None:
                    self._failure = f"the workers did not all serve within {self._ready_timeout:g}s"
                self._done.set()
                return False
            await asyncio.sleep(0.05)
        return False

    def _fail_start(self, problem: str) -> bool:
        if self._failure is None and not self._stop_asked:
            self._failure = problem
        self._done.set()
        return False

    @staticmethod
    def _spawn_failure(slot: int) -> str:
        return f"worker {slot} could not be started (logged above)"

    def _not_ready(self, worker: _Worker) -> str:
        if worker.exited.is_set():
            return (
                f"worker {worker.slot} (pid {worker.pid}) exited with status "
                f"{worker.process.returncode} before it served (its log says why)"
            )
        return (
            f"worker {worker.slot} (pid {worker.pid}) did not serve within {self._ready_timeout:g}s"
        )

    async def _until_ready(self, worker: _Worker) -> bool:
        """Whether ``worker`` reported ready before it exited, the timeout, or a stop."""
        waits = [
            asyncio.ensure_future(worker.ready.wait()),
            asyncio.ensure_future(worker.exited.wait()),
            asyncio.ensure_future(self._done.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=self._ready_timeout, return_when="FIRST_COMPLETED")
        finally:
            for waiter in waits:
                waiter.cancel()
        return worker.ready.is_set() and not worker.exited.is_set()

    async def _spawn(self, slot: int) -> _Worker | None:
        """A new worker serving ``slot``; None (logged) when its process could not be
        started (no descriptor, no memory, no such program, its socket not bound)."""
        self._spawning[slot] += 1
        try:
            return await self._start_worker(slot)
        except OSError as error:
            _log.error("worker %d could not be started: %s", slot, error)
            return None
        finally:
            self._spawning[slot] -= 1
            self._renew_unserved(slot)

    async def _start_worker(self, slot: int) -> _Worker:
        listener = self._listeners.for_slot(slot) if self._listeners is not None else None
        http_fd = listener.fileno() if listener is not None else None
        ours, theirs = socket.socketpair()
        try:
            ours.setblocking(False)
            # Before the process exists: from its start to its registration below
            # nothing is awaited, so no cancellation can leave it running unknown.
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_MESSAGE_BYTES)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        try:
            # Cancelled half-way, asyncio kills the process it started.
            process = await asyncio.create_subprocess_exec(
                *self._command(theirs.fileno(), slot, http_fd),
                pass_fds=(theirs.fileno(),) if http_fd is None else (theirs.fileno(), http_fd),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            writer.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(slot, process, writer, started=time.monotonic())
        self._current[slot] = worker
        self._alive.add(worker)
        worker.tasks = [
            asyncio.create_task(self._read(worker, reader)),
            asyncio.create_task(self._watch(worker)),
        ]
        _log.info("worker %d started (pid %d)", slot, process.pid, extra={"pid": process.pid})
        return worker

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """Messages from one worker: ready, and broadcasts passed to every worker."""
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                _log.error(
                    "worker %d (pid %d) sent a message over %d bytes: its line is closed",
                    worker.slot,
                    worker.pid,
                    MAX_MESSAGE_BYTES,
                )
                return
            except (asyncio.IncompleteReadError, OSError):
                return
            message = decode(line)
            if message is None:
                continue
            if message["kind"] == "ready":
                _log.info("worker %d (pid %d) serving", worker.slot, worker.pid)
                worker.ready.set()
            elif message["kind"] == "restart":
                self._reply(worker, message.get("id"), self._request_restart())
            elif message["kind"] == "unfit":
                worker.unfit = str(message.get("reason", ""))[:4000] or "no reason given"
            elif message["kind"] == "hand_over":
                self._reply(worker, message.get("id"), {"hand_over": self._leaving(worker)})
            elif message["kind"] == "state":
                self._reply(worker, message.get("id"), self._plugins.answer(message.get("plugins")))
            elif message["kind"] == "broadcast":
                self._plugins.relayed(message.get("topic"), message.get("data"))
                self._broadcast(
                    {
                        "kind": "message",
                        "topic": message.get("topic"),
                        "data": message.get("data"),
                        "origin": worker.pid,
                    }
                )

    def _request_restart(self) -> dict[str, object]:
        """A rolling restart asked for on the line (AdminService.RestartWorkers)."""
        if self._stopping or not self._serving:
            return {"error": "the workers are starting or stopping", "reason": "unavailable"}
        if self._rolling is not None and not self._rolling.done():
            return {"error": "a rolling restart is running already", "reason": "running"}
        _log.info("rolling restart of %d workers asked for by AdminService", self.count)
        self._start_rolls()
        return {"workers": self.count}

    def _leaving(self, worker: _Worker) -> bool:
        """``worker`` stops on its own: whether it leaves the slot's HTTP socket
        listening, because another worker of the slot stays or is being started (it
        may listen on it already, ready or not). If not, the socket is the leaving
        worker's to end, and the slot's next worker gets a new one."""
        worker.leaving = True
        if self._stopping:
            return False
        # A start under way for the slot holds its socket already (a roll's replacement
        # between taking it and being registered).
        shared = bool(self._spawning[worker.slot]) or any(
            o.slot == worker.slot and self._stays(o) for o in self._alive
        )
        if not shared and self._listeners is not None:
            self._listeners.renew(worker.slot)
        return shared

    @staticmethod
    def _stays(worker: _Worker) -> bool:
        """Whether ``worker`` goes on serving: alive, neither retiring nor stopping."""
        return not (worker.retiring or worker.leaving or worker.exited.is_set())

    def _reply(self, worker: _Worker, ident: object, answer: dict[str, object]) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            worker.writer.write(encode({"kind": "reply", "id": ident, **answer}))

    def _broadcast(self, message: dict[str, object]) -> None:
        line = encode(message)
        for target in list(self._alive):
            if not target.exited.is_set():
                with contextlib.suppress(OSError, RuntimeError):
                    target.writer.write(line)

    async def _watch(self, worker: _Worker) -> None:
        status = await worker.process.wait()
        worker.exited.set()
        self._alive.discard(worker)
        worker.writer.close()
        try:
            forget_worker(self._metrics_dir, worker.pid)
        except Exception:
            # Its counts are lost from the sums; the worker is restarted all the same.
            _log.exception(
                "could not fold the metrics of worker %d (pid %d)", worker.slot, worker.pid
            )
        if self._current.get(worker.slot) is worker:
            del self._current[worker.slot]
        self._renew_unserved(worker.slot)
        if self._stopping or worker.retiring:
            _log.info("worker %d (pid %d) exited (%s)", worker.slot, worker.pid, status)
            return
        if not worker.ready.is_set() and (not self._serving or worker is self._awaited):
            # Start-up or the rolling restart waiting for it says why it stops.
            _log.warning(
                "worker %d (pid %d) exited with status %s before it served",
                worker.slot,
                worker.pid,
                status,
                extra={"pid": worker.pid, "exit_status": status},
            )
            return
        if worker.unfit:
            # Not a crash: its plugin files differ from what the host serves. Tried again
            # seldom, so that a swap or the files put back let it start; the other
            # workers serve on.
            _log.error(
                "worker %d (pid %d) did not start: %s; trying again in %.0fs",
                worker.slot,
                worker.pid,
                worker.unfit,
                _UNFIT_RETRY,
                extra={"pid": worker.pid, "restart_delay": _UNFIT_RETRY},
            )
            self._schedule_restart(worker.slot, _UNFIT_RETRY)
            return
        now = time.monotonic()
        stopped_alone = worker.leaving and status == 0 and worker.ready.is_set()
        if stopped_alone and self._crashes.stopped_alone(worker.slot, now=now):
            # It served, said it was stopping on its own (an operator's SIGTERM to it) and
            # exited cleanly: no crash. Its slot is served again at once, with no backoff
            # and nothing counted toward the crash loop, which recycling workers by hand
            # would otherwise trip (see policy: once per slot every stable_after seconds).
            _log.info(
                "worker %d (pid %d) stopped on its own; starting a new one",
                worker.slot,
                worker.pid,
                extra={"pid": worker.pid, "exit_status": status},
            )
            self._schedule_restart(worker.slot, 0.0)
            return
        delay = self._crashes.died(worker.slot, now=now, started=worker.started)
        if delay is None:
            self._crash_loop(f"worker {worker.slot}, pid {worker.pid}, exited with status {status}")
            return
        how = "stopped on its own again too soon" if stopped_alone else "died"
        _log.warning(
            "worker %d (pid %d) %s (exit status %s); starting it again in %.2fs",
            worker.slot,
            worker.pid,
            how,
            status,
            delay,
            extra={"pid": worker.pid, "exit_status": status, "restart_delay": delay},
        )
        self._schedule_restart(worker.slot, delay)

    def _renew_unserved(self, slot: int) -> None:
        """A new socket for ``slot`` when nobody will accept on its own: no worker of
        the slot stays (retiring and leaving ones stop accepting as they drain), and no
        start is under way."""
        if (
            self._listeners is not None
            and not self._stopping
            and not self._spawning[slot]
            and not any(o.slot == slot and self._stays(o) for o in self._alive)
        ):
            self._listeners.renew(slot)

    def _schedule_restart(self, slot: int, delay: float) -> None:
        task = asyncio.create_task(self._restart(slot, delay), name=f"restart of worker {slot}")
        self._restarts[task] = slot
        task.add_done_callback(self._restarts.pop)
        task.add_done_callback(_log_failure)

    async def _restart(self, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or slot in self._current or self._spawning[slot]:
            return  # served, or a rolling restart is starting the slot's worker
        if await self._spawn(slot) is None:
            # As if it had died at once: backoff, and a crash loop when it persists.
            now = time.monotonic()
            again = self._crashes.died(slot, now=now, started=now)
            if again is None:
                self._crash_loop(f"worker {slot} could not be started")
                return
            self._schedule_restart(slot, again)

    def _crash_loop(self, last: str) -> None:
        self._failure = (
            f"crash loop: {self._crashes.describe()} ({last} last); stopping every worker"
        )
        _log.error("nexus workers: %s", self._failure)
        self._done.set()

    def _on_stop_signal(self, number: signal.Signals) -> None:
        if self._stopping:
            _log.warning("%s again: passing it on to the workers", number.name)
            self._signal_all(signal.SIGTERM)
            return
        _log.info("%s received: stopping %d workers", number.name, len(self._alive))
        self.stop()

    def _on_hangup(self) -> None:
        if self._stopping:
            return
        if not self._serving:
            _log.info("SIGHUP received while the workers start: rolling restart once they serve")
            self._roll_again = True
            return
        if self._rolling is not None and not self._rolling.done():
            # The configuration may have changed again since the running roll started
            # some workers: one more roll makes every worker read the latest.
            _log.info("SIGHUP received during a rolling restart: one more roll queued")
            self._roll_again = True
            return
        _log.info("SIGHUP received: rolling restart of %d workers", self.count)
        self._start_rolls()

    def _start_rolls(self) -> None:
        self._roll_again = False
        self._rolling = asyncio.create_task(self._rolls(), name="rolling restart")
        self._rolling.add_done_callback(_log_failure)

    async def _rolls(self) -> None:
        """Rolling restarts until none is queued (a SIGHUP during one queues another)."""
        while not self._stopping:
            await self.rolling_restart()
            if not self._roll_again:
                return
            self._roll_again = False
            _log.info("rolling restart queued by SIGHUP: rolling %d workers again", self.count)

    async def rolling_restart(self) -> bool:
        """Replace every worker, one at a time, never below ``count`` serving; whether
        all were replaced (a replacement that does not serve stops it, the old stays)."""
        for slot in range(self.count):
            if self._stopping:
                return False
            # A restart starting the slot's worker: the roll replaces that one. (No event
            # to wait on: starts are seldom and short.)
            while self._spawning[slot]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            old = self._current.get(slot)
            new = await self._spawn(slot)
            if new is None:
                return self._roll_stopped(slot, old, f"worker {slot} could not be started")
            self._awaited = new
            try:
                ready = await self._until_ready(new)
            finally:
                self._awaited = None
            if not ready:
                problem = self._not_ready(new)
                new.retiring = True
                # Retired, not stopped: it shares the slot's HTTP socket with the old
                # worker, which must keep listening on it.
                self._terminate(new, RETIRE_SIGNAL)
                if self._current.get(slot) is new:
                    del self._current[slot]
                return self._roll_stopped(slot, old, problem)
            if old is not None and not old.exited.is_set():
                old.retiring = True
                self._terminate(old, RETIRE_SIGNAL)
                await self._wait_exit([old])
        _log.info("rolling restart done: %d workers replaced", self.count)
        return True

    def _roll_stopped(self, slot: int, old: _Worker | None, problem: str) -> bool:
        """End a rolling restart whose replacement for ``slot`` did not serve: False."""
        if old is not None and not old.exited.is_set():
            self._current[slot] = old
            _log.error("rolling restart stopped: %s; the old worker keeps serving", problem)
            return False
        _log.error("rolling restart stopped: %s", problem)
        if not self._stopping and slot not in self._current and slot not in self._restarts.values():
            # The old worker died meanwhile, and its restart found the slot being
            # started by the roll: the slot needs a worker all the same.
            self._schedule_restart(slot, 0.0)
        return False

    async def _stop_all(self) -> None:
        self._stopping = True
        if self._listeners is not None:
            # Each worker keeps its own copy until it stops accepting: the sockets
            # close with the last one, and new connections are refused from then on.
            self._listeners.close()
        # Ended before the list is taken: a start they were making has its worker
        # in the list, or no process.
        starting = [t for t in (self._rolling, *self._restarts) if t is not None]
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        workers = list(self._alive)
        for worker in workers:
            # A retiring or leaving worker drains already: a SIGTERM now would be its
            # second one, which cancels the calls it is finishing.
            if not (worker.retiring or worker.leaving):
                self._terminate(worker)
        await self._wait_exit(workers)

    def _abandon(self) -> None:
        """Stop without waiting (what sees workers exit may be cancelled with the
        supervisor): every worker's line is closed, so each stops and drains as it
        does when its supervisor is gone, on one SIGTERM of its own."""
        self._stopping = True
        if self._listeners is not None:
            self._listeners.close()
        for task in (self._rolling, *self._restarts):
            if task is not None:
                task.cancel()
        for worker in list(self._alive):
            worker.writer.close()

    def _terminate(self, worker: _Worker, number: int = signal.SIGTERM) -> None:
        if not worker.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(number)

    def _signal_all(self, number: int) -> None:
        for worker in list(self._alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, number)

    async def _wait_exit(self, workers: list[_Worker]) -> None:
        """Wait for ``workers`` to exit; kill those still running after the timeout."""
        waiting = [asyncio.ensure_future(w.exited.wait()) for w in workers]
        if not waiting:
            return
        _, late = await asyncio.wait(waiting, timeout=self._stop_timeout)
        for task in late:
            task.cancel()
        for worker in workers:
            if not worker.exited.is_set():
                _log.error(
                    "worker %d (pid %d) still running %.0fs after SIGTERM: killing it",
                    worker.slot,
                    worker.pid,
                    self._stop_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        for worker in workers:
            await worker.exited.wait()
            await asyncio.gather(*worker.tasks, return_exceptions=True)
