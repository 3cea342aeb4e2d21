"""Instructions per request, counted by callgrind: the load bench's ratios with less noise.

Throughput on a shared 2-core machine varies by 10 to 30 % between rounds of one run,
more than the differences the pipeline goal is about (nexus gRPC echo >= 0.9x bare
grpc.aio). Instruction counts vary much less: valgrind's callgrind counts every
instruction the server process executes in user space, all its threads. This runs each
server under callgrind, warms every case up (``WARMUP_REQUESTS``), then per case zeroes
the counters (``callgrind_control -z``), sends a fixed number of requests with h2load
(its connections opened anew per case: 4 x 8 streams for gRPC, up to 32 HTTP/1.1 for
REST), waits ``SETTLE_SECONDS`` for work the requests left behind (the outbox relay's
deletes), and dumps the counters (``callgrind_control -d``):

* nexus (``nexus serve``, the load bench's config and plugins: orders and the echo
  plugin): gRPC Echo, GetOrder and CreateOrder, and REST ``POST /v1/echo/{id}``,
  ``GET /v1/orders/{id}`` and ``POST /v1/orders``, every request with the bench's bearer
  token;
* bare grpc.aio (``benchmarks/bare_grpc.py --echo-stubs``): gRPC Echo.

Every request must succeed: a 2xx, and for gRPC (whose errors are HTTP 200 too) at least
the bytes of the response the case's check call got, per request.

nexus has timers (the HTTP server's 100 ms tick, grpc core's threads, the outbox relay):
~5 million instructions per second of wall time under valgrind, where a request takes
~50x longer than natively (bare grpc.aio: ~0.02 million). Each server's idle rate is
measured (counters zeroed, ``IDLE_SECONDS`` and the settle time without requests,
dumped) and taken out for each case's wall time: ``net`` below. The idle rate itself
moves by up to ~10 % between windows, so ``net`` moves by ~1 % of an echo between
runs, and a ratio by about as much.

What this does not count: the kernel. System calls (SQLite's WAL writes and locks,
socket I/O) cost CPU time but are one instruction each here, so the storage ratios of
this table are kinder than the CPU ratios of ``benchmarks/run.py``; for the echo
against echo comparison both servers make the same system calls. Instructions are not
time either (cache misses and instructions per cycle differ between code paths): read
these ratios next to the load bench's CPU figures, which the goals are stated in, not
in place of them.

With ``BENCH_STORAGE=postgresql`` (as for ``benchmarks/run.py``) nexus stores in a
throwaway PostgreSQL server; its instructions are the server's own and not counted.

    .venv/bin/python -m benchmarks.instructions                 # ~3 to 4 minutes
    .venv/bin/python -m benchmarks.instructions --requests 1000
    BENCH_STORAGE=postgresql .venv/bin/python -m benchmarks.instructions
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.run import (
    BENCH_DIR,
    BIN,
    ECHO,
    ECHO_PROTOS,
    ECHO_SERVICE,
    ORDER,
    SERVICE,
    BenchError,
    Processes,
    free_ports,
    grpc_frame,
    http_ready,
    make_credentials,
    postgres_database,
    rest_create,
    storage_setting,
    terminated_on_signals,
    wait_until,
    write_nexus_config,
)

__all__ = [
    "Counted",
    "dump_total",
    "grpc_load",
    "grpc_succeeds",
    "h2load_problem",
    "listening",
    "main",
    "net_per_request",
]

RESULTS_FILE = BENCH_DIR / "results" / "instructions.json"
#: Seconds of wall time each server's idle rate is measured over.
IDLE_SECONDS = 6.0
#: Seconds counted after each case's last response, and waited before the idle window:
#: work a case leaves behind (the outbox relay deletes published events within its 1 s
#: poll) is counted with the case, not with the next one or the idle rate.
SETTLE_SECONDS = 2.0
#: Requests of each case before it is measured: first calls fill caches and import lazily.
WARMUP_REQUESTS = 40
#: Seconds a server may take to start under valgrind (~50x slower than natively).
START_TIMEOUT = 600.0
#: Characters of a dump's start read to find its trigger and summary.
_HEADER_CHARS = 16_384
_SUMMARY = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)
_H2_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2_DATA = re.compile(r"traffic: .*?, \S+ \((\d+)\) data")


@dataclass(frozen=True)
class Counted:
    """One measured case: instructions over a number of requests and seconds."""

    name: str
    requests: int
    instructions: int
    seconds: float


def net_per_request(counted: Counted, idle_per_second: float) -> float:
    """Instructions per request once the server's idle work over the case's wall time
    is taken out."""
    if counted.requests <= 0:
        raise ValueError(f"{counted.name}: no requests counted")
    return (counted.instructions - idle_per_second * counted.seconds) / counted.requests


def dump_total(out_file: Path, label: str) -> int:
    """The instruction total of callgrind's dump named ``label`` next to ``out_file``.

    Each ``callgrind_control -d <label>`` writes ``<out_file>.<n>`` whose header names
    the trigger (``desc: Trigger: dump <label>``) and carries the totals.
    """
    trigger = f"desc: Trigger: dump {label}\n"
    for path in sorted(out_file.parent.glob(out_file.name + ".*")):
        # The header holds the trigger and the summary; the dump itself runs to megabytes.
        with path.open(errors="replace") as handle:
            head = handle.read(_HEADER_CHARS)
        if trigger in head:
            match = _SUMMARY.search(head) or _SUMMARY.search(path.read_text(errors="replace"))
            if match is None:
                raise BenchError(f"{path}: a callgrind dump without totals")
            return int(match.group(1))
    raise BenchError(f"no callgrind dump named {label!r} beside {out_file}")


class CallgrindServer:
    """A server process running under callgrind, whose counters this zeroes and dumps.

    ``procs`` (the load bench's) starts it, logs its output, lists it in the pid file
    ``scripts/bench`` cleans up with, and stops it.
    """

    def __init__(
        self, procs: Processes, name: str, argv: list[str], env: dict[str, str], workdir: Path
    ) -> None:
        self.name = name
        self.out_file = workdir / f"{name}.callgrind"
        self._procs = procs
        command = [
            "valgrind",
            "--tool=callgrind",
            # Every dump self-contained (names spelled out): callgrind_annotate reads
            # any of them alone.
            "--compress-strings=no",
            f"--callgrind-out-file={self.out_file}",
            *argv,
        ]
        self._pid = procs.start(name, command, env).pid

    def check(self) -> None:
        """BenchError, with the end of the server's output, if it has exited."""
        self._procs.check(self.name)

    def _control(self, *arguments: str) -> None:
        # callgrind_control exits 0 whatever happened: its "OK." is the only success.
        self.check()
        command = ["callgrind_control", *arguments, str(self._pid)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{' '.join(command)} did not answer in 120 s") from None
        if "OK." not in result.stdout:
            self.check()
            answer = (result.stdout + result.stderr).strip()[-300:]
            raise BenchError(f"{' '.join(command)} failed: {answer}")

    def count(self, name: str, action: Callable[[], int]) -> Counted:
        """Instructions the server executes while ``action()`` runs (it returns the
        number of requests it made) and for ``SETTLE_SECONDS`` after."""
        self._control("-z")
        started = time.monotonic()
        requests = action()
        time.sleep(SETTLE_SECONDS)
        seconds = time.monotonic() - started
        label = re.sub(r"\W", "_", name)
        self._control("-d", label)
        return Counted(name, requests, dump_total(self.out_file, label), seconds)


@dataclass(frozen=True)
class Load:
    """A fixed number of identical requests sent with h2load, checked for success."""

    url: str
    headers: tuple[str, ...]
    body: Path | None
    http1: bool = False
    #: gRPC: bytes of the smallest successful response, 5-byte prefix included (an
    #: error is HTTP 200 too, but carries no message: the DATA received tells them apart).
    min_response: int = 0

    def send(self, requests: int) -> int:
        """Send ``requests`` requests; their number, or BenchError when any failed."""
        argv = ["h2load", "-n", str(requests), "-t", "1"]
        if self.http1:  # h2load wants no more connections than requests
            argv += ["--h1", "-c", str(min(32, requests))]
        else:
            argv += ["-c", str(min(4, requests)), "-m", "8"]
        if self.body is not None:
            argv += ["-d", str(self.body)]
        for header in self.headers:
            argv += ["-H", header]
        try:
            result = subprocess.run([*argv, self.url], capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise BenchError(f"h2load on {self.url} did not finish in 900 s") from None
        if result.returncode != 0:
            raise BenchError(f"h2load failed: {(result.stderr or result.stdout).strip()[-300:]}")
        problem = h2load_problem(result.stdout, requests, self.min_response)
        if problem is not None:
            raise BenchError(f"{self.url}: {problem}")
        return requests


def h2load_problem(output: str, requests: int, min_response: int) -> str | None:
    """What h2load's report says went wrong with ``requests`` requests; None if each
    succeeded with a 2xx and the responses hold at least ``min_response`` bytes each."""
    done = _H2_REQUESTS.search(output)
    codes = _H2_STATUS.search(output)
    data = _H2_DATA.search(output)
    if done is None or codes is None or data is None:
        return f"unreadable h2load report: {output.strip()[-300:]}"
    succeeded, ok, received = int(done.group(3)), int(codes.group(1)), int(data.group(1))
    if succeeded != requests or ok != requests or received < requests * min_response:
        return (
            f"{succeeded} of {requests} requests succeeded, {ok} with 2xx, {received} bytes "
            f"of responses (at least {requests * min_response} expected)"
        )
    return None


def grpc_load(
    port: int, path: str, payload: bytes, workdir: Path, auth: str, response: int
) -> Load:
    """h2load calls of ``path`` with ``payload`` framed in a file under ``workdir``, each
    expected to answer at least ``response`` bytes of message."""
    body = workdir / f"{path.strip('/').replace('/', '_')}.bin"
    body.write_bytes(grpc_frame(payload))
    headers = ("content-type: application/grpc", "te: trailers", f"authorization: {auth}")
    return Load(f"http://127.0.0.1:{port}{path}", headers, body, min_response=5 + response)


def _rest_load(port: int, path: str, body: Any, workdir: Path, auth: str) -> Load:
    headers: tuple[str, ...] = (f"authorization: {auth}",)
    file = None
    if body is not None:
        file = workdir / f"{path.strip('/').replace('/', '_')}.json"
        file.write_text(json.dumps(body, separators=(",", ":")))
        headers += ("content-type: application/json",)
    return Load(f"http://127.0.0.1:{port}{path}", headers, file, http1=True)


def grpc_succeeds(port: int, path: str, payload: bytes, auth: str) -> bytes:
    """One call as h2load will make it (gRPC errors come as HTTP 200, so its status is
    checked here); its response. ``run.grpc_check`` but waiting for the server to serve
    (its port accepts connections before it does) and for a first call under valgrind."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        # No (de)serializers: the payload goes out as given, the response comes back as bytes.
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            response: bytes = call(
                payload, metadata=(("authorization", auth),), timeout=120, wait_for_ready=True
            )
        except grpc.RpcError as error:
            raise BenchError(f"{path} answered {error.code().name}: {error.details()}") from None
    return response


def listening(port: int) -> Callable[[], bool]:
    """A readiness probe: True once ``port`` on loopback accepts a connection."""

    # A plain connect: grpc's own readiness wait swallows a Ctrl-C while a server starts.
    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    return probe


def _idle() -> int:
    time.sleep(IDLE_SECONDS)
    return 1  # "requests": the idle count is used per second, not per request


def _measure(
    server: CallgrindServer, cases: dict[str, Load], requests: dict[str, int]
) -> tuple[float, list[Counted]]:
    """Every case warmed up; then the server's idle rate; then every case counted."""
    for load in cases.values():
        load.send(WARMUP_REQUESTS)
    time.sleep(SETTLE_SECONDS)  # what the warm-up left behind is not idle work
    idle = server.count("idle", _idle)
    idle_rate = idle.instructions / idle.seconds
    counted = [
        server.count(name, functools.partial(load.send, requests[name]))
        for name, load in cases.items()
    ]
    return idle_rate, counted


def run(requests: int, workdir: Path, storage_url: str = "") -> dict[str, Any]:
    """Measure nexus's six cases (on ``storage_url``, else SQLite) and bare grpc.aio's
    echo; the results as a dict."""
    from google.protobuf import json_format
    from nexus.orders.v1 import orders_pb2

    from nexus_grpc.codegen import generate

    credentials = make_credentials(workdir)
    auth = credentials.authorization
    stubs = workdir / "echo-stubs"
    generate(ECHO_PROTOS, stubs)
    sys.path.insert(0, str(stubs))
    from transcode.v1 import transcode_pb2

    echo = transcode_pb2.EchoRequest(
        id=ECHO["id"], shelf=ECHO["shelf"], name=ECHO["name"], tags=ECHO["tags"]
    ).SerializeToString()
    create = orders_pb2.CreateOrderRequest()
    json_format.ParseDict(ORDER, create.order)
    echo_path = f"/{ECHO_SERVICE}/Echo"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    inherited = [base_env["PYTHONPATH"]] if base_env.get("PYTHONPATH") else []
    env = {**base_env, "PYTHONPATH": os.pathsep.join([str(stubs), *inherited])}
    # Creates cost ~5x an echo: fewer of them take as long.
    counts = {name: requests for name in ("grpc_echo", "grpc_get", "rest_echo", "rest_get")}
    counts |= {"grpc_create": max(1, requests // 4), "rest_create": max(1, requests // 4)}
    storage = "postgresql" if storage_url else "sqlite"
    results: dict[str, Any] = {"storage": storage, "requests": counts, "servers": {}}

    grpc_port, http_port, bare_port = free_ports(3)
    config = workdir / "nexus.toml"
    write_nexus_config(
        config,
        data_dir=workdir / "nexus",
        http_port=http_port,
        secret_file=credentials.secret_file,
        storage_url=storage_url,
    )
    grpc_address = f"127.0.0.1:{grpc_port}"
    # One server under valgrind at a time: stop_all() ends each phase.
    procs = Processes(workdir)
    nexus = CallgrindServer(
        procs,
        "nexus",
        [str(BIN / "nexus"), "serve", "--config", str(config), "--grpc-address", grpc_address],
        env,
        workdir,
    )
    try:
        wait_until("nexus gRPC", listening(grpc_port), nexus.check, START_TIMEOUT)
        wait_until("nexus REST", http_ready(http_port), nexus.check, START_TIMEOUT)
        order_id = rest_create(http_port, "nexus REST", auth)["id"]
        get = orders_pb2.GetOrderRequest(id=order_id).SerializeToString()
        grpc_cases = {
            "grpc_echo": (echo_path, echo),
            "grpc_get": (f"/{SERVICE}/GetOrder", get),
            "grpc_create": (f"/{SERVICE}/CreateOrder", create.SerializeToString()),
        }
        cases = {}
        for name, (path, payload) in grpc_cases.items():
            answer = grpc_succeeds(grpc_port, path, payload, auth)
            size = len(answer)
            if name == "grpc_create":
                # The one part of a created order whose size varies: its times' nanos.
                created = orders_pb2.Order.FromString(answer)
                created.create_time.nanos = created.update_time.nanos = 0
                size = created.ByteSize()
            cases[name] = grpc_load(grpc_port, path, payload, workdir, auth, size)
        echo_body = {k: v for k, v in ECHO.items() if k != "id"}
        cases["rest_echo"] = _rest_load(
            http_port, f"/v1/echo/{ECHO['id']}", echo_body, workdir, auth
        )
        cases["rest_get"] = _rest_load(http_port, f"/v1/orders/{order_id}", None, workdir, auth)
        cases["rest_create"] = _rest_load(http_port, "/v1/orders", ORDER, workdir, auth)
        results["servers"]["nexus"] = _report(*_measure(nexus, cases, counts))
    finally:
        procs.stop_all()

    python = [sys.executable, "-m", "benchmarks.bare_grpc"]
    echo_stubs = ["--echo-stubs", str(stubs)]
    bare = CallgrindServer(
        procs,
        "bare_grpc",
        [*python, "--port", str(bare_port), "--data-dir", str(workdir / "bare"), *echo_stubs],
        env,
        workdir,
    )
    try:
        wait_until("bare grpc.aio", listening(bare_port), bare.check, START_TIMEOUT)
        size = len(grpc_succeeds(bare_port, echo_path, echo, auth))
        cases = {"grpc_echo": grpc_load(bare_port, echo_path, echo, workdir, auth, size)}
        results["servers"]["bare_grpc"] = _report(*_measure(bare, cases, counts))
    finally:
        procs.stop_all()
    results["ratios"] = _ratios(results["servers"])
    return results


def _report(idle_rate: float, counted: list[Counted]) -> dict[str, Any]:
    return {
        "idle_instructions_per_second": idle_rate,
        "cases": {
            c.name: {
                **asdict(c),
                "raw_per_request": c.instructions / c.requests,
                "net_per_request": net_per_request(c, idle_rate),
            }
            for c in counted
        },
    }


def _ratios(servers: dict[str, Any]) -> dict[str, float]:
    def net(server: str, case: str) -> float:
        return float(servers[server]["cases"][case]["net_per_request"])

    ratios = {
        # Read like the load bench's ratios: the cheaper the numerator, the higher.
        "pipeline: bare grpc.aio / nexus gRPC echo": net("bare_grpc", "grpc_echo")
        / net("nexus", "grpc_echo"),
    }
    for transport in ("grpc", "rest"):
        echo = net("nexus", f"{transport}_echo")
        for operation in ("get", "create"):
            ratios[f"{transport} {operation} share: echo / {operation}"] = echo / net(
                "nexus", f"{transport}_{operation}"
            )
    return ratios


def render(results: dict[str, Any]) -> str:
    """The tables, for humans."""
    lines = [
        "instructions per request (callgrind, user space; net = idle work taken out); "
        f"nexus on {results['storage']}"
    ]
    lines.append(f"  {'server':10} {'case':12} {'requests':>8} {'raw':>10} {'net':>10} {'s':>6}")
    for server, found in results["servers"].items():
        for case in found["cases"].values():
            lines.append(
                f"  {server:10} {case['name']:12} {case['requests']:8d} "
                f"{case['raw_per_request'] / 1000:9.1f}k {case['net_per_request'] / 1000:9.1f}k "
                f"{case['seconds']:6.1f}"
            )
        lines.append(
            f"  {server:10} idle: {found['idle_instructions_per_second'] / 1e6:.2f}M instructions/s"
        )
    lines.append("ratios (instructions; goals in time: pipeline >= 0.9, get >= 0.6, create >= 0.4)")
    for name, value in results["ratios"].items():
        lines.append(f"  {name:45} {value:5.2f}")
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"instructions: {message}", file=sys.stderr)


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected at least {minimum}, got {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """Run the measurement, print the tables, write benchmarks/results/instructions.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=_at_least(4),
        default=600,
        help="requests per echo/get case (creates: a quarter)",
    )
    options = parser.parse_args(argv)
    tools = ("valgrind", "callgrind_control", "h2load")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        print(
            f"instructions: missing {', '.join(missing)} (apt install valgrind nghttp2-client)",
            file=sys.stderr,
        )
        return 1
    # SIGTERM and SIGHUP (scripts/bench passes Ctrl-C on as SIGTERM) end the run through
    # the finally blocks that stop the servers.
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminated_on_signals())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-instr-"))
        try:
            storage_url = ""
            if storage_setting() == "postgresql":
                storage_url = stack.enter_context(postgres_database(_say))
            results = run(options.requests, Path(tmp), storage_url)
        except BenchError as error:
            print(f"instructions: {error}", file=sys.stderr)
            return 1
    print(render(results))
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
