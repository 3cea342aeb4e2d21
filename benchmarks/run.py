"""Side-by-side throughput of nexus REST and gRPC against FastAPI and bare grpc.aio.

``scripts/bench`` runs this module after installing what it needs. It makes a fresh
HMAC secret (mode 0600, in the run's temporary folder), a nexus config using it, and an
admin access token (``*.*:all``) signed with it, then starts four servers, each its own
process on free 127.0.0.1 ports:

* ``nexus serve --config <that file>`` with only the orders plugin, gRPC and the REST
  gateway on, the full call pipeline (auth, policy, validation, metrics, rate limits set
  too high to throttle), access log off;
* ``benchmarks.fastapi_orders``: the same REST API written with FastAPI, verifying the
  same JWT with PyJWT on every request, served by uvicorn with the options the nexus
  HTTP server uses;
* ``benchmarks.bare_grpc --jwt-secret-file``: the orders servicer on a plain grpc.aio
  server, verifying the same JWT with PyJWT on every call;
* ``benchmarks.bare_grpc``: the orders servicer on a plain grpc.aio server, nothing else
  (no auth, no interceptors): the baseline of the pipeline's goal. It also answers the
  echo method (parse, return, serialize), against which nexus gRPC's echo through its
  full pipeline is compared (goal: >= 0.9x).

Every client sends ``authorization: Bearer <token>`` on every request to every target.
Each server gets one seeded order (read by the GET runs) and one checked call per
operation before any load; the targets that check tokens must refuse a call without one
and a call with a forged one. Then every case (target x operation) is warmed up once and
measured ``BENCH_ROUNDS`` times, the cases interleaved (all cases of round 1, then all
of round 2, ...) so drifts of this noisy machine spread over every target; the median
run is reported. REST is driven by wrk, gRPC by h2load, with identical client settings
within each compared pair. Results go to stdout and ``benchmarks/results/latest.json``.

Settings (environment): BENCH_SECONDS (6), BENCH_WARMUP (2), BENCH_ROUNDS (2),
BENCH_WRK_CONNECTIONS (32), BENCH_H2_CLIENTS (4), BENCH_H2_STREAMS (8): h2load keeps
clients x streams = 32 calls in flight, as many as wrk's 32 connections, BENCH_PIN (0;
1 pins every server to CPU 1 and the load tools to CPU 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RESULTS_FILE = BENCH_DIR / "results" / "latest.json"
BIN = Path(sys.executable).parent

NAMESPACE = "plugins/business/orders"
SERVICE = "nexus.orders.v1.OrdersService"
#: The transport's ceiling: the gateway tests' plugin, whose public Echo returns its
#: request (no storage), served by the same nexus process through the same pipeline.
ECHO_PLUGINS = REPO / "tests" / "gateway" / "plugins"
ECHO_PROTOS = REPO / "tests" / "gateway" / "proto"
ECHO_SERVICE = "transcode.v1.TranscodeService"
#: The echo request (REST: POST /v1/echo/{id} with the rest of it as the body).
ECHO: dict[str, Any] = {"id": "bench", "shelf": "s1", "name": "shelves/s1", "tags": ["a", "b"]}

#: The order every create sends, as the REST body (CreateOrderRequest.order in proto3 JSON).
ORDER: dict[str, Any] = {
    "customerId": "alice",
    "currencyCode": "EUR",
    "note": "bench",
    "items": [
        {"sku": "BOOK-1", "quantity": 2, "unitPriceCents": "1250"},
        {"sku": "PEN-7", "quantity": 10, "unitPriceCents": "199"},
    ],
}

TARGET_LABELS = {
    "nexus_rest": "nexus REST",
    "fastapi": "FastAPI+JWT",
    "nexus_grpc": "nexus gRPC",
    "bare_grpc_jwt": "grpc.aio+JWT",
    "bare_grpc": "bare grpc.aio",
}
#: Targets that must refuse calls without a valid token (bare_grpc ignores tokens).
CHECKS_TOKENS = ("nexus_rest", "fastapi", "nexus_grpc", "bare_grpc_jwt")
#: The subject and grants of the token every client sends: an admin, so the policy check
#: of orders.read / orders.create passes with scope "all" (no ownership lookup).
TOKEN_SUBJECT = "bench-admin"
TOKEN_GRANTS = ("*.*:all",)
#: Lifetime of the token: far beyond any run; the secret that signs it lives only in the
#: run's temporary folder, so the token is worthless once the run is over.
TOKEN_TTL = 24 * 3600
#: Rate and burst of the default rate-limit class: high enough never to throttle a run.
UNLIMITED_RATE = 1e9
OPERATION_LABELS = {
    ("rest", "get"): "GET /v1/orders/{id}",
    ("rest", "create"): "POST /v1/orders",
    ("grpc", "get"): "GetOrder",
    ("grpc", "create"): "CreateOrder",
    ("rest", "echo"): "POST /v1/echo/{id}",
    ("grpc", "echo"): "Echo",
}
#: Targets that also serve the echo method: nexus (the same process and pipeline as its
#: orders) and the bare grpc.aio server (the ceiling of nexus's gRPC pipeline).
ECHO_TARGETS = ("nexus_rest", "nexus_grpc", "bare_grpc")


class BenchError(RuntimeError):
    """Something the bench needs failed; the message says what."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What the run measures and how hard the clients push."""

    seconds: int = 6
    warmup: int = 2
    rounds: int = 2
    wrk_threads: int = 1
    wrk_connections: int = 32
    h2_threads: int = 1
    h2_clients: int = 4
    h2_streams: int = 8
    pin: bool = False
    #: nexus's database: "sqlite" (its default) or "postgresql" (a throwaway server).
    storage: str = "sqlite"

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from the BENCH_* variables."""

        def number(name: str, default: int, minimum: int = 1) -> int:
            text = os.environ.get(name, "").strip()
            if not text:
                return default
            try:
                value = int(float(text))
            except ValueError:
                raise BenchError(f"{name}={text!r}: expected a whole number") from None
            if value < minimum:
                raise BenchError(f"{name}={text!r}: expected at least {minimum}")
            return value

        return cls(
            seconds=number("BENCH_SECONDS", 6),
            warmup=number("BENCH_WARMUP", 2, minimum=0),
            rounds=number("BENCH_ROUNDS", 2),
            wrk_connections=number("BENCH_WRK_CONNECTIONS", 32),
            h2_clients=number("BENCH_H2_CLIENTS", 4),
            h2_streams=number("BENCH_H2_STREAMS", 8),
            pin=os.environ.get("BENCH_PIN", "0").strip().lower() in ("1", "true", "yes"),
            storage=storage_setting(),
        )

    def server_prefix(self) -> list[str]:
        """Command prefix of server processes (CPU pinning when asked)."""
        return ["taskset", "-c", "1"] if self.pin else []

    def client_prefix(self) -> list[str]:
        """Command prefix of load tools (CPU pinning when asked)."""
        return ["taskset", "-c", "0"] if self.pin else []


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process the bench starts, so all of them are stopped whatever happens.

    Pids also go to ``$BENCH_PIDFILE`` (one "pid marker" line each, the marker being a
    string of the process's command line) so ``scripts/bench`` can stop them should this
    process die without cleaning up, and only them should a pid have been reused.
    """

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._servers: dict[str, subprocess.Popen[bytes]] = {}
        self._pidfile = os.environ.get("BENCH_PIDFILE", "")

    def _record(self, pid: int, marker: str) -> None:
        if self._pidfile:
            with open(self._pidfile, "a", encoding="utf-8") as handle:
                handle.write(f"{pid} {marker}\n")

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start server ``name`` in its own session, output to ``<workdir>/<name>.log``."""
        with open(self._workdir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._servers[name] = process
        self._record(process.pid, " ".join(argv[-3:]))
        return process

    def pid(self, name: str) -> int:
        """Process id of server ``name``."""
        return self._servers[name].pid

    def check(self, name: str) -> None:
        """BenchError with the end of its log if server ``name`` has exited."""
        process = self._servers[name]
        if process.poll() is not None:
            raise BenchError(
                f"{name} exited with status {process.returncode}:\n{self.log_tail(name)}"
            )

    def log_tail(self, name: str, lines: int = 25) -> str:
        """The last lines the server printed."""
        path = self._workdir / f"{name}.log"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def run_tool(
        self, argv: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str, str, float]:
        """Run a load tool; return its status, stdout, stderr and the CPU seconds it used."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._record(process.pid, argv[-1])
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise BenchError(f"{' '.join(argv)} did not finish in {timeout:.0f}s") from None
        except BaseException:  # interrupted: the tool goes too
            process.kill()
            process.wait()
            raise
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return process.returncode, out, err, cpu

    def stop_all(self) -> list[str]:
        """SIGTERM every server, SIGKILL those still running 10 s later; say which were slow."""
        started = time.monotonic()
        for process in self._servers.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        slow = []
        for name, process in self._servers.items():
            try:
                process.wait(max(0.1, started + 10 - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(5)
                slow.append(f"{name} ignored SIGTERM for 10s and was killed")
            else:
                took = time.monotonic() - started
                if took > 3:
                    slow.append(f"{name} took {took:.1f}s to stop")
        return slow


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------- clients


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, authorization: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:``port``; status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        if authorization:
            headers["authorization"] = authorization
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def grpc_frame(payload: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, payload."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def grpc_raw_call(
    port: int, method: str, payload: bytes, authorization: str = "", service: str = SERVICE
) -> tuple[str, str, bytes]:
    """Call ``/<service>/<method>`` with serialized ``payload``; code, details, response."""
    import grpc

    metadata = (("authorization", authorization),) if authorization else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        # No (de)serializers: the payload goes out as given, the response comes back as bytes.
        call = channel.unary_unary(
            f"/{service}/{method}", request_serializer=None, response_deserializer=None
        )
        try:
            response, outcome = call.with_call(payload, timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            failed: Any = error  # a grpc.Call as well
            return failed.code().name, str(failed.details()), b""
        return outcome.code().name, "", bytes(response)


def wait_until(
    what: str, probe: Callable[[], bool], check: Callable[[], None], timeout: float
) -> None:
    """Call ``probe`` until it returns True; ``check`` raises when the server died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        check()
        try:
            if probe():
                return
        except Exception as error:  # connection refused and the like while starting
            last = error
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout:.0f}s (last error: {last})")


def http_ready(port: int) -> Callable[[], bool]:
    """Probe: the HTTP server answers (any status: the seed calls check the rest)."""

    def probe() -> bool:
        http_call(port, "GET", "/v1/orders/bench-ready-probe")
        return True

    return probe


def grpc_ready(port: int) -> Callable[[], bool]:
    """Probe: the gRPC server accepts an HTTP/2 connection (the seed calls check the rest)."""
    import grpc

    def probe() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=1)
        return True

    return probe


def storage_setting() -> str:
    """BENCH_STORAGE: the database behind nexus ("sqlite" or "postgresql")."""
    value = os.environ.get("BENCH_STORAGE", "sqlite").strip().lower() or "sqlite"
    if value not in ("sqlite", "postgresql"):
        raise BenchError(f"BENCH_STORAGE={value!r}: expected sqlite or postgresql")
    return value


def count_rows(database: Path | str) -> int:
    """Orders stored in ``database``: a nexus SQLite file (read without locking writers)
    or a PostgreSQL URL."""
    if isinstance(database, str):
        return asyncio.run(_count_postgres(database))
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM nexus_records WHERE namespace = ?", (NAMESPACE,)
        ).fetchone()
    return int(count)


async def _count_postgres(url: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM nexus_records WHERE namespace = $1", NAMESPACE
        )
    finally:
        await connection.close()
    return int(count)


# --------------------------------------------------------------------------- cases


@dataclass
class Sample:
    """One measured run."""

    rps: float = 0.0
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_us_per_req: float | None = None
    client_cpu_percent: float | None = None
    error: str | None = None
    round: int = 0


@dataclass
class Case:
    """One target and operation: how to load it and how to check its answers."""

    target: str
    operation: str  # "get", "create" or "echo"
    kind: str  # "rest" or "grpc"
    server: str  # name of the server process
    url: str
    database: Path | str
    #: Authorization header value the load tool sends with every request.
    authorization: str = ""
    body_file: Path | None = None
    #: gRPC: size of the smallest successful response frame (error responses carry none).
    min_frame: int = 0
    #: gRPC GetOrder: the exact size of every response frame.
    exact_frame: int | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Target and operation, for humans."""
        return f"{TARGET_LABELS[self.target]} {OPERATION_LABELS[(self.kind, self.operation)]}"


def run_wrk(case: Case, seconds: int, settings: Settings, procs: Processes) -> Sample:
    """Load a REST case with wrk for ``seconds``."""
    posts = case.operation in ("create", "echo")
    script = BENCH_DIR / ("post_order.lua" if posts else "wrk_report.lua")
    body = {k: v for k, v in ECHO.items() if k != "id"} if case.operation == "echo" else ORDER
    argv = [
        *settings.client_prefix(),
        "wrk",
        f"-t{settings.wrk_threads}",
        f"-c{settings.wrk_connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        case.url,
    ]
    # The Lua scripts read the header and the POST body from the environment.
    env = {
        **os.environ,
        "BENCH_AUTHORIZATION": case.authorization,
        "BENCH_POST_BODY": json.dumps(body, separators=(",", ":")),
    }
    code, out, err, client_cpu = procs.run_tool(argv, timeout=seconds + 30, env=env)
    match = re.search(r"^BENCH_WRK (\{.*\})$", out, re.MULTILINE)
    if code != 0 or match is None:
        return Sample(error=f"wrk failed ({code}): {(err or out).strip()[-300:]}")
    report = json.loads(match.group(1))
    sample = Sample(
        rps=report["requests"] / (report["duration_us"] / 1e6),
        requests=report["requests"],
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        client_cpu_percent=100 * client_cpu / (report["duration_us"] / 1e6),
    )
    problems = [
        f"{report[key]} {label}"
        for key, label in (
            ("status_errors", "non-2xx/3xx responses"),
            ("connect_errors", "connect errors"),
            ("read_errors", "read errors"),
            ("write_errors", "write errors"),
            ("timeouts", "timeouts"),
        )
        if report[key]
    ]
    if report["requests"] == 0:
        problems.append("no responses")
    if problems:
        sample.error = "ERRORS: " + ", ".join(problems)
    return sample


_H2_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2_DATA = re.compile(r"traffic: .*?, \S+ \((\d+)\) data")


def run_h2load(case: Case, seconds: int, settings: Settings, procs: Processes, log: Path) -> Sample:
    """Load a gRPC case with h2load for ``seconds``; latencies from its per-request log."""
    assert case.body_file is not None
    argv = [
        *settings.client_prefix(),
        "h2load",
        "-D",
        str(seconds),
        "-t",
        str(settings.h2_threads),
        "-c",
        str(settings.h2_clients),
        "-m",
        str(settings.h2_streams),
        "-d",
        str(case.body_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        *(["-H", f"authorization: {case.authorization}"] if case.authorization else []),
        f"--log-file={log}",
        case.url,
    ]
    code, out, err, client_cpu = procs.run_tool(argv, timeout=seconds + 30)
    finished = _H2_FINISHED.search(out)
    requests = _H2_REQUESTS.search(out)
    data = _H2_DATA.search(out)
    if code != 0 or finished is None or requests is None or data is None:
        return Sample(error=f"h2load failed ({code}): {(err or out).strip()[-300:]}")
    duration, rps = float(finished.group(1)), float(finished.group(2))
    _total, started, done, succeeded, failed, errored, timeouts = map(int, requests.groups())
    data_bytes = int(data.group(1))
    latencies = []
    statuses: dict[str, int] = {}
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            statuses[parts[1]] = statuses.get(parts[1], 0) + 1
            latencies.append(int(parts[2]))
    sample = Sample(
        rps=rps,
        requests=done,
        client_cpu_percent=100 * client_cpu / duration if duration else None,
    )
    if latencies:
        sample.p50_ms, sample.p99_ms = (q / 1000 for q in percentiles(latencies, (50, 99)))
    problems = []
    if done == 0:
        problems.append("no responses")
    if succeeded != done or failed or errored or timeouts:
        problems.append(
            f"{done - succeeded} not succeeded, {failed} failed, {errored} errored, "
            f"{timeouts} timed out"
        )
    if set(statuses) - {"200"}:
        problems.append(f"HTTP statuses {statuses}")
    # A gRPC error is an HTTP 200 whose status is in the trailers, with no DATA frame:
    # too few response bytes means some calls failed.
    expected = case.exact_frame or case.min_frame
    if expected and data_bytes < done * expected:
        missing = (done * expected - data_bytes) // expected
        problems.append(f"about {missing} of {done} responses carried no message (gRPC error)")
    if case.exact_frame and data_bytes > started * case.exact_frame:
        problems.append(f"unexpected response size ({data_bytes} bytes for {done} calls)")
    if problems:
        sample.error = "ERRORS: " + "; ".join(problems)
    return sample


def percentiles(values: list[int], points: tuple[float, ...]) -> list[float]:
    """Nearest-rank percentiles of ``values``."""
    ordered = sorted(values)
    return [
        ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] for p in points
    ]


def measure(
    case: Case, seconds: int, settings: Settings, procs: Processes, workdir: Path
) -> Sample:
    """One run of ``case`` with server CPU accounting and, for creates, a row count check."""
    procs.check(case.server)
    rows_before = count_rows(case.database) if case.operation == "create" else 0
    cpu_before = process_cpu_seconds(procs.pid(case.server))
    if case.kind == "rest":
        sample = run_wrk(case, seconds, settings, procs)
    else:
        log = workdir / f"h2load-{case.target}-{case.operation}.log"
        sample = run_h2load(case, seconds, settings, procs, log)
    cpu = process_cpu_seconds(procs.pid(case.server)) - cpu_before
    procs.check(case.server)
    if sample.requests:
        sample.server_cpu_us_per_req = cpu / sample.requests * 1e6
    if case.operation == "create" and sample.error is None:
        # Every successful create wrote a row (calls cut off at the end may add a few).
        written = count_rows(case.database) - rows_before
        if written < sample.requests:
            sample.error = f"ERRORS: {sample.requests} creates answered, {written} rows written"
    return sample


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Credentials:
    """The run's HMAC secret (a 0600 file in the temporary folder) and a token it signed."""

    secret_file: Path
    token: str
    #: The same claims signed with another secret: every token-checking target must refuse it.
    forged_token: str

    @property
    def authorization(self) -> str:
        """The Authorization header value every client sends."""
        return f"Bearer {self.token}"


def make_credentials(workdir: Path) -> Credentials:
    """A fresh 64-byte secret and an admin access token signed with it by nexus's issuer."""
    import jwt

    secret_file = workdir / "jwt-hs256.key"
    # O_EXCL + mode 0600: created private, never a file someone else prepared.
    handle = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(secrets.token_bytes(64))
    token = asyncio.run(_mint_token(secret_file, workdir))
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, secrets.token_bytes(64), algorithm="HS256")
    return Credentials(secret_file, token, forged)


async def _mint_token(secret_file: Path, workdir: Path) -> str:
    from nexus_grpc.auth import Grant, KeySet, Principal, TokenIssuer
    from nexus_grpc.config import AuthConfig

    # The host's defaults (HS256, issuer and audience "nexus") with the run's secret.
    config = AuthConfig(secret_file=str(secret_file), access_token_ttl=TOKEN_TTL)
    keys = await KeySet.load(config, workdir)
    principal = Principal(
        subject=TOKEN_SUBJECT, grants=frozenset(Grant.parse(grant) for grant in TOKEN_GRANTS)
    )
    token, _ = TokenIssuer(keys, config).issue_access(principal)
    return token


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


def write_nexus_config(
    path: Path, *, data_dir: Path, http_port: int, secret_file: Path, storage_url: str = ""
) -> None:
    """The ``nexus serve --config`` file of the run (``storage_url``: "" for SQLite)."""
    rate = repr(UNLIMITED_RATE)
    storage = f"[storage]\nurl = {toml_string(storage_url)}\n\n" if storage_url else ""
    path.write_text(
        "# nexus serve --config for the bench, written by benchmarks/run.py.\n"
        f"data_dir = {toml_string(str(data_dir))}\n\n"
        "[http]\n"
        f'address = "127.0.0.1:{http_port}"\n\n'
        "[auth]\n"
        "# The run's secret: the bench signs its token with it, the baselines verify with it.\n"
        f"secret_file = {toml_string(str(secret_file))}\n\n"
        "# Every client is one principal: the default 100/s would throttle the load at once.\n"
        "[limits.rate_classes.default]\n"
        f"rate = {rate}\n"
        f"burst = {rate}\n\n"
        f"{storage}"
        "[log]\n"
        "access = false\n"
        'level = "warning"\n'
        'format = "text"\n\n'
        "[plugins]\n"
        f"dirs = [{toml_string(str(REPO / 'plugins'))}, {toml_string(str(ECHO_PLUGINS))}]\n"
        'enabled = ["orders", "transcode"]\n'
        "entry_points = false\n"
    )


@dataclass
class Servers:
    """Ports and data folders of the four server processes."""

    nexus_grpc: int
    nexus_http: int
    fastapi_http: int
    bare_grpc_jwt: int
    bare_grpc: int
    nexus_data: Path
    #: Where nexus's orders are: its SQLite file, or a PostgreSQL URL.
    nexus_database: Path | str
    fastapi_data: Path
    bare_jwt_data: Path
    bare_data: Path


def start_servers(
    procs: Processes,
    workdir: Path,
    settings: Settings,
    credentials: Credentials,
    storage_url: str = "",
) -> Servers:
    """Start nexus (on ``storage_url``, else SQLite), the FastAPI app and both grpc.aio
    servers; wait until each answers."""
    nexus_grpc, nexus_http, fastapi_http, bare_grpc_jwt, bare_grpc = free_ports(5)
    servers = Servers(
        nexus_grpc,
        nexus_http,
        fastapi_http,
        bare_grpc_jwt,
        bare_grpc,
        workdir / "nexus",
        storage_url or workdir / "nexus" / "nexus.db",
        workdir / "fastapi",
        workdir / "bare-jwt",
        workdir / "bare",
    )
    # Everything nexus reads comes from the config file: no NEXUS_* variable of the
    # caller's environment may override it.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    config = workdir / "nexus.toml"
    write_nexus_config(
        config,
        data_dir=servers.nexus_data,
        http_port=nexus_http,
        secret_file=credentials.secret_file,
        storage_url=storage_url,
    )
    prefix = settings.server_prefix()
    nexus = [str(BIN / "nexus"), "serve", "--config", str(config)]
    nexus += ["--grpc-address", f"127.0.0.1:{nexus_grpc}"]
    # The echo plugin's contract compiled as its author's build would, importable by nexus.
    from nexus_grpc.codegen import generate

    stubs = workdir / "echo-stubs"
    generate(ECHO_PROTOS, stubs)
    inherited = [base_env["PYTHONPATH"]] if base_env.get("PYTHONPATH") else []
    nexus_env = {**base_env, "PYTHONPATH": os.pathsep.join([str(stubs), *inherited])}
    procs.start("nexus", [*prefix, *nexus], nexus_env)
    python = [*prefix, sys.executable, "-m"]
    secret = ["--jwt-secret-file", str(credentials.secret_file)]
    procs.start(
        "fastapi",
        [
            *python,
            "benchmarks.fastapi_orders",
            *secret,
            "--port",
            str(fastapi_http),
            "--data-dir",
            str(servers.fastapi_data),
        ],
        base_env,
    )
    procs.start(
        "bare_grpc_jwt",
        [
            *python,
            "benchmarks.bare_grpc",
            *secret,
            "--port",
            str(bare_grpc_jwt),
            "--data-dir",
            str(servers.bare_jwt_data),
        ],
        base_env,
    )
    procs.start(
        "bare_grpc",
        [
            *python,
            "benchmarks.bare_grpc",
            "--port",
            str(bare_grpc),
            "--data-dir",
            str(servers.bare_data),
            "--echo-stubs",
            str(stubs),
        ],
        base_env,
    )
    wait_until("nexus gRPC", grpc_ready(nexus_grpc), lambda: procs.check("nexus"), 60)
    wait_until("nexus REST", http_ready(nexus_http), lambda: procs.check("nexus"), 60)
    wait_until("FastAPI", http_ready(fastapi_http), lambda: procs.check("fastapi"), 60)
    wait_until("grpc.aio+JWT", grpc_ready(bare_grpc_jwt), lambda: procs.check("bare_grpc_jwt"), 60)
    wait_until("bare grpc.aio", grpc_ready(bare_grpc), lambda: procs.check("bare_grpc"), 60)
    return servers


def rest_create(port: int, who: str, authorization: str) -> dict[str, Any]:
    """POST the bench order; the created order as JSON."""
    order = json.dumps(ORDER).encode()
    status, _, body = http_call(port, "POST", "/v1/orders", order, authorization)
    if status != 200:
        raise BenchError(f"{who} POST /v1/orders answered {status}: {body[:300]!r}")
    created: dict[str, Any] = json.loads(body)
    return created


def rest_get(port: int, order_id: str, who: str, authorization: str) -> dict[str, Any]:
    """GET the order; it as JSON."""
    status, _, body = http_call(port, "GET", f"/v1/orders/{order_id}", None, authorization)
    if status != 200:
        raise BenchError(f"{who} GET /v1/orders/{order_id} answered {status}: {body[:300]!r}")
    found: dict[str, Any] = json.loads(body)
    if found.get("id") != order_id:
        raise BenchError(f"{who} GET returned another order: {found}")
    return found


def grpc_check(
    port: int, method: str, payload: bytes, who: str, authorization: str, service: str = SERVICE
) -> bytes:
    """One call with the exact payload h2load will send; its response, or BenchError."""
    code, details, response = grpc_raw_call(port, method, payload, authorization, service)
    if code != "OK":
        raise BenchError(f"{who} {method} answered {code}: {details}")
    return response


def check_refusals(
    servers: Servers, credentials: Credentials, order_ids: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Each token-checking target refuses a GET without a token and one with a forged token.

    What a target answered, per target and case; BenchError when one let a call through
    (its numbers would then not include the token work the comparison assumes).
    """
    from nexus.orders.v1 import orders_pb2

    found: dict[str, dict[str, str]] = {}
    tries = {"no token": "", "forged token": f"Bearer {credentials.forged_token}"}
    for target in CHECKS_TOKENS:
        answers = {}
        for what, authorization in tries.items():
            if target in ("nexus_rest", "fastapi"):
                port = servers.nexus_http if target == "nexus_rest" else servers.fastapi_http
                path = f"/v1/orders/{order_ids[target]}"
                status, _, _ = http_call(port, "GET", path, None, authorization)
                answer, refused = str(status), status == 401
            else:
                port = servers.nexus_grpc if target == "nexus_grpc" else servers.bare_grpc_jwt
                payload = orders_pb2.GetOrderRequest(id=order_ids[target]).SerializeToString()
                answer, _, _ = grpc_raw_call(port, "GetOrder", payload, authorization)
                refused = answer == "UNAUTHENTICATED"
            if not refused:
                raise BenchError(
                    f"{TARGET_LABELS[target]} answered {answer} to a GET with {what}: "
                    "it must refuse it (401 / UNAUTHENTICATED)"
                )
            answers[what] = answer
        found[target] = answers
    return found


def prepare_cases(
    servers: Servers, workdir: Path, credentials: Credentials
) -> tuple[list[Case], dict[str, Any]]:
    """Seed an order per server, check one call per case, build the cases in run order."""
    from google.protobuf import json_format
    from nexus.orders.v1 import orders_pb2

    checks: dict[str, Any] = {}
    create_request = orders_pb2.CreateOrderRequest()
    json_format.ParseDict(ORDER, create_request.order)
    create_payload = create_request.SerializeToString()
    create_file = workdir / "create_order.bin"
    create_file.write_bytes(grpc_frame(create_payload))

    # nexus: one order through REST, read back through REST and gRPC.
    auth = credentials.authorization
    nexus_id = rest_create(servers.nexus_http, "nexus REST", auth)["id"]
    nexus_json = rest_get(servers.nexus_http, nexus_id, "nexus REST", auth)
    # FastAPI: its own order, which must look like nexus's apart from ids and times.
    fastapi_id = rest_create(servers.fastapi_http, TARGET_LABELS["fastapi"], auth)["id"]
    fastapi_json = rest_get(servers.fastapi_http, fastapi_id, TARGET_LABELS["fastapi"], auth)
    volatile = ("id", "createTime", "updateTime")

    def comparable(value: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in value.items() if k not in volatile}

    same = comparable(nexus_json) == comparable(fastapi_json) and set(nexus_json) == set(
        fastapi_json
    )
    checks["rest_json_equivalent"] = same
    checks["nexus_rest_get_json"] = nexus_json
    checks["fastapi_get_json"] = fastapi_json
    if not same:
        print(
            f"warning: FastAPI's JSON differs from nexus's:\n  nexus:   {nexus_json}\n"
            f"  FastAPI: {fastapi_json}",
            file=sys.stderr,
        )
    # Both grpc.aio servers: their own order, created with the payload h2load sends.
    bare_ids = {}
    for target, port in (
        ("bare_grpc_jwt", servers.bare_grpc_jwt),
        ("bare_grpc", servers.bare_grpc),
    ):
        created_first = orders_pb2.Order.FromString(
            grpc_check(port, "CreateOrder", create_payload, TARGET_LABELS[target], auth)
        )
        bare_ids[target] = created_first.id

    cases: list[Case] = []
    grpc_targets = (
        ("nexus_grpc", "nexus", servers.nexus_grpc, nexus_id, servers.nexus_database),
        (
            "bare_grpc_jwt",
            "bare_grpc_jwt",
            servers.bare_grpc_jwt,
            bare_ids["bare_grpc_jwt"],
            servers.bare_jwt_data / "nexus.db",
        ),
        (
            "bare_grpc",
            "bare_grpc",
            servers.bare_grpc,
            bare_ids["bare_grpc"],
            servers.bare_data / "nexus.db",
        ),
    )
    grpc_cases: dict[tuple[str, str], Case] = {}
    for target, server, port, order_id, database in grpc_targets:
        get_payload = orders_pb2.GetOrderRequest(id=order_id).SerializeToString()
        get_file = workdir / f"get_order_{target}.bin"
        get_file.write_bytes(grpc_frame(get_payload))
        got = grpc_check(port, "GetOrder", get_payload, TARGET_LABELS[target], auth)
        if orders_pb2.Order.FromString(got).id != order_id:
            raise BenchError(f"{TARGET_LABELS[target]} GetOrder returned another order")
        created = orders_pb2.Order.FromString(
            grpc_check(port, "CreateOrder", create_payload, TARGET_LABELS[target], auth)
        )
        created.create_time.nanos = 0  # the only part of a create response whose size varies
        created.update_time.nanos = 0
        url = f"http://127.0.0.1:{port}/{SERVICE}/"
        grpc_cases[(target, "get")] = Case(
            target,
            "get",
            "grpc",
            server,
            url + "GetOrder",
            database,
            auth,
            get_file,
            min_frame=5 + len(got),
            exact_frame=5 + len(got),
        )
        grpc_cases[(target, "create")] = Case(
            target,
            "create",
            "grpc",
            server,
            url + "CreateOrder",
            database,
            auth,
            create_file,
            min_frame=5 + created.ByteSize(),
        )
        checks[f"{target}_get_response_bytes"] = len(got)
    checks["refused_without_valid_token"] = check_refusals(
        servers,
        credentials,
        {
            "nexus_rest": nexus_id,
            "fastapi": fastapi_id,
            "nexus_grpc": nexus_id,
            "bare_grpc_jwt": bare_ids["bare_grpc_jwt"],
        },
    )
    rest_cases = {
        ("nexus_rest", "get"): Case(
            "nexus_rest",
            "get",
            "rest",
            "nexus",
            f"http://127.0.0.1:{servers.nexus_http}/v1/orders/{nexus_id}",
            servers.nexus_database,
            auth,
        ),
        ("nexus_rest", "create"): Case(
            "nexus_rest",
            "create",
            "rest",
            "nexus",
            f"http://127.0.0.1:{servers.nexus_http}/v1/orders",
            servers.nexus_database,
            auth,
        ),
        ("fastapi", "get"): Case(
            "fastapi",
            "get",
            "rest",
            "fastapi",
            f"http://127.0.0.1:{servers.fastapi_http}/v1/orders/{fastapi_id}",
            servers.fastapi_data / "nexus.db",
            auth,
        ),
        ("fastapi", "create"): Case(
            "fastapi",
            "create",
            "rest",
            "fastapi",
            f"http://127.0.0.1:{servers.fastapi_http}/v1/orders",
            servers.fastapi_data / "nexus.db",
            auth,
        ),
    }
    every = {**rest_cases, **grpc_cases, **echo_cases(servers, workdir, auth, checks)}
    for operation in OPERATIONS:
        for target in targets_of(operation):
            cases.append(every[(target, operation)])
    return cases, checks


#: Every operation measured, in run order.
OPERATIONS = ("get", "create", "echo")


def targets_of(operation: str) -> tuple[str, ...]:
    """The targets that serve ``operation``."""
    return ECHO_TARGETS if operation == "echo" else tuple(TARGET_LABELS)


def echo_cases(
    servers: Servers, workdir: Path, auth: str, checks: dict[str, Any]
) -> dict[tuple[str, str], Case]:
    """nexus's echo method on both transports, each checked once."""
    # The body wrk sends: the request but its id, which the path carries.
    rest_body = json.dumps({k: v for k, v in ECHO.items() if k != "id"}).encode()
    status, _, body = http_call(
        servers.nexus_http, "POST", f"/v1/echo/{ECHO['id']}", rest_body, auth
    )
    if status != 200 or json.loads(body).get("shelf") != ECHO["shelf"]:
        raise BenchError(f"nexus REST echo answered {status}: {body[:200]!r}")
    sys.path.insert(0, str(workdir / "echo-stubs"))
    from transcode.v1 import transcode_pb2

    payload = transcode_pb2.EchoRequest(
        id=ECHO["id"], shelf=ECHO["shelf"], name=ECHO["name"], tags=ECHO["tags"]
    ).SerializeToString()
    answer = grpc_check(servers.nexus_grpc, "Echo", payload, "nexus gRPC", auth, ECHO_SERVICE)
    if answer != payload:
        raise BenchError("nexus gRPC Echo answered another message")
    checks["echo_response_bytes"] = len(answer)
    bare = grpc_check(servers.bare_grpc, "Echo", payload, "bare grpc.aio", auth, ECHO_SERVICE)
    if bare != payload:
        raise BenchError("bare grpc.aio Echo answered another message")
    body_file = workdir / "echo.bin"
    body_file.write_bytes(grpc_frame(payload))
    database = servers.nexus_database
    return {
        ("nexus_rest", "echo"): Case(
            "nexus_rest",
            "echo",
            "rest",
            "nexus",
            f"http://127.0.0.1:{servers.nexus_http}/v1/echo/{ECHO['id']}",
            database,
            auth,
        ),
        ("nexus_grpc", "echo"): Case(
            "nexus_grpc",
            "echo",
            "grpc",
            "nexus",
            f"http://127.0.0.1:{servers.nexus_grpc}/{ECHO_SERVICE}/Echo",
            database,
            auth,
            body_file,
            min_frame=5 + len(answer),
            exact_frame=5 + len(answer),
        ),
        ("bare_grpc", "echo"): Case(
            "bare_grpc",
            "echo",
            "grpc",
            "bare_grpc",
            f"http://127.0.0.1:{servers.bare_grpc}/{ECHO_SERVICE}/Echo",
            servers.bare_data / "nexus.db",
            auth,
            body_file,
            min_frame=5 + len(answer),
            exact_frame=5 + len(answer),
        ),
    }


# --------------------------------------------------------------------------- report


def median_or_none(values: list[float | None]) -> float | None:
    """Median of the values that are there."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(case: Case) -> dict[str, Any]:
    """The case's samples and medians; ``error`` when any run failed."""
    errors = [s.error for s in case.samples if s.error]
    good = [s for s in case.samples if not s.error]
    return {
        "target": case.target,
        "operation": case.operation,
        "label": case.label,
        "url": case.url,
        "error": "; ".join(dict.fromkeys(errors)) if errors else None,
        "rps": median_or_none([s.rps for s in good]) if not errors else None,
        "p50_ms": median_or_none([s.p50_ms for s in good]) if not errors else None,
        "p99_ms": median_or_none([s.p99_ms for s in good]) if not errors else None,
        "server_cpu_us_per_req": median_or_none([s.server_cpu_us_per_req for s in good])
        if not errors
        else None,
        "client_cpu_percent": median_or_none([s.client_cpu_percent for s in good])
        if not errors
        else None,
        "samples": [asdict(s) for s in case.samples],
    }


#: key, label, top, bottom, goal (None: for information).
RATIOS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("nexus_rest_vs_fastapi", "nexus REST / FastAPI+JWT", "nexus_rest", "fastapi", 1.0),
    # The pipeline's goal: the full pipeline against the same servicer with nothing around it.
    ("nexus_grpc_vs_bare_grpc", "nexus gRPC / bare grpc.aio", "nexus_grpc", "bare_grpc", 0.9),
    (
        "nexus_grpc_vs_bare_grpc_jwt",
        "nexus gRPC / grpc.aio+JWT",
        "nexus_grpc",
        "bare_grpc_jwt",
        None,
    ),
    ("nexus_rest_vs_nexus_grpc", "nexus REST / nexus gRPC", "nexus_rest", "nexus_grpc", None),
)


def ratios(summary: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Throughput ratios (and server CPU per request ratios) of the compared pairs."""
    found: dict[str, Any] = {}
    for key, label, top, bottom, goal in RATIOS:
        entry: dict[str, Any] = {"label": label, "goal": goal}
        for operation in ("get", "create"):
            a, b = summary[(top, operation)], summary[(bottom, operation)]
            rps = a["rps"] / b["rps"] if a["rps"] and b["rps"] else None
            cpu = (
                b["server_cpu_us_per_req"] / a["server_cpu_us_per_req"]
                if a["server_cpu_us_per_req"] and b["server_cpu_us_per_req"]
                else None
            )
            entry[operation] = {"rps_ratio": rps, "cpu_efficiency_ratio": cpu}
        found[key] = entry
    found["vs_echo"] = {
        target: {
            operation: (
                summary[(target, operation)]["rps"] / summary[(target, "echo")]["rps"]
                if summary[(target, operation)]["rps"] and summary[(target, "echo")]["rps"]
                else None
            )
            for operation in ECHO_GOALS
        }
        for target in ("nexus_rest", "nexus_grpc")
    }
    nexus_echo, bare_echo = summary[("nexus_grpc", "echo")], summary[("bare_grpc", "echo")]
    found["echo_vs_bare"] = {
        "rps_ratio": (
            nexus_echo["rps"] / bare_echo["rps"] if nexus_echo["rps"] and bare_echo["rps"] else None
        ),
        "goal": PIPELINE_GOAL,
    }
    return found


#: nexus gRPC's echo through the full pipeline against bare grpc.aio answering it (issue 13).
PIPELINE_GOAL = 0.9


#: The order calls' goals against echo on the same target (issue 13).
ECHO_GOALS = {"get": 0.6, "create": 0.4}


def fmt(value: float | None, spec: str) -> str:
    """A number, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def render(
    settings: Settings, summary: dict[tuple[str, str], dict[str, Any]], found: dict[str, Any]
) -> str:
    """The human-readable table."""
    lines = [
        "",
        f"nexus bench: {settings.rounds} interleaved round(s) of {settings.seconds}s per case "
        f"after a {settings.warmup}s warm-up; median run shown; "
        f"{os.cpu_count()} CPUs shared by clients and servers"
        + (" (servers pinned to CPU 1, clients to CPU 0)" if settings.pin else ""),
        f"  REST clients: wrk -t{settings.wrk_threads} -c{settings.wrk_connections} "
        "(identical for nexus REST and FastAPI)",
        f"  gRPC clients: h2load -t{settings.h2_threads} -c{settings.h2_clients} "
        f"-m{settings.h2_streams} (identical for every gRPC target; "
        f"{settings.h2_clients * settings.h2_streams} calls in flight)",
        "  nexus's creates write the order and its outbox event in one transaction; the"
        " baselines have no event bus: the grpc.aio ones write the order alone in a unit of",
        f"  work, FastAPI with one create (nexus on {settings.storage}, the baselines on sqlite)",
        f"  every request carries 'authorization: Bearer <JWT>' (HS256, "
        f"{', '.join(TOKEN_GRANTS)}, minted for this run):",
        "    nexus: full pipeline (token verified once, then cached; policy; validation; metrics;",
        "           rate limit set never to throttle; access log off)",
        "    FastAPI+JWT, grpc.aio+JWT: PyJWT jwt.decode on every request; "
        "bare grpc.aio: ignores it",
        "",
    ]
    header = (
        f"{'target':<14} {'operation':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU':>9} {'client':>7}  runs (req/s)"
    )
    lines += [header, f"{'':<14} {'':<20} {'':>8} {'':>8} {'':>8} {'us/req':>9} {'CPU %':>7}"]
    lines.append("-" * len(header))
    for operation in OPERATIONS:
        for target in targets_of(operation):
            row = summary[(target, operation)]
            kind = "grpc" if "grpc" in target else "rest"
            name = f"{TARGET_LABELS[target]:<14} {OPERATION_LABELS[(kind, operation)]:<20}"
            runs = ", ".join("err" if s["error"] else f"{s['rps']:.0f}" for s in row["samples"])
            if row["error"]:
                lines.append(f"{name} {row['error']}  [runs: {runs}]")
                continue
            lines.append(
                f"{name} {fmt(row['rps'], '8.0f')} {fmt(row['p50_ms'], '8.2f')} "
                f"{fmt(row['p99_ms'], '8.2f')} {fmt(row['server_cpu_us_per_req'], '9.0f')} "
                f"{fmt(row['client_cpu_percent'], '7.0f')}  {runs}"
            )
        lines.append("")
    lines.append("ratios (req/s; in brackets: server CPU per request, bottom / top)")
    for key, label, _top, _bottom, goal in RATIOS:
        entry = found[key]
        parts = []
        for operation in ("get", "create"):
            values = entry[operation]
            text = fmt(values["rps_ratio"], ".2f")
            if goal is not None and values["rps_ratio"] is not None:
                text += " ok" if values["rps_ratio"] >= goal else " BELOW GOAL"
            cpu = fmt(values["cpu_efficiency_ratio"], ".2f")
            parts.append(f"{operation:<6} {text:<13} [{cpu}]")
        suffix = f"   (goal >= {goal:.1f})" if goal is not None else "   (info)"
        lines.append(f"  {label:<27} " + "   ".join(parts) + suffix)
    lines.append("storage's share: req/s of an order call / req/s of echo (same process)")
    for target, entry in found["vs_echo"].items():
        parts = []
        for operation, goal in ECHO_GOALS.items():
            value = entry[operation]
            text = fmt(value, ".2f")
            if value is not None:
                text += " ok" if value >= goal else " BELOW GOAL"
            parts.append(f"{operation} / echo {text:<13} (goal >= {goal:.1f})")
        lines.append(f"  {TARGET_LABELS[target]:<14} " + "   ".join(parts))
    pipeline = found["echo_vs_bare"]["rps_ratio"]
    text = fmt(pipeline, ".2f")
    if pipeline is not None:
        text += " ok" if pipeline >= PIPELINE_GOAL else " BELOW GOAL"
    lines.append(
        f"pipeline: nexus gRPC Echo / bare grpc.aio Echo   {text}   (goal >= {PIPELINE_GOAL:.1f})"
    )
    lines.append("")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of what was measured and what measured it."""
    found = {"python": platform.python_version()}
    for name in (
        "grpcio",
        "protobuf",
        "fastapi",
        "pydantic",
        "starlette",
        "uvicorn",
        "httptools",
        "orjson",
        "sqlalchemy",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    with contextlib.suppress(Exception):
        from google.protobuf.internal import api_implementation

        found["protobuf_backend"] = api_implementation.Type()
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        with contextlib.suppress(OSError):
            result = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            found[tool] = (result.stdout or result.stderr).strip().splitlines()[0]
    with contextlib.suppress(OSError):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        found["nexus_commit"] = commit
    return found


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def terminated_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so ``finally`` blocks stop the servers."""

    def stop(number: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + number)

    previous = {n: signal.signal(n, stop) for n in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def check_tools(settings: Settings) -> None:
    """BenchError naming the load tools that are missing."""
    needed = ["wrk", "h2load"] + (["taskset"] if settings.pin else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: run scripts/bench (it installs wrk and "
            "nghttp2-client), or apt-get install them"
        )


def measure_all(
    settings: Settings, procs: Processes, workdir: Path, say: Callable[[str], None]
) -> tuple[list[Case], dict[str, Any]]:
    """Start and seed the servers, warm every case up, run the interleaved rounds."""
    credentials = make_credentials(workdir)
    say(f"minted an admin token ({', '.join(TOKEN_GRANTS)}) with a fresh HMAC secret")
    say(f"starting servers (logs and data in {workdir})")
    with contextlib.ExitStack() as stack:
        storage_url = ""
        if settings.storage == "postgresql":
            storage_url = stack.enter_context(postgres_database(say))
        return _measure_all(settings, procs, workdir, say, credentials, storage_url)


@contextlib.contextmanager
def postgres_database(say: Callable[[str], None]) -> Iterator[str]:
    """A database on a throwaway PostgreSQL server (free loopback port); its URL."""
    from benchmarks.storage import postgres_server

    with postgres_server() as server:
        if server is None:
            raise BenchError("BENCH_STORAGE=postgresql: no PostgreSQL server binaries found")
        name = server.create_database()
        say(f"nexus stores in PostgreSQL on 127.0.0.1:{server.port}")
        yield server.url(name)


def _measure_all(
    settings: Settings,
    procs: Processes,
    workdir: Path,
    say: Callable[[str], None],
    credentials: Credentials,
    storage_url: str,
) -> tuple[list[Case], dict[str, Any]]:
    servers = start_servers(procs, workdir, settings, credentials, storage_url)
    cases, checks = prepare_cases(servers, workdir, credentials)
    say(
        "seeded one order per server; one checked call per case succeeded; "
        "calls without a token or with a forged one were refused"
    )
    if settings.warmup:
        for case in cases:
            sample = measure(case, settings.warmup, settings, procs, workdir)
            say(f"warm-up {case.label}: {sample.error or f'{sample.rps:.0f} req/s'}")
    done, total = 0, settings.rounds * len(cases)
    for round_number in range(1, settings.rounds + 1):
        for case in cases:
            sample = measure(case, settings.seconds, settings, procs, workdir)
            sample.round = round_number
            case.samples.append(sample)
            done += 1
            say(
                f"[{done}/{total}] round {round_number} {case.label}: "
                f"{sample.error or f'{sample.rps:.0f} req/s'}"
            )
    return cases, checks


def run(settings: Settings) -> int:
    """The whole bench; returns the exit status (1 when any case failed)."""
    check_tools(settings)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    procs = Processes(workdir)

    def say(text: str) -> None:
        print(f"bench [{time.monotonic() - started:5.1f}s] {text}", file=sys.stderr, flush=True)

    try:
        try:
            cases, checks = measure_all(settings, procs, workdir, say)
        finally:
            slow = procs.stop_all()
            say("servers stopped" + (f" ({'; '.join(slow)})" if slow else ""))
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        for name in ("nexus", "fastapi", "bare_grpc_jwt", "bare_grpc"):
            print(f"bench: end of the {name} log:\n{procs.log_tail(name, 10)}", file=sys.stderr)
        print(f"bench: logs and data kept in {workdir}", file=sys.stderr)
        return 1
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    summary = {(c.target, c.operation): summarize(c) for c in cases}
    found = ratios(summary)
    print(render(settings, summary, found), flush=True)
    result = {
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "settings": asdict(settings),
        "auth": {
            "algorithm": "HS256",
            "token_subject": TOKEN_SUBJECT,
            "token_grants": list(TOKEN_GRANTS),
            "nexus_rate_limit_default": {"rate": UNLIMITED_RATE, "burst": UNLIMITED_RATE},
            "verified_by": {
                "nexus_rest": "nexus pipeline (TokenVerifier, cached per token)",
                "nexus_grpc": "nexus pipeline (TokenVerifier, cached per token)",
                "fastapi": "PyJWT jwt.decode per request (HTTPBearer + dependency)",
                "bare_grpc_jwt": "PyJWT jwt.decode per call (servicer wrapper)",
                "bare_grpc": "nothing (no auth, no interceptors)",
            },
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "checks": checks,
        "order": ORDER,
        "results": list(summary.values()),
        "ratios": found,
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {RESULTS_FILE.relative_to(REPO)}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(row["error"] for row in summary.values()) else 0


def main() -> int:
    """Entry point: ``python -m benchmarks.run``."""
    try:
        settings = Settings.from_env()
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    with terminated_on_signals():
        return run(settings)


if __name__ == "__main__":
    sys.exit(main())
