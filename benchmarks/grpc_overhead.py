"""What grpc.aio itself costs per call, as the time its handler takes grows.

A bare ``grpc.aio.server()`` (no nexus code) serves one unary method whose handler
burns the CPU time the request names (a busy loop on ``time.thread_time``) and returns
the request, loaded by h2load as ``scripts/bench`` loads every gRPC target (4
connections x 8 streams: 32 calls in flight). For each handler time the report gives
the server's CPU per call, and that CPU less the handler's: what grpc.aio, grpc core's
poller thread and the event loop spend on a call. One more case, ``0+trailer``, is an
instant handler that sets a trailing metadatum, as nexus's ``x-request-id`` on every
call: what that costs grpc.aio.

That cost is not fixed. A handler that answers at once lets each wake-up of the loop
take many calls; a slower one leaves fewer calls ready per wake-up, and each pays more
of the fixed costs. It bounds the host-level "CreateOrder / echo" ratio of
``benchmarks/run.py``: a create spends its handler time here too, so the transport
under it costs more than under the echo it is compared with.

    .venv/bin/python -m benchmarks.grpc_overhead
    .venv/bin/python -m benchmarks.grpc_overhead --burns 0 100 300 --seconds 4 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import free_ports, grpc_frame, process_cpu_seconds

_METHOD = "/bench.Burn/Call"
#: A request id as nexus's observe stage makes one (32 hex digits).
_REQUEST_ID = "0123456789abcdef0123456789abcdef"
_DONE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded")


async def _serve(port: int) -> None:
    import grpc

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        # The request is the handler's CPU time in µs, as ASCII digits, after a "t" when
        # the call also sets a trailing metadatum (as nexus's x-request-id).
        if request.startswith(b"t"):
            context.set_trailing_metadata((("x-request-id", _REQUEST_ID),))
        until = time.thread_time() + int(request.removeprefix(b"t")) / 1e6
        while time.thread_time() < until:
            pass
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(call)  # bytes in, bytes out
    service, method = _METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _load(port: int, body: Path, seconds: int) -> int:
    """Calls h2load completed in ``seconds``; RuntimeError unless every one succeeded."""
    out = subprocess.run(
        [
            "h2load",
            "-D",
            str(seconds),
            "-t1",
            "-c4",
            "-m8",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{port}{_METHOD}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    ).stdout
    found = _DONE.search(out)
    if found is None or found.group(1) != found.group(2) or int(found.group(1)) == 0:
        raise RuntimeError(f"h2load failed: {out[-500:]}")
    return int(found.group(1))


def main(burns: list[int], seconds: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Print and return, per case (a handler time in µs; "0+trailer": an instant handler
    setting a trailing metadatum), the median calls/s and CPU µs per call."""
    cases = {str(burn): (burn, str(burn).encode()) for burn in burns}
    cases["0+trailer"] = (0, b"t0")
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_overhead", "--serve", str(port)],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.DEVNULL,
    )
    samples: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}
    try:
        with tempfile.TemporaryDirectory(prefix="nexus-bench-grpc-") as name:
            bodies = {}
            for number, (case, (_, request)) in enumerate(cases.items()):
                bodies[case] = Path(name) / f"case-{number}.bin"
                bodies[case].write_bytes(grpc_frame(request))
            first = next(iter(cases))
            deadline = time.monotonic() + 30
            while True:  # until the server answers
                try:
                    _load(port, bodies[first], 1)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.2)
            for case in cases:  # warm-up
                _load(port, bodies[case], 1)
            for round_number in range(rounds):
                order = list(cases) if round_number % 2 == 0 else list(cases)[::-1]
                for case in order:
                    before = process_cpu_seconds(server.pid)
                    calls = _load(port, bodies[case], seconds)
                    cpu = process_cpu_seconds(server.pid) - before
                    samples[case].append((calls / seconds, cpu / calls * 1e6))
    finally:
        server.terminate()
        server.wait(10)
    result = {
        case: (
            statistics.median(rate for rate, _ in values),
            statistics.median(cpu for _, cpu in values),
        )
        for case, values in samples.items()
    }
    base = result[first][1] - cases[first][0]
    print("bare grpc.aio, 32 calls in flight: server CPU per call as the handler's time grows")
    heads = ("handler µs", "calls/s", "CPU µs/call", "grpc µs/call", "vs first")
    widths = (11, 9, 12, 13, 9)
    print(" ".join(f"{head:>{width}}" for head, width in zip(heads, widths, strict=True)))
    for case, (rate, cpu) in result.items():
        overhead = cpu - cases[case][0]
        print(f"{case:>11} {rate:>9.0f} {cpu:>12.1f} {overhead:>13.1f} {overhead / base:>9.2f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burns", type=int, nargs="+", default=[0, 100, 200, 400])
    parser.add_argument("--seconds", type=int, default=3, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per handler time")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve is not None:
        asyncio.run(_serve(arguments.serve))
    else:
        main(arguments.burns, arguments.seconds, arguments.rounds)
