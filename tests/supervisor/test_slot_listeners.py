"""The HTTP port's listening sockets belong to the supervisor, one per worker slot.

A rolling restart's replacement serves on its predecessor's socket, so no HTTP listener
closes during a roll (closing one drops or resets what its queue held, unless the kernel
migrates it, and races connections completing their handshake). A worker that dies
takes its slot's socket with it: the supervisor closes it, so that no connection waits
on a socket nobody accepts on, and the replacement gets a new one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.redis import RedisServer
from tests.supervisor.conftest import Workers, start_workers, until, workers_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def listening_sockets(pid: int, port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` that process ``pid`` holds."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                listening.add(inode)
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            held.add(int(target.removeprefix("socket:[").removesuffix("]")))
    return listening & held


def started(entry: dict[str, object]) -> tuple[int, int] | None:
    """(slot, pid) of a supervisor's "worker N started (pid P)" log entry, else None."""
    message = str(entry.get("message", ""))
    if not (message.startswith("worker ") and " started (pid " in message):
        return None
    return int(message.split()[1]), int(str(entry["pid"]))


def wait_started(host: Workers, known: set[int]) -> tuple[int, int]:
    """(slot, pid) of the next worker started that is not among ``known``."""
    entry = host.wait_for_log(
        lambda e: (found := started(e)) is not None and found[1] not in known, timeout=60
    )
    found = started(entry)
    assert found is not None
    return found


@pytest.fixture
def host(redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    """``nexus serve --workers 2`` on free ports, closed after the test."""
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/10"
    workers = start_workers(tmp_path, workers_config(tmp_path / "nexus.toml", redis_url))
    try:
        yield workers
    finally:
        workers.close()


def http_port(host: Workers) -> int:
    """The port of ``host``'s HTTP address."""
    return int(host.http_address.rpartition(":")[2])


def test_http_listeners_outlive_rolling_restarts_but_not_a_dead_worker(host: Workers) -> None:
    port = http_port(host)
    slots = listening_sockets(host.process.pid, port)
    # One per slot; the port's reservation does not listen.
    assert len(slots) == 2
    first = {pid: listening_sockets(pid, port) for pid in host.worker_pids}
    assert sorted(len(held) for held in first.values()) == [1, 1]
    assert set().union(*first.values()) == slots

    host.process.send_signal(signal.SIGHUP)
    known = set(first)
    replacements: dict[int, int] = {}
    for _ in first:
        slot, pid = wait_started(host, known | set(replacements))
        replacements[pid] = slot
    host.wait_for_log(
        lambda e: str(e.get("message", "")).startswith("rolling restart done"), timeout=90
    )
    for pid in replacements:
        # The very sockets the replaced workers served on.
        held = listening_sockets(pid, port)
        assert len(held) == 1 and held <= slots
    assert listening_sockets(host.process.pid, port) == slots
    assert httpx.get(f"http://{host.http_address}/healthz", timeout=10).status_code == 200

    victim, survivor = list(replacements)
    lost = listening_sockets(victim, port)
    os.kill(victim, signal.SIGKILL)
    slot, restarted = wait_started(host, known | set(replacements))
    assert slot == replacements[victim]
    until(lambda: len(listening_sockets(restarted, port)) == 1, seconds=60.0)
    renewed = listening_sockets(restarted, port)
    assert not renewed & slots, "the dead worker's socket was handed on"
    assert listening_sockets(host.process.pid, port) == (slots - lost) | renewed
    assert listening_sockets(survivor, port) == slots - lost
    assert httpx.get(f"http://{host.http_address}/healthz", timeout=10).status_code == 200
    assert host.stop() == 0


def test_a_worker_stopped_alone_in_the_middle_of_its_roll_leaves_its_socket_listening(
    host: Workers,
) -> None:
    port = http_port(host)
    slots = listening_sockets(host.process.pid, port)
    host.process.send_signal(signal.SIGHUP)
    slot, replacement = wait_started(host, set(host.worker_pids))
    old = host.worker_pids[slot]
    held = listening_sockets(old, port)
    # An operator's SIGTERM to the old worker while its replacement starts: the
    # replacement shares the slot's socket (it may listen on it already), so the
    # old worker must not end its listening.
    os.kill(old, signal.SIGTERM)
    host.wait_for_log(
        lambda e: str(e.get("message", "")).startswith("rolling restart done"), timeout=90
    )
    until(lambda: not Path(f"/proc/{old}").exists(), seconds=30.0)
    assert listening_sockets(replacement, port) == held
    assert listening_sockets(host.process.pid, port) == slots
    for _ in range(20):  # on every slot's socket, whichever the kernel picks
        assert httpx.get(f"http://{host.http_address}/healthz", timeout=10).status_code == 200
    assert host.stop() == 0
