"""What TLS costs per call on both ports, and per new connection, side by side in one run.

Two ``nexus serve`` processes with no plugins (health only), one plaintext and one with
TLS on both ports (a throwaway EC P-256 certificate, TLS 1.3 as negotiated), are loaded
in interleaved rounds with h2load:

- gRPC port: ``grpc.health.v1.Health/Check`` over HTTP/2 (``-c`` connections x ``-m``
  streams, kept open: the handshake is amortised over the run);
- HTTP port: the same method over gRPC-Web on HTTP/1.1 keep-alive (``h2load --h1``).

For each: requests per second and the server's CPU microseconds per call (from
``/proc/<pid>/stat``), and the TLS/plaintext ratios. Then the handshake alone: ``--handshakes``
sequential new connections per port and mode from Python (connect, TLS handshake, close;
client and server on this machine), mean milliseconds each. Results also go to
``benchmarks/results/tls_cost.json``.

    .venv/bin/python -m benchmarks.tls_cost
    .venv/bin/python -m benchmarks.tls_cost --seconds 4 --rounds 3 --handshakes 300
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.run import REPO, BenchError, Processes, free_ports, process_cpu_seconds
from nexus_grpc.tls.certs import TestCA

RESULTS = REPO / "benchmarks" / "results" / "tls_cost.json"
NEXUS = Path(sys.executable).parent / "nexus"
_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded")
#: An empty HealthCheckRequest as one gRPC(-Web) frame.
_EMPTY_FRAME = b"\x00\x00\x00\x00\x00"
_PATH = "/grpc.health.v1.Health/Check"


@dataclass
class Case:
    """One load run's target."""

    port_kind: str  # "grpc" or "http"
    tls: bool
    server: str
    port: int

    @property
    def label(self) -> str:
        return f"{self.port_kind} {'TLS' if self.tls else 'plaintext'}"


@dataclass
class Result:
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def write_config(directory: Path, tls: TestCA | None) -> Path:
    lines = [
        f'data_dir = "{directory / "data"}"',
        "[plugins]",
        "dirs = []",
        "entry_points = false",
        "[log]",
        "access = false",
        'level = "warning"',
        "[limits.rate_classes.default]",
        "rate = 1e9",
        "burst = 1e9",
    ]
    if tls is not None:
        server = tls.issue("server", dns=("localhost",), ips=("127.0.0.1",))
        for section in ("server.tls", "http.tls"):
            lines += [
                f"[{section}]",
                f'cert_file = "{server.cert_file}"',
                f'key_file = "{server.key_file}"',
            ]
    path = directory / "nexus.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(procs: Processes, name: str, config: Path, grpc_port: int, http_port: int) -> None:
    env = {**os.environ, "NEXUS_HTTP__ADDRESS": f"127.0.0.1:{http_port}"}
    procs.start(
        name,
        [str(NEXUS), "serve", "--config", str(config), "--grpc-address", f"127.0.0.1:{grpc_port}"],
        env,
    )
    deadline = time.monotonic() + 30
    for port in (grpc_port, http_port):
        while True:
            procs.check(name)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not listen on {port} in 30s") from None
                time.sleep(0.1)


def load(case: Case, args: argparse.Namespace, procs: Processes, body: Path) -> tuple[float, float]:
    """h2load ``case`` for ``args.seconds``; requests per second and server CPU µs per call."""
    scheme = "https" if case.tls else "http"
    if case.port_kind == "grpc":
        headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        mode = ["-c", str(args.clients), "-m", str(args.streams)]
    else:
        headers = ["-H", "content-type: application/grpc-web+proto", "-H", "x-grpc-web: 1"]
        mode = ["--h1", "-c", str(args.clients * args.streams)]
    argv = [
        "h2load",
        "-D",
        str(args.seconds),
        "-t",
        "1",
        *mode,
        "-d",
        str(body),
        *headers,
        f"{scheme}://127.0.0.1:{case.port}{_PATH}",
    ]
    pid = procs.pid(case.server)
    cpu_before = process_cpu_seconds(pid)
    code, out, err, _ = procs.run_tool(argv, timeout=args.seconds + 30)
    cpu = process_cpu_seconds(pid) - cpu_before
    finished, requests = _FINISHED.search(out), _REQUESTS.search(out)
    if code != 0 or finished is None or requests is None:
        raise BenchError(f"h2load failed ({code}): {(err or out).strip()[-300:]}")
    done, succeeded = int(requests.group(1)), int(requests.group(2))
    if done == 0 or succeeded != done:
        raise BenchError(f"{case.label}: {done - succeeded} of {done} requests failed")
    return float(finished.group(3)), 1e6 * cpu / done


def handshakes(port: int, context: ssl.SSLContext | None, count: int) -> float:
    """Mean milliseconds of ``count`` new connections (with a TLS handshake if ``context``)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            if context is not None:
                with context.wrap_socket(raw, server_hostname="localhost"):
                    pass
        times.append(time.perf_counter() - started)
    return 1000 * statistics.fmean(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 5)))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 2)))
    parser.add_argument("--clients", type=int, default=4, help="h2load connections (gRPC)")
    parser.add_argument("--streams", type=int, default=8, help="streams per connection (gRPC)")
    parser.add_argument("--handshakes", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nexus-tls-bench-") as temp:
        workdir = Path(temp)
        procs = Processes(workdir)
        try:
            return run(args, workdir, procs)
        except BenchError as error:
            print(f"tls_cost: {error}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()


def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> int:
    ca = TestCA.create(workdir / "pki")
    body = workdir / "body"
    body.write_bytes(_EMPTY_FRAME)
    ports = free_ports(4)
    cases = []
    for index, (name, tls) in enumerate((("plain", False), ("tls", True))):
        folder = workdir / name
        folder.mkdir()
        config = write_config(folder, ca if tls else None)
        grpc_port, http_port = ports[2 * index], ports[2 * index + 1]
        start(procs, name, config, grpc_port, http_port)
        cases += [Case("grpc", tls, name, grpc_port), Case("http", tls, name, http_port)]
    results = {case.label: Result() for case in cases}
    for round_number in range(args.rounds):
        for case in cases:
            print(f"tls_cost: round {round_number + 1}: {case.label}", file=sys.stderr)
            rps, cpu_us = load(case, args, procs, body)
            results[case.label].rps.append(rps)
            results[case.label].cpu_us.append(cpu_us)
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    handshake_ms = {
        case.label: handshakes(case.port, context if case.tls else None, args.handshakes)
        for case in cases
    }
    report = summarise(results, handshake_ms, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return 0


def summarise(
    results: dict[str, Result], handshake_ms: dict[str, float], args: argparse.Namespace
) -> dict[str, object]:
    rows: dict[str, dict[str, float]] = {}
    for label, result in results.items():
        rows[label] = {
            "rps": statistics.median(result.rps),
            "server_cpu_us_per_call": statistics.median(result.cpu_us),
            "new_connection_ms": handshake_ms[label],
        }
    ratios = {}
    for port in ("grpc", "http"):
        plain, tls = rows[f"{port} plaintext"], rows[f"{port} TLS"]
        ratios[port] = {
            "rps_tls_over_plain": tls["rps"] / plain["rps"],
            "cpu_us_added_per_call": tls["server_cpu_us_per_call"]
            - plain["server_cpu_us_per_call"],
            "handshake_ms_added": tls["new_connection_ms"] - plain["new_connection_ms"],
        }
    return {
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "grpc": f"{args.clients} connections x {args.streams} streams",
            "http": f"{args.clients * args.streams} HTTP/1.1 keep-alive connections",
            "handshakes": args.handshakes,
        },
        "cases": rows,
        "tls_cost": ratios,
    }


def print_report(report: dict[str, object]) -> None:
    rows = report["cases"]
    assert isinstance(rows, dict)
    print(f"{'case':<16} {'req/s':>9} {'server CPU µs/call':>19} {'new connection ms':>18}")
    for label, row in rows.items():
        print(
            f"{label:<16} {row['rps']:>9.0f} {row['server_cpu_us_per_call']:>19.1f} "
            f"{row['new_connection_ms']:>18.2f}"
        )
    ratios = report["tls_cost"]
    assert isinstance(ratios, dict)
    for port, ratio in ratios.items():
        print(
            f"{port}: TLS req/s = {ratio['rps_tls_over_plain']:.2f} x plaintext; "
            f"+{ratio['cpu_us_added_per_call']:.1f} µs server CPU per call (keep-alive); "
            f"+{ratio['handshake_ms_added']:.2f} ms per new connection (handshake)"
        )


if __name__ == "__main__":
    sys.exit(main())
