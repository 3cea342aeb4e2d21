"""The parts a swap is made of: code hashes, routing generations, the drain, relays."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from nexus_grpc.plugins.drain import DrainStage, PluginGoneError, drain
from nexus_grpc.plugins.fingerprint import code_hash
from nexus_grpc.plugins.relays import EventRelay, NotConsumedError
from nexus_grpc.routing import InFlight, RoutingTable


def test_the_code_hash_covers_the_files_and_nothing_python_writes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "__init__.py").write_text("x = 1\n")
    (tmp_path / "sub" / "data.txt").write_text("a")
    first = code_hash(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert code_hash(tmp_path) == first
    (tmp_path / "sub" / "data.txt").write_text("b")
    assert code_hash(tmp_path) != first
    (tmp_path / "sub" / "data.txt").write_text("a")
    assert code_hash(tmp_path) == first
    # A file moved is another plugin, even with the same bytes.
    (tmp_path / "sub" / "data.txt").rename(tmp_path / "data.txt")
    assert code_hash(tmp_path) != first


def test_replacing_a_plugin_is_one_generation_and_the_old_table_is_untouched() -> None:
    old = RoutingTable(generation=4)
    new = old.replacing("p", [])
    assert new.generation == 5 and old.generation == 4


@pytest.mark.asyncio
async def test_the_drain_waits_then_ends_the_rest_unavailable() -> None:
    stage, in_flight = DrainStage("p"), InFlight()

    async def handler(request: Any, context: Any) -> str:
        await asyncio.sleep(float(request))
        return "done"

    tracked = stage.bind(None, handler)  # type: ignore[arg-type]

    async def call(seconds: float) -> str:
        in_flight.enter()
        try:
            return await tracked(seconds, None)
        finally:
            in_flight.leave()

    quick, stuck = asyncio.ensure_future(call(0.05)), asyncio.ensure_future(call(30))
    await asyncio.sleep(0)
    assert await drain(in_flight, stage, 0.3) == 1
    assert quick.result() == "done"
    with pytest.raises(PluginGoneError) as gone:
        await stuck
    assert gone.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_a_relay_holds_deliveries_while_unloaded_and_fails_dropped_types() -> None:
    relay = EventRelay("p", "t")
    handled: list[str] = []

    async def handler(event: Any, delivery: Any) -> None:
        handled.append(event)

    relay.hold()
    waiting = asyncio.ensure_future(relay("e1", None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not waiting.done()
    relay.set(handler)
    await asyncio.wait_for(waiting, 1)
    assert handled == ["e1"]
    relay.drop()
    with pytest.raises(NotConsumedError):
        await relay("e2", None)  # type: ignore[arg-type]
