"""Test contracts of the generation tests, compiled once per session into temp folders."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_grpc import codegen
from nexus_grpc.events import envelope

CONTRACTS = Path(__file__).parent / "contracts"
#: The contract's generated module, the same name in every version.
SWAP_PB2 = "genswap.items.v1.items_pb2"
SERVICE = "genswap.items.v1.SwapService"


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Version name (v1, v2, v3, breaking_type, breaking_method, common_v1, common_v2)
    → its generated folder."""
    root = tmp_path_factory.mktemp("generated")
    folders = {}
    versions = ("v1", "v2", "v3", "breaking_type", "breaking_method", "common_v1", "common_v2")
    for version in versions:
        codegen.generate(CONTRACTS / version, root / version)
        folders[version] = root / version
    return folders


def forget_contract_modules() -> None:
    """Drop every ``genswap`` and ``gencommon`` module, so each test starts from a
    clean import."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("genswap", "gencommon")]:
        del sys.modules[name]


@pytest.fixture
def clean_modules() -> Iterator[None]:
    """The test's ``genswap`` modules, and the event pools it registered, are gone after it."""
    forget_contract_modules()
    pools = list(envelope._event_pools)
    yield
    envelope._event_pools[:] = pools
    forget_contract_modules()


async def hold_a_call(record: Any, call: Awaitable[Any]) -> asyncio.Future[Any]:
    """Start ``call`` (one the swap plugin's gate holds) on the running generation of
    ``record`` and return it once that generation counts it in flight. Calls before it
    must have left first: a refused call's status reaches its client before the call
    stops counting, and its count must not pass for this one's."""
    for _ in range(500):
        if not record.in_flight.count:
            break
        await asyncio.sleep(0.01)
    assert record.in_flight.count == 0
    held = asyncio.ensure_future(call)
    for _ in range(500):
        if record.in_flight.count:
            break
        await asyncio.sleep(0.01)
    assert record.in_flight.count == 1
    return held
