"""Worker processes: ``nexus serve --workers 2`` against ``--workers 1``, side by side.

Two hosts from the same config (orders and auth plugins, the full pipeline, rate limits
too high to throttle, access log off; limits, events and cache on one throwaway
redis-server, which ``--workers 2`` requires, so both pay the same Redis round trips),
differing only in ``--workers``; and, as a reference, one process with that state in
memory (today's default), which says what the Redis round trips cost. For each,
interleaved over ``BENCH_ROUNDS`` rounds, with the load tools and client settings of
``benchmarks.run`` (h2load for gRPC, wrk for REST, the same token on every call):

- ``WhoAmI``: an echo-sized method (the caller from its token, no storage),
  ``/nexus.auth.v1.AuthService/WhoAmI`` and ``GET /v1/auth/me``;
- ``GetOrder``: one SQLite read, ``/nexus.orders.v1.OrdersService/GetOrder`` and
  ``GET /v1/orders/{id}``.

Reported per run (median shown): requests per second, and the nexus server's CPU per
call: user + system time from ``/proc/<pid>/stat`` of the supervisor and every worker
(its children), summed, divided by the calls answered. The load tool runs on the same
two cores but is a separate process, so its CPU is not in that figure (it is in the
machine's, which is why workers=2 cannot reach 2x here: h2load/wrk and redis-server
take their share of the two cores). redis-server's CPU per call is shown separately.
Results also go to ``benchmarks/results/workers.json``.

    .venv/bin/python -m benchmarks.workers
    BENCH_SECONDS=4 BENCH_ROUNDS=3 .venv/bin/python -m benchmarks.workers
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.events import redis_server
from benchmarks.run import (
    BIN,
    REPO,
    UNLIMITED_RATE,
    BenchError,
    Case,
    Processes,
    Sample,
    Settings,
    check_tools,
    free_ports,
    grpc_check,
    grpc_frame,
    grpc_ready,
    http_ready,
    make_credentials,
    process_cpu_seconds,
    rest_create,
    rest_get,
    run_h2load,
    run_wrk,
    toml_string,
    wait_until,
)

RESULTS = REPO / "benchmarks" / "results" / "workers.json"
#: (workers, shared state on Redis): the pair compared, and one process with its state
#: in memory as a reference (what the Redis round trips of limits and cache cost).
TARGETS = ((1, True), (2, True), (1, False))
METHODS = {
    "whoami": ("nexus.auth.v1.AuthService", "WhoAmI", "/v1/auth/me"),
    "get": ("nexus.orders.v1.OrdersService", "GetOrder", "/v1/orders/{id}"),
}


@dataclass
class Target:
    """One host: its worker count, process name, ports and data folder."""

    workers: int
    redis: bool
    grpc_port: int
    http_port: int
    data: Path

    @property
    def name(self) -> str:
        return f"workers{self.workers}" + ("" if self.redis else "-memory")


@dataclass
class Run:
    """The samples of one target, method and transport."""

    target: Target
    case: Case
    samples: list[Sample] = field(default_factory=list)
    redis_cpu_us: list[float] = field(default_factory=list)


def write_config(path: Path, data: Path, secret_file: Path, redis_url: str | None) -> None:
    rate = repr(UNLIMITED_RATE)
    shared = ""
    if redis_url is not None:
        url = toml_string(redis_url)
        shared = "".join(
            f'[{section}]\nbackend = "redis"\nredis_url = {url}\n'
            for section in ("limits", "events", "cache")
        )
    path.write_text(
        f"data_dir = {toml_string(str(data))}\n"
        "[auth]\n"
        f"secret_file = {toml_string(str(secret_file))}\n"
        f"{shared}"
        "[limits.rate_classes.default]\n"
        f"rate = {rate}\nburst = {rate}\n"
        "[log]\n"
        'access = false\nformat = "text"\n'
        "[plugins]\n"
        'enabled = ["orders", "auth"]\nentry_points = false\n'
    )


def server_pids(procs: Processes, target: Target) -> list[int]:
    """The target's process and its children (the workers, with ``--workers 2``)."""
    root = procs.pid(target.name)
    pids = [root]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == root:
            pids.append(int(entry.name))
    return pids


def start(procs: Processes, target: Target, config: Path, settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["NEXUS_HTTP__ADDRESS"] = f"127.0.0.1:{target.http_port}"
    argv = [str(BIN / "nexus"), "serve", "--config", str(config)]
    argv += ["--workers", str(target.workers), "--grpc-address", f"127.0.0.1:{target.grpc_port}"]
    procs.start(target.name, [*settings.server_prefix(), *argv], env)

    def check() -> None:
        procs.check(target.name)

    wait_until(f"{target.name} gRPC", grpc_ready(target.grpc_port), check, 90)
    wait_until(f"{target.name} REST", http_ready(target.http_port), check, 90)

    def all_workers() -> bool:
        return len(server_pids(procs, target)) == 1 + (target.workers if target.workers > 1 else 0)

    wait_until(f"{target.name} workers", all_workers, check, 90)


def prepare(targets: list[Target], workdir: Path, authorization: str) -> list[Run]:
    from nexus.auth.v1 import auth_pb2
    from nexus.orders.v1 import orders_pb2

    runs = []
    for target in targets:
        order_id = rest_create(target.http_port, target.name, authorization)["id"]
        rest_get(target.http_port, order_id, target.name, authorization)
        payloads = {
            "whoami": auth_pb2.WhoAmIRequest().SerializeToString(),
            "get": orders_pb2.GetOrderRequest(id=order_id).SerializeToString(),
        }
        for method, (service, name, path) in METHODS.items():
            body = workdir / f"{target.name}-{method}.bin"
            body.write_bytes(grpc_frame(payloads[method]))
            answer = grpc_check_service(
                target.grpc_port, service, name, payloads[method], authorization
            )
            url = f"http://127.0.0.1:{target.grpc_port}/{service}/{name}"
            grpc_case = Case(
                target.name, method, "grpc", target.name, url, target.data / "nexus.db",
                authorization, body, min_frame=5 + len(answer), exact_frame=5 + len(answer),
            )  # fmt: skip
            rest_url = f"http://127.0.0.1:{target.http_port}{path.format(id=order_id)}"
            rest_case = Case(
                target.name, method, "rest", target.name, rest_url, target.data / "nexus.db",
                authorization,
            )  # fmt: skip
            runs += [Run(target, grpc_case), Run(target, rest_case)]
    return runs


def grpc_check_service(port: int, service: str, method: str, payload: bytes, auth: str) -> bytes:
    """One checked call of ``service``/``method`` (run.grpc_check calls OrdersService)."""
    if service == "nexus.orders.v1.OrdersService":
        return grpc_check(port, method, payload, "nexus", auth)
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{service}/{method}", request_serializer=None, response_deserializer=None
        )
        try:
            return bytes(call(payload, timeout=10, metadata=(("authorization", auth),)))
        except grpc.RpcError as error:
            raise BenchError(f"{service}/{method} failed: {error}") from None


def measure(
    run: Run, seconds: int, settings: Settings, procs: Processes, workdir: Path, redis_pid: int
) -> Sample:
    """One load run; server CPU over the supervisor and its workers, redis apart."""
    procs.check(run.target.name)
    pids = server_pids(procs, run.target)
    before = sum(process_cpu_seconds(pid) for pid in pids)
    redis_before = process_cpu_seconds(redis_pid)
    if run.case.kind == "rest":
        sample = run_wrk(run.case, seconds, settings, procs)
    else:
        log = workdir / f"h2load-{run.target.name}-{run.case.operation}.log"
        sample = run_h2load(run.case, seconds, settings, procs, log)
    after = sum(process_cpu_seconds(pid) for pid in pids)
    redis_cpu = process_cpu_seconds(redis_pid) - redis_before
    procs.check(run.target.name)
    if server_pids(procs, run.target) != pids:
        sample.error = "a worker was replaced during the run"
    if sample.requests:
        sample.server_cpu_us_per_req = (after - before) / sample.requests * 1e6
        run.redis_cpu_us.append(redis_cpu / sample.requests * 1e6)
    return sample


def summarize(runs: list[Run]) -> dict[str, dict[str, object]]:
    rows: dict[str, dict[str, object]] = {}
    for run in runs:
        good = [s for s in run.samples if not s.error]
        errors = sorted({s.error for s in run.samples if s.error})
        key = f"{run.target.name} {run.case.operation} {run.case.kind}"
        rows[key] = {
            "workers": run.target.workers,
            "state": "redis" if run.target.redis else "memory",
            "method": METHODS[run.case.operation][1],
            "transport": run.case.kind,
            "rps": statistics.median(s.rps for s in good) if good else None,
            "server_cpu_us_per_call": statistics.median(
                s.server_cpu_us_per_req for s in good if s.server_cpu_us_per_req is not None
            )
            if good
            else None,
            "redis_cpu_us_per_call": statistics.median(run.redis_cpu_us)
            if run.redis_cpu_us
            else None,
            "p99_ms": statistics.median(s.p99_ms for s in good if s.p99_ms is not None)
            if good
            else None,
            "errors": errors,
        }
    return rows


def ratios(rows: dict[str, dict[str, object]]) -> dict[str, dict[str, float | None]]:
    found: dict[str, dict[str, float | None]] = {}
    for method in METHODS:
        for kind in ("grpc", "rest"):
            one, two = rows[f"workers1 {method} {kind}"], rows[f"workers2 {method} {kind}"]
            memory = rows[f"workers1-memory {method} {kind}"]
            found[f"{METHODS[method][1]} {kind}"] = {
                "rps_2_over_1": _ratio(two["rps"], one["rps"]),
                "cpu_per_call_2_over_1": _ratio(
                    two["server_cpu_us_per_call"], one["server_cpu_us_per_call"]
                ),
                "rps_redis_over_memory": _ratio(one["rps"], memory["rps"]),
            }
    return found


def _ratio(top: object, bottom: object) -> float | None:
    if isinstance(top, float | int) and isinstance(bottom, float | int) and bottom:
        return float(top) / float(bottom)
    return None


def render(rows: dict[str, dict[str, object]], found: dict[str, dict[str, float | None]]) -> str:
    def number(value: object, spec: str) -> str:
        return format(value, spec) if isinstance(value, float | int) else "-"

    lines = [
        f"{'workers':>7} {'state':<6} {'method':<9} {'transport':<9} {'req/s':>8} "
        f"{'nexus CPU µs/call':>18} {'redis CPU µs/call':>18} {'p99 ms':>7}  errors"
    ]
    for row in rows.values():
        lines.append(
            f"{row['workers']:>7} {row['state']!s:<6} {row['method']!s:<9} {row['transport']!s:<9} "
            f"{number(row['rps'], '8.0f')} {number(row['server_cpu_us_per_call'], '18.1f')} "
            f"{number(row['redis_cpu_us_per_call'], '18.1f')} {number(row['p99_ms'], '7.1f')}  "
            f"{'; '.join(row['errors']) if row['errors'] else ''}"  # type: ignore[arg-type]
        )
    for label, ratio in found.items():
        lines.append(
            f"{label}: workers=2 / workers=1 req/s = {number(ratio['rps_2_over_1'], '.2f')}x, "
            f"CPU per call = {number(ratio['cpu_per_call_2_over_1'], '.2f')}x; "
            f"state on Redis / in memory (1 worker) req/s = "
            f"{number(ratio['rps_redis_over_memory'], '.2f')}x"
        )
    return "\n".join(lines)


def run(settings: Settings, workdir: Path, procs: Processes) -> int:
    check_tools(settings)
    credentials = make_credentials(workdir)
    with redis_server() as redis:
        ports = free_ports(2 * len(TARGETS))
        targets = []
        for index, (count, shared) in enumerate(TARGETS):
            target = Target(
                count, shared, ports[2 * index], ports[2 * index + 1], workdir / f"data{index}"
            )
            config = workdir / f"{target.name}.toml"
            # Each its own Redis database: the hosts share no state.
            url = f"{redis.url[:-1]}{index + 1}" if shared else None
            write_config(config, target.data, credentials.secret_file, url)
            start(procs, target, config, settings)
            targets.append(target)
        runs = prepare(targets, workdir, credentials.authorization)
        for each in runs:  # warm-up, not recorded
            if settings.warmup:
                measure(each, settings.warmup, settings, procs, workdir, redis.pid)
            each.redis_cpu_us.clear()
        for round_number in range(1, settings.rounds + 1):
            for each in runs:
                label = f"{each.target.name} {each.case.operation} {each.case.kind}"
                print(f"workers: round {round_number}: {label}", file=sys.stderr)
                sample = measure(each, settings.seconds, settings, procs, workdir, redis.pid)
                sample.round = round_number
                each.samples.append(sample)
        # Before redis-server goes: the hosts drain without Redis errors.
        for problem in procs.stop_all():
            print(f"workers: {problem}", file=sys.stderr)
    rows = summarize(runs)
    found = ratios(rows)
    report = {
        "settings": {
            "seconds": settings.seconds,
            "rounds": settings.rounds,
            "grpc": f"h2load {settings.h2_clients} connections x {settings.h2_streams} streams",
            "rest": f"wrk {settings.wrk_connections} connections",
            "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "cases": rows,
        "ratios": found,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(render(rows, found))
    return 1 if any(row["errors"] for row in rows.values()) else 0


def main() -> int:
    settings = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="nexus-workers-bench-") as temp:
        workdir = Path(temp)
        procs = Processes(workdir)
        try:
            return run(settings, workdir, procs)
        except BenchError as error:
            print(f"workers: {error}", file=sys.stderr)
            return 1
        finally:
            for problem in procs.stop_all():
                print(f"workers: {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
