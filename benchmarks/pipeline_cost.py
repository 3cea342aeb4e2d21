"""What each stage of the call pipeline costs per call, in-process, with no network.

``scripts/bench`` runs this after its load runs. It builds the stages exactly as the
host does (``Host._build_stages``, with the bench's settings: HS256 secret file, rate
limits too high to throttle, access log off) around a no-op unary handler for
``nexus.orders.v1.OrdersService/GetOrder`` (its real descriptor and contract policy),
then times the handler alone and the handler behind the first 1, 2, ... stages in
pipeline order, outermost first, with ``timeit`` (best of ``--repeat`` runs).

The calls get a fake grpc.aio context: metadata with the bearer token of an admin
(``*.*:all``, so access needs no ownership lookup) and no ``x-request-id`` (as from
h2load: the observe stage generates one), a peer, no deadline. Every stage
completes without suspending (the verified token is cached after the first call, the
rate limit is in memory, the no-op handler awaits nothing), so each call is driven with
``coroutine.send(None)`` inside one running event-loop task: no scheduling, no I/O,
only the stages' own work. A stage that would suspend is reported as an error.

    .venv/bin/python -m benchmarks.pipeline_cost
    .venv/bin/python -m benchmarks.pipeline_cost --repeat 7 --min-time 0.5

Then the same pipeline with tracing on (``--no-tracing`` skips it): an OpenTelemetry SDK
provider sampling every call (100%, ``ALWAYS_ON``) through a ``BatchSpanProcessor``
into an exporter that drops the spans, as the host sets one up, so the cost is the
server span per call (started, attributes set, ended, queued) and the refusal
wrappers, not an exporter's I/O; its worker thread runs during the timing, as it
would in a server.

Besides the table: what verifying the token costs without nexus's cache, what PyJWT's
``jwt.decode`` costs (what the FastAPI+JWT and grpc.aio+JWT baselines do on every
request), and what the request id the observe stage generates costs (``uuid4().hex``).
Results also go to ``benchmarks/results/pipeline_cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import sys
import tempfile
import timeit
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import jwt
from nexus.orders.v1 import orders_pb2

from nexus_grpc.access.audit import AuditLog
from nexus_grpc.access.policy import effective_policy
from nexus_grpc.auth import (
    Grant,
    KeySet,
    Principal,
    SessionGuard,
    TokenIssuer,
    TokenVerifier,
)
from nexus_grpc.config import AuthConfig, Config, LimitsConfig, LogConfig
from nexus_grpc.host import AUDIT_NAMESPACE, Host
from nexus_grpc.pipeline import Stage, chain
from nexus_grpc.routing import Arity, CallHandler, InFlight, MethodInfo
from nexus_grpc.storage import Storage
from plugins.auth.sessions import SessionStore

__all__ = ["BenchStages", "FakeContext", "bench_stages", "get_order_info", "main", "measure"]

REPO = Path(__file__).resolve().parents[1]
#: Span queue of the tracing case: one timed run's spans (flushed between runs) fit.
_SPAN_QUEUE = 1 << 16
RESULTS_FILE = REPO / "benchmarks" / "results" / "pipeline_cost.json"
LOAD_RESULTS_FILE = REPO / "benchmarks" / "results" / "latest.json"
SERVICE = "OrdersService"
METHOD = "GetOrder"
PATH = f"/nexus.orders.v1.{SERVICE}/{METHOD}"
#: The bench's limits: one principal makes every call, so the default 100/s would throttle.
UNLIMITED_RATE = 1e9

#: What each stage does in this measurement, by class name.
STAGE_NOTES = {
    "ObserveStage": "observe (new request id, in-flight; access log off)",
    "MetricsStage": "metrics (Prometheus series, unary)",
    "ErrorStage": "errors (exceptions to statuses)",
    "ConcurrencyStage": "concurrency (limit 0)",
    "DeadlineStage": "deadline (default deadline)",
    "AuthStage": "auth (bearer JWT cached after 1st call, user epoch cached)",
    "RateLimitStage": "rate limit (memory buckets)",
    "DecodeStage": "decode (a message: in-process; gRPC bytes parse here)",
    "AccessStage": "access (orders.read, scope all)",
    "AdminAuditStage": "admin audit",
    "ValidationStage": "validation (GetOrderRequest rules)",
}


class FakeContext:
    """The parts of ``grpc.aio.ServicerContext`` the stages use, for one successful call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self._trailing: Any = ()
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """What the client sent: the bearer token."""
        return self._metadata

    def peer(self) -> str:
        """A loopback client, as grpc spells it."""
        return "ipv4:127.0.0.1:54321"

    def code(self) -> grpc.StatusCode | None:
        """None until the call is aborted, like grpc.aio's."""
        return self._code

    def details(self) -> str | None:
        """The abort message, if any."""
        return self._details

    def time_remaining(self) -> float | None:
        """No deadline, like h2load's calls."""
        return None

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Keep what a stage sets (the request id)."""
        self._trailing = metadata

    def trailing_metadata(self) -> Any:
        """What was set."""
        return self._trailing

    async def abort(self, code: grpc.StatusCode, details: str = "", metadata: Any = ()) -> None:
        """End the call as grpc.aio does: the code is set, AbortError raised."""
        self._code, self._details = code, details
        raise grpc.aio.AbortError()


def drive(awaitable: Awaitable[Any]) -> Any:
    """Run a coroutine to its end without the event loop; RuntimeError if it suspends."""
    coroutine = cast(Coroutine[Any, Any, Any], awaitable)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a stage suspended: the call cannot be timed without the event loop")


@dataclass
class Row:
    """One line of the table."""

    name: str
    stage: str
    bound: bool
    best_us: float
    runs_us: list[float]
    marginal_us: float | None = None


def time_call(
    call: Callable[[], Any],
    repeat: int,
    min_time: float,
    between: Callable[[], Any] | None = None,
) -> tuple[float, list[float]]:
    """Best and all of ``repeat`` timings of ``call``, in microseconds per call.

    Each run makes as many calls as fit in ``min_time`` seconds (estimated from a first
    run of 2,000 calls, which also warms the caches up). ``between`` runs untimed after
    the calibration and after each run (the tracing case flushes its span queue there).
    """
    timer = timeit.Timer(call)
    calibration = 2000
    took = timer.timeit(number=calibration)
    number = max(calibration, int(calibration * min_time / max(took, 1e-9)))
    if between is None:
        runs = [total / number * 1e6 for total in timer.repeat(repeat=repeat, number=number)]
        return min(runs), runs
    between()
    runs = []
    for _ in range(repeat):
        runs.append(timer.timeit(number=number) / number * 1e6)
        between()
    return min(runs), runs


@dataclass
class BenchStages:
    """The host's stages as the bench configures them, and what they were built from."""

    config: Config
    keys: KeySet
    #: The HS256 secret and an access token of the bench's admin (``*.*:all``).
    secret: bytes
    token: str
    verifier: TokenVerifier
    sessions: SessionGuard
    audit: AuditLog
    stages: list[Stage]


@contextlib.asynccontextmanager
async def bench_stages(workdir: Path) -> AsyncIterator[BenchStages]:
    """Build the host's stages for the bench's settings (HS256 secret file in ``workdir``,
    rate limits too high to throttle, access log off); their storage closes on exit."""
    secret_file = workdir / "jwt-hs256.key"
    secret = secrets.token_bytes(64)
    handle = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(secret)
    config = Config(
        data_dir=str(workdir / "data"),
        auth=AuthConfig(secret_file=str(secret_file)),
        limits=LimitsConfig(
            rate_classes={
                **LimitsConfig().rate_classes,
                "default": {"rate": UNLIMITED_RATE, "burst": UNLIMITED_RATE},
            }
        ),
        log=LogConfig(access=False, level="warning"),
    )
    keys = await KeySet.load(config.auth, workdir)
    token, _ = TokenIssuer(keys, config.auth).issue_access(
        Principal(subject="bench-admin", grants=frozenset({Grant.parse("*.*:all")}))
    )
    verifier = TokenVerifier(keys, config.auth)
    storage = await Storage.connect(f"sqlite+aiosqlite:///{workdir / 'nexus.db'}")
    try:
        audit = AuditLog(storage.namespace(AUDIT_NAMESPACE))
        # The epoch check as with the auth plugin loaded: its store answers, and the
        # bench user's epoch is cached (loaded once here, as a host's first call does).
        # The ttl outlasts the run: a reload (one storage read per user and ttl) would
        # suspend the call, which this bench cannot time.
        sessions = SessionGuard(ttl=3600.0)
        sessions.attach(SessionStore(storage.namespace("plugins/security/auth")))
        await sessions.check(Principal(subject="bench-admin"))
        # The stages exactly as the host builds them for this configuration.
        stages: list[Stage] = Host(config)._build_stages(verifier, sessions, audit)
        yield BenchStages(config, keys, secret, token, verifier, sessions, audit, stages)
    finally:
        await storage.close()


def get_order_info() -> MethodInfo:
    """GetOrder's route information as the host binds it (its contract policy)."""
    descriptor = orders_pb2.DESCRIPTOR.services_by_name[SERVICE].methods_by_name[METHOD]
    return MethodInfo(
        PATH,
        "orders",
        descriptor,
        Arity.of(descriptor),
        InFlight(),
        policy=effective_policy(descriptor),
        ownership=_owns,
        category="business",
    )


async def measure(
    repeat: int, min_time: float, workdir: Path, *, tracing: bool = True
) -> dict[str, Any]:
    """Build the host's stages and time them one by one; the results as a dict."""
    async with bench_stages(workdir) as built:
        rows = await _time_stages(built.stages, built.token, repeat, min_time)
        extras = await _time_verification(
            built.keys, built.config.auth, built.token, built.secret, repeat, min_time
        )
        traced = None
        if tracing:
            traced = await _time_tracing(
                built.config,
                built.verifier,
                built.sessions,
                built.audit,
                built.token,
                repeat,
                min_time,
            )
    result: dict[str, Any] = {
        "method": PATH,
        "repeat": repeat,
        "min_time_s": min_time,
        "rows": [row.__dict__ for row in rows],
        "pipeline_us": rows[-1].best_us - rows[0].best_us,
        "verification": extras,
    }
    if traced is not None:
        traced["extra_us"] = traced["pipeline_us"] - result["pipeline_us"]
        result["tracing"] = traced
    return result


async def _time_tracing(
    config: Config,
    verifier: TokenVerifier,
    sessions: SessionGuard,
    audit: AuditLog,
    token: str,
    repeat: int,
    min_time: float,
) -> dict[str, Any]:
    """The whole pipeline with tracing on: 100% sampling, batch processor, spans dropped."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from nexus_grpc.tracing._state import set_tracer
    from nexus_grpc.tracing.setup import install

    class Dropping(SpanExporter):
        """Counts the spans the batch processor hands over, and drops them."""

        exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    class QueueFull(logging.Handler):
        """Counts the SDK's "Queue full, dropping span" warnings."""

        count = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "full" in record.getMessage().lower():
                self.count += 1

    exporter = Dropping()
    provider = TracerProvider(sampler=ALWAYS_ON)
    # The calls run back to back on one thread, far faster than a server receives them,
    # and the export thread gets the GIL only now and then: with the default queue
    # (2,048) it fills and spans are dropped, which is not the normal path. So the
    # queue holds a whole timed run and is flushed, untimed, between runs.
    processor = BatchSpanProcessor(exporter, max_queue_size=_SPAN_QUEUE)
    provider.add_span_processor(processor)
    full = QueueFull(logging.WARNING)
    sdk_log = logging.getLogger("opentelemetry.sdk")  # wherever its batch processor lives
    sdk_log.addHandler(full)
    install(provider)
    try:
        stages: list[Stage] = Host(config)._build_stages(verifier, sessions, audit)
        names = [type(stage).__name__ for stage in stages]
        rows = await _time_stages(
            stages, token, repeat, min_time, only_ends=True, between=processor.force_flush
        )
    finally:
        set_tracer(None)
        provider.shutdown()
        sdk_log.removeHandler(full)
    return {
        "stages": names,
        "pipeline_us": rows[-1].best_us - rows[0].best_us,
        "handler_us": rows[0].best_us,
        "all_stages_us": rows[-1].best_us,
        "spans_exported": exporter.exported,
        "queue_full_warnings": full.count,
    }


async def _owns(check: Any) -> bool:
    raise AssertionError("ownership lookup with scope all: the measurement is not what it says")


async def _time_stages(
    stages: list[Stage],
    token: str,
    repeat: int,
    min_time: float,
    *,
    only_ends: bool = False,
    between: Callable[[], Any] | None = None,
) -> list[Row]:
    info = get_order_info()
    response = orders_pb2.Order(id="0af1f498cdc34485aff607576753974e", customer_id="alice")
    request = orders_pb2.GetOrderRequest(id="0af1f498cdc34485aff607576753974e")
    context = FakeContext((("authorization", f"Bearer {token}"), ("user-agent", "h2load")))

    async def get_order(request: Any, context: Any) -> Any:
        return response

    rows: list[Row] = []
    counts = (0, len(stages)) if only_ends else range(len(stages) + 1)
    for count in counts:
        handler: CallHandler = chain(stages[:count], info, get_order)
        if count == 0:
            name, stage_name, bound = "handler alone (no-op GetOrder)", "", True
        else:
            stage = stages[count - 1]
            stage_name = type(stage).__name__
            name = "+ " + STAGE_NOTES.get(stage_name, stage_name)
            # A stage that does not apply to the method returns the next handler itself.
            probe: CallHandler = get_order
            bound = stage.bind(info, probe) is not probe
        result = drive(handler(request, context))  # first call: verifies and caches the token
        if result is not response or context.code() is not None:
            raise RuntimeError(f"{name}: the call failed ({context.code()} {context.details()})")

        def call(handler: CallHandler = handler) -> Any:
            return drive(handler(request, context))

        best, runs = time_call(call, repeat, min_time, between)
        rows.append(Row(name, stage_name, bound, best, runs))
        print(f"  {name}: {best:.2f} us", file=sys.stderr, flush=True)
    for previous, row in itertools.pairwise(rows):
        row.marginal_us = row.best_us - previous.best_us
    return rows


async def _time_verification(
    keys: KeySet,
    config: AuthConfig,
    token: str,
    secret: bytes,
    repeat: int,
    min_time: float,
) -> dict[str, float]:
    uncached = TokenVerifier(keys, config, cache_size=0)
    cached = TokenVerifier(keys, config)
    drive(cached.verify(token))

    def pyjwt() -> Any:
        return jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience="nexus",
            issuer="nexus",
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )

    def request_id() -> str:
        return uuid.uuid4().hex

    found = {}
    for key, call in (
        ("nexus_verify_cached_us", lambda: drive(cached.verify(token))),
        ("nexus_verify_uncached_us", lambda: drive(uncached.verify(token))),
        ("pyjwt_decode_us", pyjwt),
        ("uuid4_hex_us", request_id),
    ):
        found[key], _ = time_call(call, repeat, min_time)
    return found


def render(result: dict[str, Any], load: dict[str, Any] | None) -> str:
    """The table."""
    rows = result["rows"]
    total = "pipeline: all stages minus the handler alone"
    verification = result["verification"]
    extras = (
        ("nexus TokenVerifier, cached (what the auth stage pays)", "nexus_verify_cached_us"),
        ("nexus TokenVerifier, cache off (a token's first call)", "nexus_verify_uncached_us"),
        ("PyJWT jwt.decode (FastAPI+JWT, grpc.aio+JWT: every call)", "pyjwt_decode_us"),
        ("uuid4().hex (the request id observe generates)", "uuid4_hex_us"),
    )
    width = max(
        *(len(text) for text in [total, *(row["name"] for row in rows)]),
        *(len(label) + 2 for label, _ in extras),
    )
    rule = "-" * (width + 19)
    lines = [
        "",
        f"pipeline cost per call: {result['method']}",
        f"  no-op handler, fake context, in-process, no network; us per call, best of "
        f"{result['repeat']} timeit runs",
        f"{'stage (cumulative, in pipeline order)':<{width}} {'cum. us':>8} {'marg. us':>9}",
        rule,
    ]
    for row in rows:
        marginal = "-" if row["marginal_us"] is None else f"{row['marginal_us']:.2f}"
        note = "" if row["bound"] else "  (not bound: returns next)"
        lines.append(f"{row['name']:<{width}} {row['best_us']:8.2f} {marginal:>9}{note}")
    lines += [rule, f"{total:<{width}} {result['pipeline_us']:8.2f}"]
    traced = result.get("tracing")
    if traced is not None:
        label = "pipeline with tracing on (100% sampled, batch, dropped)"
        lines += [
            f"{label:<{width}} {traced['pipeline_us']:8.2f} {traced['extra_us']:9.2f}",
        ]
        if traced.get("queue_full_warnings"):
            lines.append("  (the span queue was full at times: spans were dropped, not timed)")
    lines += ["", "for comparison, us per call:"]
    lines += [f"  {label:<{width - 2}} {verification[key]:8.2f}" for label, key in extras]
    if load is not None:
        lines += ["", load_context(result["pipeline_us"], load)]
    lines.append("")
    return "\n".join(lines)


def load_context(pipeline_us: float, load: dict[str, Any]) -> str:
    """The pipeline's cost next to the bare server's CPU per GetOrder of the last load run."""
    for row in load.get("results", ()):
        if row.get("target") == "bare_grpc" and row.get("operation") == "get":
            cpu = row.get("server_cpu_us_per_req")
            if cpu:
                return (
                    f"for scale: bare grpc.aio used {cpu:.0f} us of server CPU per GetOrder in the "
                    f"load run of {load.get('finished_at', '?')};\n"
                    f"  the pipeline's {pipeline_us:.1f} us are {100 * pipeline_us / cpu:.1f}% "
                    "of that"
                )
    return "for scale: no bare grpc.aio GetOrder result in the last load run"


def main() -> int:
    """Entry point: ``python -m benchmarks.pipeline_cost``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timeit runs; the best counts")
    parser.add_argument(
        "--min-time", type=float, default=0.15, help="seconds each timeit run lasts (about)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS_FILE, help="where results go")
    parser.add_argument("--no-tracing", action="store_true", help="skip the tracing-on measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("pipeline cost: timing the host's stages one by one", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="nexus-pipeline-cost-") as temp:
        result = asyncio.run(
            measure(args.repeat, args.min_time, Path(temp), tracing=not args.no_tracing)
        )
    load = None
    with contextlib.suppress(OSError, ValueError):
        load = json.loads(LOAD_RESULTS_FILE.read_text())
    print(render(result, load), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
