"""A storm of new connections through rolling restarts, in a network namespace.

``unshare -n python -m tests.supervisor.storm MIGRATE ROLLS`` (root): brings up the
namespace's loopback, sets ``net.ipv4.tcp_migrate_req`` there to MIGRATE (0 or 1),
starts a throwaway redis-server and ``nexus serve --workers 2``, opens new
connections on both ports from 8 threads as fast as they go (HTTP/1.1 GET /healthz;
gRPC: the HTTP/2 preface, answered by the server's SETTINGS), sends SIGHUP ROLLS
times (each after the previous roll is done, all bounded in time) and prints one JSON
object: outcomes counted by kind, the connection errors, and the rolls done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
THREADS_PER_PORT = 4


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Storm:
    def __init__(self, http: str, grpc: str) -> None:
        self.targets = {"http": _address(http), "grpc": _address(grpc)}
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def one(self, kind: str) -> None:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(self.targets[kind])
            if kind == "http":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ok = sock.recv(64).startswith(b"HTTP/1.1 200")
            else:
                sock.sendall(PREFACE)
                data = sock.recv(9)
                ok = len(data) == 9 and data[3] == 4
                if data == b"":
                    # Closed cleanly before the server's SETTINGS: grpc core ending a
                    # connection it accepted as its server shut down (no reset).
                    with self.lock:
                        self.outcomes["grpc closed"] += 1
                    return
            with self.lock:
                self.outcomes[f"{kind} {'ok' if ok else 'failed'}"] += 1
        except OSError as error:
            with self.lock:
                self.outcomes[f"{kind} failed"] += 1
                self.errors[f"{kind} {type(error).__name__}"] += 1
        finally:
            sock.close()

    def loop(self, kind: str) -> None:
        while not self.stop.is_set():
            self.one(kind)


def main(migrate: str, rolls: int) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/ipv4/tcp_migrate_req").write_text(migrate)
    work = Path(tempfile.mkdtemp(prefix="nexus-storm-"))
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(work / "r.sock"), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    supervisor = None
    try:
        url = f"unix://{work}/r.sock"
        tables = "".join(
            f'[{name}]\nbackend = "redis"\nredis_url = "{url}"\n'
            for name in ("limits", "events", "cache")
        )
        rates = "[limits.rate_classes.default]\nrate = 1000000\nburst = 1000000\n"
        (work / "nexus.toml").write_text(tables + rates)
        env = {
            **os.environ,
            "NEXUS_DATA_DIR": str(work / "data"),
            "NEXUS_PLUGINS__DIRS": str(REPO / "plugins"),
            "NEXUS_PLUGINS__ENTRY_POINTS": "false",
            "NEXUS_LOG__FORMAT": "json",
            "NEXUS_LOG__ACCESS": "false",
            "NEXUS_HTTP__ADDRESS": "127.0.0.1:0",
        }
        log = work / "serve.log"
        with log.open("w") as out:
            supervisor = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("nexus")),
                    "serve",
                    "--config",
                    str(work / "nexus.toml"),
                    "--grpc-address",
                    "127.0.0.1:0",
                    "--workers",
                    "2",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=out,
            )

        def lines() -> list[dict[str, object]]:
            found = []
            for line in log.read_text().splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
            return found

        def wait(message: str, count: int, seconds: float) -> dict[str, object]:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                matching = [e for e in lines() if str(e.get("message", "")).startswith(message)]
                if len(matching) >= count:
                    return matching[-1]
                time.sleep(0.1)
            raise TimeoutError(f"no {message!r} (x{count}) in {seconds}s")

        ready = wait("nexus workers serving on", 1, 90)
        storm = Storm(str(ready["http_address"]), str(ready["grpc_address"]))
        threads = [
            threading.Thread(target=storm.loop, args=(kind,))
            for kind in ["http", "grpc"] * THREADS_PER_PORT
        ]
        for thread in threads:
            thread.start()
        done = 0
        try:
            time.sleep(1.0)
            for roll in range(1, rolls + 1):
                supervisor.send_signal(signal.SIGHUP)
                wait("rolling restart done", roll, 90)
                done = roll
            time.sleep(1.0)
        finally:
            storm.stop.set()
            for thread in threads:
                thread.join(30)
        print(
            json.dumps(
                {
                    "tcp_migrate_req": int(migrate),
                    "rolls": done,
                    "outcomes": dict(storm.outcomes),
                    "errors": dict(storm.errors),
                }
            )
        )
    finally:
        if supervisor is not None:
            supervisor.send_signal(signal.SIGTERM)
            try:
                supervisor.wait(60)
            except subprocess.TimeoutExpired:
                supervisor.kill()
        redis.kill()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
