"""A minimal worker for the supervisor's own tests: it speaks the line, nothing else.

``python line_worker.py FD OUT_DIR MODE``: connects to the supervisor on ``FD``,
subscribes to "hello" (every message received is written to ``OUT_DIR/<pid>.json``),
reports ready, publishes one "hello" with its pid each time a "go" arrives, and
waits for SIGTERM (or SIGUSR2, retired). MODE:
``serve`` as said; ``crash`` exits 3 shortly after reporting ready; ``fail`` exits 3
before it is ready; ``late-fail`` exits 3 after 1 s, never ready; ``stubborn`` ignores SIGTERM; ``slow`` reports ready after 3 s;
``draining`` takes 1.5 s to drain once retired, and writes every signal it got;
``leaving``, on a SIGTERM, asks for the hand-over as a stopping worker does (then
touches ``OUT_DIR/<pid>.leaving``), drains 1.5 s and writes every signal it got;
``self-stop`` stops on its own 0.05 s after it is ready (asks for the hand-over, exits
0), as a plugin or a watchdog stopping every new worker would; ``ask`` asks for a rolling restart before it reports ready, and twice on each "ask"
message, writing the answers to ``OUT_DIR/<pid>.asked``; ``hand-over``, once stopped,
asks whether it hands its slot's HTTP socket over and writes the answer to
``OUT_DIR/<pid>.hand_over``; ``slow-hand-over`` does the same but takes 3 s to report
ready (``OUT_DIR/<pid>.starting`` says it is on its way), and a SIGTERM meanwhile stops
it before it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from nexus_grpc.supervisor.channel import Broadcast


async def main(fd: int, out: Path, mode: str) -> None:
    if mode == "fail":
        os._exit(3)
    if mode == "late-fail":
        await asyncio.sleep(1.0)
        os._exit(3)
    line = Broadcast()
    await line.connect(fd)
    received: list[Any] = []

    def on_hello(data: Any, origin: int) -> None:
        received.append({"data": data, "origin": origin})
        # Atomically: the test reads it meanwhile.
        temp = out / f"{os.getpid()}.json.tmp"
        temp.write_text(json.dumps(received))
        temp.replace(out / f"{os.getpid()}.json")

    line.subscribe("hello", on_hello)

    async def on_go(data: Any, origin: int) -> None:
        await line.publish("hello", {"pid": os.getpid()})

    line.subscribe("go", on_go)
    asked: list[str] = []

    async def ask() -> None:
        try:
            asked.append(str(await line.restart_workers()))
        except Exception as error:
            asked.append(f"{type(error).__name__}: {error}")
        (out / f"{os.getpid()}.asked").write_text("\n".join(asked))

    async def on_ask(data: Any, origin: int) -> None:
        await ask()
        await ask()

    line.subscribe("ask", on_ask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if mode == "stubborn":
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    reason = ["SIGTERM"]
    got: list[str] = []  # draining: every signal, in order

    def retire() -> None:
        reason[0] = "retired"
        if mode == "draining":
            got.append("retired")
            loop.call_later(1.5, stop.set)
        else:
            stop.set()

    if mode == "draining":

        def on_term() -> None:
            got.append("SIGTERM")
            if reason[0] != "retired":
                stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_term)
    if mode == "leaving":
        leaving: list[asyncio.Future[None]] = []

        def on_leave() -> None:
            got.append("SIGTERM")
            if not leaving:
                leaving.append(asyncio.ensure_future(leave()))

        async def leave() -> None:
            await line.hands_over()  # the supervisor counts it as stopping from now on
            (out / f"{os.getpid()}.leaving").touch()
            loop.call_later(1.5, stop.set)

        loop.add_signal_handler(signal.SIGTERM, on_leave)
    loop.add_signal_handler(signal.SIGUSR2, retire)
    if mode == "slow":
        await asyncio.sleep(3)
    if mode == "slow-hand-over":
        (out / f"{os.getpid()}.starting").touch()  # its signal handlers are on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                await stop.wait()
    if mode == "ask":
        await ask()
    if not stop.is_set():
        await line.ready()
    if mode == "crash":
        await asyncio.sleep(0.1)
        os._exit(3)
    if mode == "self-stop":
        await asyncio.sleep(0.05)
        await line.hands_over()
        await line.close()
        return
    closed = asyncio.ensure_future(line.closed.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), closed], return_when="FIRST_COMPLETED")
    if mode.endswith("hand-over"):
        (out / f"{os.getpid()}.hand_over").write_text(str(await line.hands_over()))
    said = ",".join(got) if mode in ("draining", "leaving") else reason[0]
    (out / f"{os.getpid()}.stopped").write_text(said if stop.is_set() else "line closed")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
