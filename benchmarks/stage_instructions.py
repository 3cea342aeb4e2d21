"""Instructions the pipeline's stages cost per gRPC call, counted live by callgrind.

``instructions.py`` counts whole servers; a running ``nexus serve`` does ~5 million
instructions of idle work per second under valgrind (timers, grpc core's threads), taken
out with a ±10 % error, so its per-call figure moves by ~10k between runs: too coarse
for a change to one stage. This serves GetOrder from a plain grpc.aio server through
the host's dispatcher and the host's stages only (built as ``pipeline_cost.py`` builds
them: bench settings, HS256 token, rate limits that never throttle, access log off)
around a handler that answers a fixed order. Nothing else runs in it, so a count
repeats to about ±1k instructions per call.

Under callgrind, per round: counters zeroed, ``--calls`` calls with h2load (4
connections x 8 streams, the bench's token on each), counters dumped; the table gives
instructions per call for each round. ``--stages K`` keeps the first K stages only
(0: the handler alone, which then parses the request itself); ``--each`` measures every
K from 0 to all, which prices each stage by difference.

    .venv/bin/python -m benchmarks.stage_instructions               # ~1 minute
    .venv/bin/python -m benchmarks.stage_instructions --each        # ~10 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.instructions import (
    START_TIMEOUT,
    CallgrindServer,
    Load,
    grpc_load,
    grpc_succeeds,
    listening,
)
from benchmarks.run import BENCH_DIR, BenchError, Processes, terminated_on_signals, wait_until

__all__ = ["main"]

RESULTS_FILE = BENCH_DIR / "results" / "stage_instructions.json"
PATH = "/nexus.orders.v1.OrdersService/GetOrder"
ORDER_ID = "0af1f498cdc34485aff607576753974e"
#: Calls before counting: first calls verify the token, fill caches, import lazily.
WARMUP_CALLS = 200


async def _serve(ready: Path, count: int | None) -> None:
    """The server (run under valgrind): writes ``<port> <token> <stage names>`` to
    ``ready`` once it serves, then serves until killed."""
    import grpc
    from nexus.orders.v1 import orders_pb2

    from benchmarks.pipeline_cost import bench_stages, get_order_info
    from nexus_grpc.pipeline import chain
    from nexus_grpc.routing import Route, Router
    from nexus_grpc.transport.grpc_server import Dispatcher

    with tempfile.TemporaryDirectory(prefix="nexus-stage-instr-") as temp:
        async with bench_stages(Path(temp)) as built:
            stages = built.stages if count is None else built.stages[:count]
            info = get_order_info()
            answer = orders_pb2.Order(id=ORDER_ID, customer_id="alice")
            parse = orders_pb2.GetOrderRequest.FromString

            async def get_order(request: Any, context: Any) -> Any:
                if type(request) is bytes:  # no decode stage among the first stages
                    parse(request)
                return answer

            call = chain(stages, info, get_order)
            handler = grpc.unary_unary_rpc_method_handler(
                call, response_serializer=orders_pb2.Order.SerializeToString
            )
            router = Router()
            router.add([Route(info, call, handler)])
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((Dispatcher(router),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            names = ",".join(type(stage).__name__ for stage in stages) or "-"
            # Written aside and renamed: the driver reads it as soon as it exists.
            written = ready.with_name(ready.name + ".part")
            await asyncio.to_thread(written.write_text, f"{port} {built.token} {names}")
            await asyncio.to_thread(written.replace, ready)
            await server.wait_for_termination()


def _measure(count: int | None, calls: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Instructions per call of each round with the first ``count`` stages (None: all)."""
    from nexus.orders.v1 import orders_pb2

    label = "all" if count is None else str(count)
    ready = workdir / f"ready-{label}"
    argv = [sys.executable, "-m", "benchmarks.stage_instructions", "--serve", str(ready)]
    if count is not None:
        argv += ["--stages", str(count)]
    procs = Processes(workdir)
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEXUS_")}
    server = CallgrindServer(procs, f"stages_{label}", argv, env, workdir)
    try:
        wait_until("the stages' server", ready.exists, server.check, START_TIMEOUT)
        port_text, token, names = ready.read_text().split(" ", 2)
        port, auth = int(port_text), f"Bearer {token}"
        wait_until("the stages' server", listening(port), server.check, START_TIMEOUT)
        payload = orders_pb2.GetOrderRequest(id=ORDER_ID).SerializeToString()
        answer = grpc_succeeds(port, PATH, payload, auth)
        load: Load = grpc_load(port, PATH, payload, workdir, auth, len(answer))
        load.send(WARMUP_CALLS)
        per_call = []
        for round_number in range(rounds):
            # A dump label must not start with a digit: callgrind_control takes it for a pid.
            counted = server.count(f"stages_{label}_{round_number}", lambda: load.send(calls))
            per_call.append(counted.instructions / counted.requests)
    finally:
        procs.stop_all()
    return {"stages": names.split(",") if names != "-" else [], "per_call": per_call}


def render(results: list[dict[str, Any]]) -> str:
    """The table: per stage count, instructions per call of each round and the step."""
    lines = ["instructions per GetOrder call (callgrind; the host's stages on grpc.aio)"]
    lines.append(f"  {'stages':<8}{'last stage':<22}{'per call (rounds)':<34}{'step':>8}")
    previous: float | None = None
    for result in results:
        rounds = result["per_call"]
        best = min(rounds)
        shown = ", ".join(f"{value / 1000:.1f}k" for value in rounds)
        step = "" if previous is None else f"{(best - previous) / 1000:+.1f}k"
        last = result["stages"][-1] if result["stages"] else "(handler alone)"
        lines.append(f"  {len(result['stages']):<8}{last:<22}{shown:<34}{step:>8}")
        previous = best
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement, print the table, write benchmarks/results/stage_instructions.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls counted per round")
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds")
    parser.add_argument("--stages", type=int, default=None, help="keep the first K stages")
    parser.add_argument("--each", action="store_true", help="every stage count, 0 to all")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve is not None:
        asyncio.run(_serve(options.serve, options.stages))
        return 0
    if options.calls < 32 or options.rounds < 1:
        parser.error("--calls must be at least 32 and --rounds at least 1")
    missing = [
        tool for tool in ("valgrind", "callgrind_control", "h2load") if not shutil.which(tool)
    ]
    if missing:
        print(f"stage_instructions: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminated_on_signals())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-stages-")))
        try:
            if not options.each:
                results.append(_measure(options.stages, options.calls, options.rounds, workdir))
            else:
                # All stages first: their number says how many counts there are.
                whole = _measure(None, options.calls, options.rounds, workdir)
                for count in range(len(whole["stages"])):
                    results.append(_measure(count, options.calls, options.rounds, workdir))
                    print(render(results).splitlines()[-1], file=sys.stderr, flush=True)
                results.append(whole)
        except BenchError as error:
            print(f"stage_instructions: {error}", file=sys.stderr)
            return 1
    print(render(results))
    print(f"({time.monotonic() - started:.0f} s)")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
