"""Event delivery through nexus's RedisBus against a bare redis-py loop doing the same work.

``scripts/bench`` runs this after the load runs and the pipeline cost; it also runs
alone (``python benchmarks/events.py`` or ``python -m benchmarks.events``). It starts
one throwaway ``redis-server`` on a free 127.0.0.1 port (no persistence: ``--save ""
--appendonly no``; stopped at the end), and measures two targets in one process:

* **nexus RedisBus**: ``RedisBus(url)`` with its defaults, one consumer group with one
  async handler on ``nexus.orders.v1.OrderCreated``, ``await bus.start()``, then
  ``await bus.publish(envelope)`` for every event. The bus reads with XREADGROUP,
  opens the envelope, runs the handler and acknowledges once it returned.
* **bare redis-py**: ``redis.asyncio.Redis.from_url(url)`` (its default pool), the same
  work by hand: XADD of ``envelope.SerializeToString()`` (trimmed like the bus:
  ``MAXLEN ~`` the bus's default maxlen), one consumer task doing XREADGROUP with the
  bus's default ``batch`` and ``block`` (read from ``RedisBus.__init__``), parsing the
  Envelope, ``open_envelope`` (unpacking the payload), the same handler, then one XACK
  per entry.

Every event is an ``OrderCreated`` (a two-item order) sealed with nexus's ``seal`` before
the run starts (sealing is not measured). The publisher stamps ``time.perf_counter_ns()``
in a dict keyed by the envelope id just before publishing; the handler stamps the time it
is called and checks it got an ``OrderCreated``. Two modes:

* **saturation** (throughput): N events published by ``--in-flight`` concurrent
  publisher tasks (64 by default), consumed as fast as the one consumer can. events/s =
  N / (first publish -> last handled). The publishers outrun the consumer, so the
  latencies of this mode are mostly the time spent queued in the stream.
* **steady** (latency): ``--rate`` events/s (500) for ``--steady-seconds``, published one
  at a time on a fixed schedule, well below what either target can do: publish-to-handle
  latency with no queue.

After every run: every published event was handled exactly once, and the group has
nothing pending (XPENDING: every entry was acknowledged) and no lag (XINFO GROUPS);
otherwise the run is an error. Each run uses a fresh client or bus and a fresh stream
(the database is flushed between runs). Both targets are warmed up once, then the runs
are interleaved (bare, nexus, bare, nexus, ...) for ``--rounds`` rounds; medians are
shown, with every run's value. The CPU columns are the CPU time this process (publishers
and consumer together) and redis-server used during the run, per event.

Settings (options, or the environment): ``--events`` / BENCH_EVENTS_N (10000),
``--rounds`` / BENCH_EVENTS_ROUNDS (3), ``--in-flight`` / BENCH_EVENTS_IN_FLIGHT (64),
``--rate`` / BENCH_EVENTS_RATE (500), ``--steady-seconds`` / BENCH_EVENTS_STEADY_SECONDS
(2). Results also go to ``benchmarks/results/events.json``. Exits 1 when a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import inspect
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from google.protobuf.message import Message
from nexus.orders.v1 import events_pb2, orders_pb2

from nexus_grpc.events.bus import Delivery
from nexus_grpc.events.envelope import Envelope, open_envelope, seal
from nexus_grpc.events.redis_bus import BusUnavailableError, RedisBus

REPO = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO / "benchmarks" / "results" / "events.json"

#: The bus's defaults, which the bare loop copies: entries per read, longest blocking
#: read (seconds) and the approximate stream length publishing trims to.
_BUS_DEFAULTS = inspect.signature(RedisBus.__init__).parameters
BATCH: int = _BUS_DEFAULTS["batch"].default
BLOCK: float = _BUS_DEFAULTS["block"].default
MAXLEN: int = _BUS_DEFAULTS["maxlen"].default

EVENT_TYPE = events_pb2.OrderCreated.DESCRIPTOR.full_name
#: The bus's stream of that type with its default prefix; the bare loop uses the same key.
STREAM = f"nexus:events:{EVENT_TYPE}"
GROUP = "bench"
SOURCE = "orders"

TARGETS = {"bare": "bare redis-py", "nexus": "nexus RedisBus"}
#: Events of each target's warm-up run (saturation mode, not reported).
WARMUP_EVENTS = 2000
#: Longest wait for the consumer to catch up after the last publish, and for the acks.
DRAIN_TIMEOUT = 30.0
ACK_TIMEOUT = 5.0
#: Longest a whole run may take (publishing included): a hang becomes the run's error.
RUN_TIMEOUT = 120.0


class BenchError(RuntimeError):
    """Something the bench needs failed; the message says what."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How much each run publishes and how."""

    events: int = 10_000
    rounds: int = 3
    in_flight: int = 64
    rate: int = 500
    steady_seconds: float = 2.0

    @property
    def steady_events(self) -> int:
        """Events of one steady run."""
        return max(1, round(self.rate * self.steady_seconds))


def env_number(name: str, default: float) -> float:
    """``$name`` as a number, or ``default`` when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"{name}={text!r}: expected a number") from None


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line, defaulting to the BENCH_EVENTS_* variables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])

    def positive_int(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text}: expected at least 1")
        return value

    def positive_float(text: str) -> float:
        value = float(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: expected more than 0")
        return value

    defaults = Settings()
    parser.add_argument(
        "--events",
        type=positive_int,
        default=int(env_number("BENCH_EVENTS_N", defaults.events)),
        help="events per saturation run",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=int(env_number("BENCH_EVENTS_ROUNDS", defaults.rounds)),
        help="interleaved rounds of every target and mode",
    )
    parser.add_argument(
        "--in-flight",
        type=positive_int,
        default=int(env_number("BENCH_EVENTS_IN_FLIGHT", defaults.in_flight)),
        help="concurrent publishers in saturation runs",
    )
    parser.add_argument(
        "--rate",
        type=positive_int,
        default=int(env_number("BENCH_EVENTS_RATE", defaults.rate)),
        help="events per second of steady runs",
    )
    parser.add_argument(
        "--steady-seconds",
        type=positive_float,
        default=env_number("BENCH_EVENTS_STEADY_SECONDS", defaults.steady_seconds),
        help="length of a steady run",
    )
    args = parser.parse_args(argv)
    for name in ("events", "rounds", "in_flight", "rate", "steady_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"{name} must be positive")
    return Settings(
        events=args.events,
        rounds=args.rounds,
        in_flight=args.in_flight,
        rate=args.rate,
        steady_seconds=args.steady_seconds,
    )


# --------------------------------------------------------------------------- redis-server


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RedisServer:
    """A running throwaway redis-server."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu_seconds(self) -> float:
        """CPU seconds the server used so far."""
        return process_cpu_seconds(self.pid)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Run ``redis-server`` on a free loopback port, without persistence, in a temporary
    folder; stop it and remove the folder on the way out.

    Its pid goes to ``$BENCH_PIDFILE`` (as in ``benchmarks.run``) so ``scripts/bench``
    stops it should this process die without cleaning up.
    """
    binary = shutil.which(os.environ.get("REDIS_SERVER") or "redis-server")
    if binary is None:
        raise BenchError("no redis-server on PATH: run scripts/bench, or apt-get install it")
    base = Path(tempfile.mkdtemp(prefix="nexus-bench-redis-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(3):  # another process may take the port in between
            port = free_port()
            command = [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(base),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(base / "redis.log"),
            ]  # fmt: skip
            process = subprocess.Popen(
                command, cwd=base, stdin=subprocess.DEVNULL, start_new_session=True
            )
            pidfile = os.environ.get("BENCH_PIDFILE", "")
            if pidfile:
                # redis-server renames itself "redis-server 127.0.0.1:<port>".
                with open(pidfile, "a", encoding="utf-8") as handle:
                    handle.write(f"{process.pid} redis-server 127.0.0.1:{port}\n")
            if _wait_ready(port, process):
                break
            _stop_process(process)
            process = None
        if process is None:
            log = base / "redis.log"
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            raise BenchError(f"could not start redis-server:\n{text[-2000:]}")
        yield RedisServer(port, process.pid)
    finally:
        if process is not None:
            _stop_process(process)
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    return True
            time.sleep(0.02)
        return False
    finally:
        client.close()


# --------------------------------------------------------------------------- targets

#: What both targets call for every event: the unpacked message and its envelope.
EventHandler = Callable[[Message, Envelope], Awaitable[None]]


class Target(Protocol):
    """One way of publishing and consuming events, measured the same way as the other."""

    async def open(self, handler: EventHandler) -> None:
        """Connect, make the consumer group and start consuming into ``handler``."""
        ...

    async def publish(self, envelope: Envelope) -> None:
        """Publish one event."""
        ...

    async def close(self) -> None:
        """Stop consuming and disconnect."""
        ...


class NexusTarget:
    """nexus's RedisBus with its defaults: one group, one handler."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._bus: RedisBus | None = None

    async def open(self, handler: EventHandler) -> None:
        """Subscribe, start the bus and wait until its worker made the group."""

        async def on_event(event: Message, delivery: Delivery) -> None:
            await handler(event, delivery.envelope)

        bus = self._bus = RedisBus(self._url)
        bus.subscribe(GROUP, EVENT_TYPE, on_event)
        await bus.start()
        # The worker creates the group (at "$") on its first step: events published
        # before that would never reach the group.
        await wait_for_group(bus.client)

    async def publish(self, envelope: Envelope) -> None:
        """``bus.publish``."""
        assert self._bus is not None
        await self._bus.publish(envelope)

    async def close(self) -> None:
        """``bus.stop``: nothing is running any more, so no grace is needed."""
        if self._bus is not None:
            await self._bus.stop(grace=1.0)
            self._bus = None


class BareTarget:
    """The same work with redis.asyncio by hand: XADD; XREADGROUP, parse, handle, XACK."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: aioredis.Redis | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._stopping = False

    async def open(self, handler: EventHandler) -> None:
        """Create the group at "$" and start the consumer task."""
        client = self._client = aioredis.Redis.from_url(self._url)
        await client.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
        self._consumer = asyncio.create_task(self._consume(client, handler))

    async def publish(self, envelope: Envelope) -> None:
        """XADD the serialized envelope, trimmed as the bus trims."""
        assert self._client is not None
        await self._client.xadd(
            STREAM, {"envelope": envelope.SerializeToString()}, maxlen=MAXLEN, approximate=True
        )

    async def _consume(self, client: aioredis.Redis, handler: EventHandler) -> None:
        block_ms = int(BLOCK * 1000)
        while not self._stopping:
            reply: Any = await client.xreadgroup(
                GROUP, "bare-consumer", {STREAM: ">"}, count=BATCH, block=block_ms
            )
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    envelope = Envelope.FromString(fields[b"envelope"])
                    await handler(open_envelope(envelope), envelope)
                    await client.xack(stream, GROUP, entry_id)

    async def close(self) -> None:
        """Stop the consumer (it is blocked in XREADGROUP by now) and disconnect."""
        if self._consumer is not None:
            self._stopping = True
            # A cancellation that arrives just as one of redis-py's inner timeouts ends can
            # be lost on Python 3.11: cancel again until the task ends (the flag ends the
            # loop after one ``block`` at the latest).
            while not self._consumer.done():
                self._consumer.cancel()
                await asyncio.wait([self._consumer], timeout=0.1)
            consumer, self._consumer = self._consumer, None
            failure = None if consumer.cancelled() else consumer.exception()
            if failure is not None:
                raise BenchError(f"the bare consumer failed: {failure!r}")
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def make_target(name: str, url: str) -> Target:
    """The target called ``name`` (a key of TARGETS)."""
    return NexusTarget(url) if name == "nexus" else BareTarget(url)


async def wait_for_group(client: aioredis.Redis) -> None:
    """Wait (up to 5 s) until consumer group GROUP exists on STREAM."""
    try:
        async with asyncio.timeout(5.0):
            while True:
                with contextlib.suppress(redis.ResponseError):  # no such stream yet
                    groups: list[dict[str, Any]] = await client.xinfo_groups(STREAM)
                    if any(_text(info["name"]) == GROUP for info in groups):
                        return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise BenchError(f"the consumer group {GROUP} did not appear on {STREAM} in 5s") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- one run


def make_envelopes(count: int, tag: str) -> list[Envelope]:
    """``count`` sealed OrderCreated events, as the orders plugin publishes them."""
    envelopes = []
    for number in range(count):
        order = orders_pb2.Order(
            id=f"{tag}-{number:06d}",
            customer_id="alice",
            currency_code="EUR",
            note="bench",
            status=orders_pb2.ORDER_STATUS_PENDING,
            total_cents=2 * 1250 + 10 * 199,
            items=[
                orders_pb2.LineItem(sku="BOOK-1", quantity=2, unit_price_cents=1250),
                orders_pb2.LineItem(sku="PEN-7", quantity=10, unit_price_cents=199),
            ],
        )
        envelopes.append(
            seal(
                events_pb2.OrderCreated(order=order),
                source=SOURCE,
                subject=order.id,
                correlation_id=f"bench-{tag}-{number}",
            )
        )
    return envelopes


@dataclass
class Recorder:
    """Publish and handle times of one run, keyed by envelope id."""

    expected: int
    published: dict[str, int] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    handled: set[str] = field(default_factory=set)
    duplicates: int = 0
    unexpected: int = 0
    last_handled_ns: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, event: Message, envelope: Envelope) -> None:
        """The consumer's handler: stamp the time, check what arrived."""
        now = time.perf_counter_ns()
        sent = self.published.get(envelope.id)
        if sent is None or not isinstance(event, events_pb2.OrderCreated):
            self.unexpected += 1
            return
        if envelope.id in self.handled:
            self.duplicates += 1
            return
        self.handled.add(envelope.id)
        self.latencies_ns.append(now - sent)
        self.last_handled_ns = now
        if len(self.handled) == self.expected:
            self.done.set()


@dataclass
class Sample:
    """One measured run."""

    target: str
    mode: str
    round: int = 0
    events: int = 0
    seconds: float | None = None
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_event: float | None = None
    redis_cpu_us_per_event: float | None = None
    error: str | None = None


def percentiles(values: list[int], points: tuple[float, ...]) -> list[float]:
    """Nearest-rank percentiles of ``values`` (as in ``benchmarks.run``)."""
    ordered = sorted(values)
    return [
        ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] for p in points
    ]


async def publish_concurrently(
    target: Target, envelopes: list[Envelope], in_flight: int, recorder: Recorder
) -> None:
    """Publish every envelope with ``in_flight`` publisher tasks sharing one queue."""
    pending = iter(envelopes)

    async def publisher() -> None:
        for envelope in pending:
            recorder.published[envelope.id] = time.perf_counter_ns()
            await target.publish(envelope)

    try:
        async with asyncio.TaskGroup() as group:  # one failing cancels the others
            for _ in range(min(in_flight, len(envelopes))):
                group.create_task(publisher())
    except ExceptionGroup as failures:  # the run reports the first failure
        raise failures.exceptions[0] from failures


async def publish_paced(
    target: Target, envelopes: list[Envelope], rate: float, recorder: Recorder
) -> None:
    """Publish one at a time, event ``i`` at ``i / rate`` seconds (at once when late)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for number, envelope in enumerate(envelopes):
        delay = start + number / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        recorder.published[envelope.id] = time.perf_counter_ns()
        await target.publish(envelope)


async def check_acknowledged(client: aioredis.Redis) -> str | None:
    """None once the group has nothing pending and no lag; else what is left."""
    deadline = time.monotonic() + ACK_TIMEOUT
    while True:
        summary: Any = await client.xpending(STREAM, GROUP)
        groups: list[dict[str, Any]] = await client.xinfo_groups(STREAM)
        info = next(g for g in groups if _text(g["name"]) == GROUP)
        pending, lag = int(summary["pending"]), info.get("lag")
        if pending == 0 and lag == 0:
            return None
        if time.monotonic() > deadline:
            return f"{pending} entries still pending (not acknowledged), lag {lag}"
        await asyncio.sleep(0.01)


async def run_once(
    name: str, mode: str, server: RedisServer, settings: Settings, tag: str
) -> Sample:
    """One run of target ``name`` in ``mode`` ("saturation", "steady" or "warmup")."""
    count = settings.steady_events if mode == "steady" else settings.events
    if mode == "warmup":
        count = min(WARMUP_EVENTS, settings.events)
    envelopes = make_envelopes(count, tag)
    recorder = Recorder(expected=count)
    sample = Sample(target=name, mode=mode, events=count)
    admin = aioredis.Redis.from_url(server.url, socket_timeout=10)
    target = make_target(name, server.url)
    try:
        await admin.flushdb()
        await target.open(recorder.handle)
        cpu_before, redis_before = time.process_time(), server.cpu_seconds()
        started = time.perf_counter_ns()
        if mode == "steady":
            await publish_paced(target, envelopes, settings.rate, recorder)
        else:
            await publish_concurrently(target, envelopes, settings.in_flight, recorder)
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await recorder.done.wait()
        except TimeoutError:
            sample.error = f"only {len(recorder.handled)} of {count} handled"
        cpu = time.process_time() - cpu_before
        redis_cpu = server.cpu_seconds() - redis_before
        problems = [sample.error] if sample.error else []
        if recorder.duplicates or recorder.unexpected:
            problems.append(
                f"{recorder.duplicates} duplicates, {recorder.unexpected} unexpected events"
            )
        left = await check_acknowledged(admin)
        if left:
            problems.append(left)
        sample.error = "; ".join(problems) or None
        if recorder.latencies_ns:
            sample.seconds = (recorder.last_handled_ns - started) / 1e9
            sample.rate = len(recorder.handled) / sample.seconds
            sample.p50_ms, sample.p99_ms = (
                value / 1e6 for value in percentiles(recorder.latencies_ns, (50, 99))
            )
            sample.cpu_us_per_event = cpu / len(recorder.handled) * 1e6
            sample.redis_cpu_us_per_event = redis_cpu / len(recorder.handled) * 1e6
    except (redis.RedisError, OSError, BusUnavailableError, BenchError) as error:
        sample.error = f"{type(error).__name__}: {error}"
    finally:
        await target.close()
        await admin.aclose()
    return sample


async def run_guarded(
    name: str, mode: str, server: RedisServer, settings: Settings, tag: str
) -> Sample:
    """:func:`run_once`, an error sample instead when it takes longer than RUN_TIMEOUT."""
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            return await run_once(name, mode, server, settings, tag)
    except TimeoutError:
        return Sample(target=name, mode=mode, error=f"did not finish in {RUN_TIMEOUT:.0f}s")
    except BenchError as error:  # from closing the target
        return Sample(target=name, mode=mode, error=str(error))


# --------------------------------------------------------------------------- the bench


async def measure_all(
    server: RedisServer, settings: Settings, say: Callable[[str], None]
) -> list[Sample]:
    """Warm both targets up, then the interleaved rounds of both modes."""
    for name in TARGETS:
        warm = await run_guarded(name, "warmup", server, settings, f"w{name}")
        say(f"warm-up {TARGETS[name]}: {warm.error or f'{warm.rate:.0f} events/s'}")
    samples: list[Sample] = []
    plan = [(mode, name) for mode in ("saturation", "steady") for name in TARGETS]
    total = settings.rounds * len(plan)
    for round_number in range(1, settings.rounds + 1):
        for mode, name in plan:
            sample = await run_guarded(name, mode, server, settings, f"r{round_number}{name}{mode}")
            sample.round = round_number
            samples.append(sample)
            result = sample.error or (
                f"{sample.rate:.0f} events/s, p50 {sample.p50_ms:.2f} ms, "
                f"p99 {sample.p99_ms:.2f} ms"
            )
            say(f"[{len(samples)}/{total}] round {round_number} {TARGETS[name]} {mode}: {result}")
    return samples


def median_or_none(values: list[float | None]) -> float | None:
    """Median of the values present."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(samples: list[Sample]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per target and mode: the medians (None when a run failed) and every run."""
    summary = {}
    for mode in ("saturation", "steady"):
        for name in TARGETS:
            runs = [s for s in samples if s.target == name and s.mode == mode]
            errors = [s.error for s in runs if s.error]
            row: dict[str, Any] = {
                "target": name,
                "mode": mode,
                "error": "; ".join(errors) or None,
                "samples": [asdict(s) for s in runs],
            }
            for key in ("rate", "p50_ms", "p99_ms", "cpu_us_per_event", "redis_cpu_us_per_event"):
                row[key] = None if errors else median_or_none([getattr(s, key) for s in runs])
            summary[(name, mode)] = row
    return summary


def ratios(summary: dict[tuple[str, str], dict[str, Any]]) -> dict[str, float | None]:
    """nexus / bare of the medians: throughput, latencies, CPU per event."""
    found: dict[str, float | None] = {}
    for mode in ("saturation", "steady"):
        nexus, bare = summary[("nexus", mode)], summary[("bare", mode)]
        for key in ("rate", "p50_ms", "p99_ms", "cpu_us_per_event", "redis_cpu_us_per_event"):
            top, bottom = nexus[key], bare[key]
            found[f"{mode}_{key}"] = top / bottom if top and bottom else None
    return found


def fmt(value: float | None, spec: str) -> str:
    """A number, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def render(
    settings: Settings,
    summary: dict[tuple[str, str], dict[str, Any]],
    found: dict[str, float | None],
) -> str:
    """The human-readable table."""
    modes = {
        "saturation": f"saturation {settings.in_flight} in flight",
        "steady": f"steady {settings.rate}/s",
    }
    lines = [
        "",
        f"nexus events bench: {settings.rounds} interleaved round(s) per target and mode after "
        f"a warm-up; median run shown; one redis-server {redis_version()} on loopback; "
        f"{os.cpu_count()} CPUs shared by this process and redis-server",
        f"  every event: OrderCreated sealed in an Envelope; one consumer group, one async "
        f"handler; XREADGROUP count={BATCH} block={BLOCK * 1000:.0f}ms (RedisBus defaults)",
        "  nexus RedisBus: bus.publish -> bus worker (read, open_envelope, handler, ack script)",
        "  bare redis-py: XADD -> one task: XREADGROUP, Envelope parse, open_envelope, "
        "handler, XACK",
        f"  saturation: {settings.events} events from {settings.in_flight} concurrent publishers;"
        " events/s = events / (first publish -> last handled);",
        "              its latencies are mostly time queued in the stream (throughput mode)",
        f"  steady: {settings.steady_events} events at {settings.rate}/s, one publish at a time "
        "(latency mode: no queue)",
        "  latency: publish called -> handler called; every run checked: each event handled",
        "  once, nothing pending (XPENDING 0: all acknowledged), no lag (XINFO GROUPS)",
        "",
    ]
    header = (
        f"{'target':<15} {'mode':<25} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'proc CPU':>9} {'redis CPU':>10}  runs (events/s)"
    )
    lines += [
        header,
        f"{'':<15} {'':<25} {'':>9} {'':>8} {'':>8} {'us/event':>9} {'us/event':>10}",
        "-" * len(header),
    ]
    for mode, label in modes.items():
        for name in TARGETS:
            row = summary[(name, mode)]
            runs = ", ".join("err" if s["error"] else f"{s['rate']:.0f}" for s in row["samples"])
            prefix = f"{TARGETS[name]:<15} {label:<25}"
            if row["error"]:
                lines.append(f"{prefix} {row['error']}  [runs: {runs}]")
                continue
            lines.append(
                f"{prefix} {fmt(row['rate'], '9.0f')} {fmt(row['p50_ms'], '8.2f')} "
                f"{fmt(row['p99_ms'], '8.2f')} {fmt(row['cpu_us_per_event'], '9.0f')} "
                f"{fmt(row['redis_cpu_us_per_event'], '10.0f')}  {runs}"
            )
        lines.append("")
    lines.append("ratios nexus RedisBus / bare redis-py (medians)")
    lines.append(
        f"  {'saturation':<11} events/s {fmt(found['saturation_rate'], '.2f'):<6}"
        f"  p50 {fmt(found['saturation_p50_ms'], '.2f'):<6}"
        f"  p99 {fmt(found['saturation_p99_ms'], '.2f'):<6}"
        f"  proc CPU/event {fmt(found['saturation_cpu_us_per_event'], '.2f'):<6}"
        f"  redis CPU/event {fmt(found['saturation_redis_cpu_us_per_event'], '.2f')}"
    )
    lines.append(
        f"  {'steady':<11} {'':<15}  p50 {fmt(found['steady_p50_ms'], '.2f'):<6}"
        f"  p99 {fmt(found['steady_p99_ms'], '.2f'):<6}"
        f"  proc CPU/event {fmt(found['steady_cpu_us_per_event'], '.2f'):<6}"
        f"  redis CPU/event {fmt(found['steady_redis_cpu_us_per_event'], '.2f')}"
    )
    lines.append("")
    return "\n".join(lines)


def redis_version() -> str:
    """The version of the redis-server that runs."""
    with contextlib.suppress(OSError):
        out = subprocess.run(
            [os.environ.get("REDIS_SERVER") or "redis-server", "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for word in out.split():
            if word.startswith("v="):
                return word[2:]
    return "?"


@contextlib.contextmanager
def terminated_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so ``finally`` blocks stop redis-server."""

    def stop(number: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + number)

    previous = {n: signal.signal(n, stop) for n in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run(settings: Settings) -> int:
    """The whole bench; returns the exit status (1 when any run failed)."""
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"events [{time.monotonic() - started:5.1f}s] {text}", file=sys.stderr, flush=True)

    try:
        with redis_server() as server:
            say(f"redis-server {redis_version()} on 127.0.0.1:{server.port} (no persistence)")
            samples = asyncio.run(measure_all(server, settings, say))
        say("redis-server stopped")
    except BenchError as error:
        print(f"events: {error}", file=sys.stderr)
        return 1
    summary = summarize(samples)
    found = ratios(summary)
    print(render(settings, summary, found), flush=True)
    result = {
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "settings": asdict(settings),
        "bus_defaults": {"batch": BATCH, "block_s": BLOCK, "maxlen": MAXLEN},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "redis_server": redis_version(),
        },
        "results": list(summary.values()),
        "ratios_nexus_over_bare": found,
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {RESULTS_FILE.relative_to(REPO)}")
    return 1 if any(row["error"] for row in summary.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.events`` or ``python benchmarks/events.py``."""
    try:
        settings = parse_settings(argv)
    except BenchError as error:
        print(f"events: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    with terminated_on_signals():
        return run(settings)


if __name__ == "__main__":
    sys.exit(main())
