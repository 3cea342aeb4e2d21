"""The supervisor with minimal workers (real processes on the real line, no host):
broadcast, restart with backoff, crash loop, failed start, rolling restart, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nexus_grpc.supervisor import RestartPolicy, Supervisor
from nexus_grpc.supervisor.ports import SlotListeners, reserve
from nexus_grpc.supervisor.supervisor import WorkerCommand

WORKER = Path(__file__).with_name("line_worker.py")
FAST = RestartPolicy(base_delay=0.05, max_delay=0.2, max_deaths=3, window=30.0)

pytestmark = pytest.mark.asyncio


def command(
    out: Path, modes: Callable[[int], str], sockets: list[tuple[int, int]] | None = None
) -> WorkerCommand:
    """Worker command lines; ``modes(n)`` is the mode of the n-th worker started
    (``missing``: a program that does not exist). ``sockets`` gets (slot, inode of the
    HTTP socket passed) per worker started."""
    started = [0]

    def line(fd: int, slot: int, http_fd: int | None) -> Sequence[str]:
        if sockets is not None and http_fd is not None:
            sockets.append((slot, os.fstat(http_fd).st_ino))
        started[0] += 1
        mode = modes(started[0])
        if mode == "missing":
            return [str(out / "no-such-program"), str(fd)]
        return [sys.executable, str(WORKER), str(fd), str(out), mode]

    return line


def supervisor(
    tmp_path: Path,
    count: int,
    modes: Callable[[int], str],
    *,
    stop_timeout: float = 10.0,
    policy: RestartPolicy = FAST,
    listeners: SlotListeners | None = None,
    sockets: list[tuple[int, int]] | None = None,
) -> Supervisor:
    return Supervisor(
        count,
        command(tmp_path, modes, sockets),
        metrics_dir=tmp_path,
        stop_timeout=stop_timeout,
        policy=policy,
        listeners=listeners,
    )


async def until(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def serving(sup: Supervisor) -> tuple[asyncio.Task[int], list[int]]:
    """``sup`` running until every worker serves: its run task and the workers' pids."""
    ready: list[list[int]] = []
    running = asyncio.create_task(sup.run(on_ready=ready.append))
    await until(lambda: bool(ready))
    return running, ready[0]


def received(tmp_path: Path, pid: int) -> list[dict[str, object]]:
    path = tmp_path / f"{pid}.json"
    return json.loads(path.read_text()) if path.exists() else []


async def test_a_broadcast_reaches_every_worker_once(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, 3, lambda n: "serve")
    running, pids = await serving(sup)
    sup.broadcast("go", None)
    # Each worker published one "hello": every worker got all three, itself included.
    await until(lambda: all(len(received(tmp_path, pid)) == 3 for pid in pids))
    for pid in pids:
        origins = sorted(m["origin"] for m in received(tmp_path, pid))  # type: ignore[type-var]
        assert origins == sorted(pids)
        assert sorted(m["data"]["pid"] for m in received(tmp_path, pid)) == sorted(pids)  # type: ignore[index]
    sup.stop()
    assert await running == 0
    # Stopped by SIGTERM, not by the line closing under them.
    assert all((tmp_path / f"{pid}.stopped").read_text() == "SIGTERM" for pid in pids)


async def test_a_dead_worker_is_started_again(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, 2, lambda n: "serve")
    running, pids = await serving(sup)
    victim = sup.pids()[1]
    os.kill(victim, signal.SIGKILL)
    await until(lambda: sup.pids().get(1) not in (None, victim))
    replacement = sup.pids()[1]
    # The new worker is on the line: it gets broadcasts (its own hello).
    sup.broadcast("go", None)
    await until(lambda: len(received(tmp_path, replacement)) >= 1)
    assert sup.pids()[0] == pids[0]
    sup.stop()
    assert await running == 0


async def test_a_crash_loop_stops_everything_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    sup = supervisor(tmp_path, 1, lambda n: "crash")
    status = await asyncio.wait_for(sup.run(), 30)
    assert status == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("crash loop: 3 worker deaths within 30s" in e for e in errors), errors
    restarts = [r for r in caplog.records if "starting it again" in r.getMessage()]
    # Backoff doubles: 0.05 s, then 0.1 s.
    assert [r.restart_delay for r in restarts] == [0.05, 0.1]  # type: ignore[attr-defined]


async def test_a_worker_failing_at_start_fails_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor(tmp_path, 2, lambda n: "serve" if n == 1 else "fail")
    status = await asyncio.wait_for(sup.run(), 30)
    assert status == 1
    assert "worker 1 (pid" in caplog.text
    assert "exited with status 3 before it served" in caplog.text
    assert "starting it again" not in caplog.text


async def test_rolling_restart_replaces_each_worker_after_its_replacement_serves(
    tmp_path: Path,
) -> None:
    sup = supervisor(tmp_path, 2, lambda n: "serve")
    running, pids = await serving(sup)
    old = pids
    assert await sup.rolling_restart() is True
    new = list(sup.pids().values())
    assert len(new) == 2 and not set(new) & set(old)
    # The old workers were retired (not SIGTERM: health stays SERVING), after their
    # replacements were on.
    assert all((tmp_path / f"{pid}.stopped").read_text() == "retired" for pid in old)
    sup.stop()
    assert await running == 0


async def test_a_replacement_that_fails_leaves_the_old_worker_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor(tmp_path, 2, lambda n: "serve" if n <= 2 else "fail")
    running, pids = await serving(sup)
    assert await sup.rolling_restart() is False
    assert sorted(sup.pids().values()) == sorted(pids)
    assert "rolling restart stopped: worker 0" in caplog.text
    sup.stop()
    assert await running == 0


async def test_a_worker_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, 1, lambda n: "stubborn", stop_timeout=0.5)
    running, pids = await serving(sup)
    sup.stop()
    assert await asyncio.wait_for(running, 10) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


async def test_a_stop_during_the_start_is_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor(tmp_path, 2, lambda n: "slow")
    running = asyncio.create_task(sup.run())
    await asyncio.sleep(0.5)
    sup.stop()
    assert await asyncio.wait_for(running, 20) == 0
    assert "before it served" not in caplog.text


async def test_a_worker_dying_while_the_others_start_is_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    # Worker 0 serves, then dies while worker 1 is still starting (3 s).
    modes = {1: "crash", 2: "slow"}
    sup = supervisor(tmp_path, 2, lambda n: modes.get(n, "serve"))
    running, pids = await serving(sup)
    # Start-up waited for the replacement: every slot serves, with the pids reported.
    assert len(pids) == 2 and pids == [sup.pids()[0], sup.pids()[1]]
    assert "worker 0 (pid" in caplog.text and "starting it again" in caplog.text
    sup.stop()
    assert await running == 0


async def test_a_sigterm_during_a_rolling_restart_is_not_sent_twice_to_the_retiring_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    sup = supervisor(tmp_path, 1, lambda n: "draining")
    running, pids = await serving(sup)
    old = pids[0]
    os.kill(os.getpid(), signal.SIGHUP)
    # The replacement serves, the old worker is retiring (draining 1.5 s): stop now.
    await until(lambda: caplog.text.count(") serving") == 2)
    new = sup.pids()[0]
    await asyncio.sleep(0.2)
    sup.stop()
    assert await asyncio.wait_for(running, 20) == 0
    stopped = await asyncio.to_thread((tmp_path / f"{old}.stopped").read_text)
    assert stopped == "retired"
    stopped = await asyncio.to_thread((tmp_path / f"{new}.stopped").read_text)
    assert stopped == "SIGTERM"


async def test_a_sighup_during_a_rolling_restart_queues_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    sup = supervisor(tmp_path, 2, lambda n: "serve" if n <= 2 else "slow")
    running, _ = await serving(sup)
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.sleep(0.5)
    os.kill(os.getpid(), signal.SIGHUP)  # the first roll waits for a slow replacement
    await until(lambda: caplog.text.count("rolling restart done") == 2, seconds=40)
    assert "one more roll queued" in caplog.text
    # Two rolls of two workers: six workers started in all, two serve.
    assert len(await asyncio.to_thread(lambda: list(tmp_path.glob("*.stopped")))) == 4
    sup.stop()
    assert await running == 0


async def test_a_sighup_during_the_start_rolls_once_the_workers_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    sup = supervisor(tmp_path, 2, lambda n: "slow" if n <= 2 else "serve")
    ready: list[list[int]] = []
    running = asyncio.create_task(sup.run(on_ready=ready.append))
    await asyncio.sleep(1.0)
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: "rolling restart done" in caplog.text, seconds=40)
    alive = sorted(sup.pids().values())
    assert len(alive) == 2 and not set(alive) & set(ready[0])
    sup.stop()
    assert await running == 0


async def test_restart_requests_say_why_they_are_refused(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, 1, lambda n: "ask" if n == 1 else "serve")
    running, pids = await serving(sup)
    asked = tmp_path / f"{pids[0]}.asked"
    # Before it served: the workers are starting (UNAVAILABLE for RestartWorkers).
    assert (await asyncio.to_thread(asked.read_text)).splitlines() == [
        "SupervisorUnavailable: the workers are starting or stopping"
    ]
    sup.broadcast("ask", None)
    # The first starts a roll of 1 worker; the second finds it running (ABORTED).
    await until(lambda: len(asked.read_text().splitlines()) == 3)
    assert (await asyncio.to_thread(asked.read_text)).splitlines()[1:] == [
        "1",
        "RestartRunning: a rolling restart is running already",
    ]
    await until(lambda: sup.pids()[0] != pids[0])
    sup.stop()
    assert await running == 0


async def test_a_slot_serves_every_worker_on_one_http_socket_until_a_worker_dies(
    tmp_path: Path,
) -> None:
    port = reserve("127.0.0.1:0", "http.address")
    listeners = SlotListeners(port)
    sockets: list[tuple[int, int]] = []
    sup = supervisor(tmp_path, 2, lambda n: "serve", listeners=listeners, sockets=sockets)

    def passed(slot: int) -> list[int]:
        """Inodes of the sockets passed to ``slot``'s workers, in order."""
        return [inode for passed_slot, inode in sockets if passed_slot == slot]

    ready: list[list[int]] = []
    running = asyncio.create_task(sup.run(on_ready=ready.append))
    try:
        await until(lambda: bool(ready))
        first = {slot: passed(slot) for slot in (0, 1)}
        assert all(len(inodes) == 1 for inodes in first.values())
        assert first[0] != first[1]
        assert await sup.rolling_restart()
        # Both replacements got their slot's socket: the roll closed none.
        assert {slot: passed(slot) for slot in (0, 1)} == {
            slot: inodes * 2 for slot, inodes in first.items()
        }
        # Slot 0's worker dies: its restart gets a new socket, slot 1 keeps its own.
        victim = sup.pids()[0]
        os.kill(victim, signal.SIGKILL)
        # Until the restart is the slot's worker: its start is over (a stop cancelling a
        # start half-way would leave the process behind).
        await until(lambda: sup.pids().get(0, victim) != victim)
        assert passed(0)[2] not in first[0] + first[1]
        assert os.fstat(listeners.for_slot(0).fileno()).st_ino == passed(0)[2]
        assert os.fstat(listeners.for_slot(1).fileno()).st_ino == first[1][0]
    finally:
        sup.stop()
        assert await running == 0
        listeners.close()
        port.close()


async def test_a_stop_closes_the_supervisors_http_sockets_before_the_workers_drain(
    tmp_path: Path,
) -> None:
    port = reserve("127.0.0.1:0", "http.address")
    listeners = SlotListeners(port)
    sup = supervisor(tmp_path, 2, lambda n: "stubborn", stop_timeout=3.0, listeners=listeners)
    ready: list[list[int]] = []
    running = asyncio.create_task(sup.run(on_ready=ready.append))
    try:
        await until(lambda: bool(ready))
        held = [listeners.for_slot(slot) for slot in (0, 1)]
        sup.stop()
        # Each worker's own copy keeps its socket until it stops accepting, no longer.
        await until(lambda: all(sock.fileno() == -1 for sock in held), seconds=2.0)
        assert all(_running(pid) for pid in ready[0])
    finally:
        sup.stop()
        assert await running == 0
        port.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_of(out: Path) -> list[int]:
    """Pids of the live worker processes started with ``out`` as their folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile
        if str(out).encode() in argv and str(WORKER).encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


async def test_a_worker_that_cannot_be_started_fails_the_start_and_stops_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor(tmp_path, 3, lambda n: "missing" if n == 2 else "serve")
    assert await asyncio.wait_for(sup.run(), 20) == 1
    assert "worker 1 could not be started: [Errno 2]" in caplog.text
    assert "nexus workers stopped: worker 1 could not be started" in caplog.text
    # Worker 0 had started: it is stopped with the supervisor, not left running.
    assert _processes_of(tmp_path) == []


async def test_a_restart_that_cannot_start_its_worker_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    # Worker 1 dies after it served; its first restart finds no program, the next works.
    modes = {1: "crash", 2: "missing"}
    sup = supervisor(tmp_path, 1, lambda n: modes.get(n, "serve"))
    running, pids = await serving(sup)
    await until(lambda: caplog.text.count(") serving") == 2)
    assert "worker 0 could not be started" in caplog.text
    assert sup.pids()[0] != pids[0]
    sup.stop()
    assert await running == 0


async def test_a_roll_that_cannot_start_a_replacement_keeps_the_old_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor(tmp_path, 2, lambda n: "missing" if n == 3 else "serve")
    running, pids = await serving(sup)
    assert await sup.rolling_restart() is False
    assert (
        "rolling restart stopped: worker 0 could not be started; the old worker keeps serving"
        in caplog.text
    )
    assert sorted(sup.pids().values()) == sorted(pids)
    assert sorted(_processes_of(tmp_path)) == sorted(pids)
    sup.stop()
    assert await running == 0


async def test_a_slot_whose_old_worker_died_during_a_failed_roll_is_served_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    # The replacement (2nd worker) never serves; the old one dies while it starts.
    sup = supervisor(tmp_path, 1, lambda n: "late-fail" if n == 2 else "serve")
    running, pids = await serving(sup)
    old = pids[0]
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: caplog.text.count(" started (pid") == 2)
    os.kill(old, signal.SIGKILL)
    await until(lambda: "rolling restart stopped: worker 0" in caplog.text)
    assert "the old worker keeps serving" not in caplog.text
    # Before, the slot stayed empty: the old worker's restart had found it taken.
    await until(lambda: caplog.text.count(") serving") == 2)
    assert sup.pids()[0] != old
    assert _processes_of(tmp_path) == [sup.pids()[0]]
    sup.stop()
    assert await running == 0


async def test_a_stop_during_a_restarts_start_leaves_no_process_behind(tmp_path: Path) -> None:
    stopping: list[Supervisor] = []

    def modes(n: int) -> str:
        if n == 2:
            # The stop lands while the restart of the crashed worker 1 starts this one.
            stopping[0].stop()
        return "crash" if n == 1 else "serve"

    sup = supervisor(tmp_path, 1, modes)
    stopping.append(sup)
    assert await asyncio.wait_for(sup.run(), 20) == 0
    # Time for a process left behind to be seen running the worker.
    await asyncio.sleep(1.0)
    assert _processes_of(tmp_path) == []


async def test_a_worker_stopped_alone_hands_its_http_socket_over_only_to_a_partner_that_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    modes = {1: "hand-over"}
    sup = supervisor(tmp_path, 1, lambda n: modes.get(n, "slow-hand-over"))
    running, pids = await serving(sup)
    old = pids[0]

    async def stopped_by_hand(pid: int) -> str:
        if pid != old:
            await until((tmp_path / f"{pid}.starting").exists)
        os.kill(pid, signal.SIGTERM)
        answer = tmp_path / f"{pid}.hand_over"
        await until(answer.exists)
        return answer.read_text()

    # A roll's replacement stopped while it starts: the old worker serves on the slot's
    # socket, which must keep listening.
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: caplog.text.count(" started (pid") == 2)
    assert await stopped_by_hand(sup.pids()[0]) == "True"
    await until(lambda: "rolling restart stopped" in caplog.text)
    assert sup.pids()[0] == old
    # The old worker stopped while its replacement starts, which may listen already.
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: caplog.text.count(" started (pid") == 3)
    assert await stopped_by_hand(old) == "True"
    await until(lambda: "rolling restart done" in caplog.text)
    # The replacement, alone in its slot: it ends the socket's listening.
    assert await stopped_by_hand(sup.pids()[0]) == "False"
    sup.stop()
    assert await running == 0


async def test_a_worker_stopping_on_its_own_gets_no_second_sigterm_at_the_stop(
    tmp_path: Path,
) -> None:
    sup = supervisor(tmp_path, 1, lambda n: "leaving")
    running, pids = await serving(sup)
    pid = pids[0]
    os.kill(pid, signal.SIGTERM)
    await until((tmp_path / f"{pid}.leaving").exists)
    # A second SIGTERM would cancel the calls it drains.
    sup.stop()
    assert await asyncio.wait_for(running, 20) == 0
    assert (tmp_path / f"{pid}.stopped").read_text() == "SIGTERM"


async def test_a_worker_leaving_while_a_roll_starts_its_replacement_hands_its_socket_over(
    tmp_path: Path,
) -> None:
    port = reserve("127.0.0.1:0", "http.address")
    listeners = SlotListeners(port)
    sockets: list[tuple[int, int]] = []
    answers: list[bool] = []
    holder: list[Supervisor] = []

    def modes(n: int) -> str:
        if n == 2:
            # The old worker's hand-over question, read while its replacement has the
            # slot's socket but is not registered yet.
            sup = holder[0]
            answers.append(sup._leaving(sup._current[0]))
        return "serve"

    sup = supervisor(tmp_path, 1, modes, listeners=listeners, sockets=sockets)
    holder.append(sup)
    ready: list[list[int]] = []
    running = asyncio.create_task(sup.run(on_ready=ready.append))
    try:
        await until(lambda: bool(ready))
        assert await sup.rolling_restart()
        # Before, the answer was False: the socket renewed under the replacement, which
        # the old worker's shutdown would then have left unable to accept.
        assert answers == [True]
        assert [inode for _, inode in sockets] == [sockets[0][1]] * 2
        assert os.fstat(listeners.for_slot(0).fileno()).st_ino == sockets[0][1]
    finally:
        sup.stop()
        assert await running == 0
        listeners.close()
        port.close()


async def test_a_worker_stopped_by_hand_is_started_again_at_once_and_is_no_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    # Two deaths would be a crash loop, and a death waits 5 s for its restart; a slot
    # may stop on its own once a second without it counting.
    policy = RestartPolicy(
        base_delay=5.0, max_delay=5.0, max_deaths=2, window=60.0, stable_after=1.0
    )
    sup = supervisor(tmp_path, 1, lambda n: "leaving", policy=policy)
    running, _ = await serving(sup)
    stopped = []
    for served in range(2, 5):
        pid = sup.pids()[0]
        os.kill(pid, signal.SIGTERM)  # it drains 1.5 s, then exits 0
        await until(lambda n=served: caplog.text.count(") serving") == n, seconds=4.0)
        stopped.append(pid)
    assert all((tmp_path / f"{pid}.stopped").read_text() == "SIGTERM" for pid in stopped)
    assert caplog.text.count("stopped on its own; starting a new one") == 3
    assert "died" not in caplog.text
    assert not running.done()
    sup.stop()
    assert await asyncio.wait_for(running, 20) == 0


async def test_a_slot_whose_workers_keep_stopping_on_their_own_ends_in_a_crash_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nexus.supervisor")
    # Each worker stops on its own right after it serves: only the first is free.
    sup = supervisor(tmp_path, 1, lambda n: "self-stop")
    assert await asyncio.wait_for(sup.run(), 20) == 1
    assert caplog.text.count("stopped on its own; starting a new one") == 1
    assert caplog.text.count("stopped on its own again too soon (exit status 0)") == 2
    assert "crash loop: 3 worker deaths within 30s" in caplog.text
