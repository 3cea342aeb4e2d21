"""The hot swap messages between workers: what a worker accepts from the broadcast."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nexus_grpc.plugins.swap import SwapRequest
from nexus_grpc.plugins.swap_sharing import _alive, _request_of
from nexus_grpc.supervisor.swaps import SWAP_TOPIC, PluginState


def test_a_well_formed_message_is_the_request_it_states() -> None:
    request, ident = _request_of(
        {
            "id": "12-1",
            "plugin": "swapper",
            "operation": "reload",
            "expected_hash": "ab" * 32,
            "cascade": False,
            "drain_timeout": 2.5,
            "force": True,
        }
    )
    assert ident == "12-1"
    assert request == SwapRequest(
        "swapper", "reload", expected_hash="ab" * 32, drain_timeout=2.5, force=True
    )


@pytest.mark.parametrize(
    "data",
    [
        None,
        "reload swapper",
        {"plugin": "swapper", "operation": "delete"},
        {"plugin": "", "operation": "load"},
        {"plugin": "x" * 65, "operation": "load"},
        {"plugin": "swapper", "operation": "reload", "drain_timeout": "soon"},
        {"plugin": "swapper", "operation": "reload", "expected_hash": 7},
    ],
)
def test_a_malformed_message_is_no_request(data: object) -> None:
    request, _ = _request_of(data)
    assert request is None


def test_a_worker_that_exited_is_not_waited_for() -> None:
    assert _alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert child.wait(30) == 0
    assert not _alive(child.pid)


def test_the_supervisor_keeps_the_latest_swap_of_each_plugin_oldest_first() -> None:
    state = PluginState()
    state.relayed(SWAP_TOPIC, {"plugin": "a", "operation": "reload", "expected_hash": "h1"})
    state.relayed(SWAP_TOPIC, {"plugin": "b", "operation": "unload", "cascade": True})
    state.relayed(
        SWAP_TOPIC, {"plugin": "a", "operation": "reload", "expected_hash": "h2", "force": True}
    )
    state.relayed("other.topic", {"plugin": "c", "operation": "load"})
    state.relayed(SWAP_TOPIC, {"plugin": "c", "operation": "drop"})
    state.relayed(SWAP_TOPIC, {"plugin": "x" * 65, "operation": "load"})
    state.relayed(SWAP_TOPIC, ["not", "a", "swap"])
    swaps = state.answer({})["swaps"]
    assert swaps == [
        {
            "plugin": "b",
            "operation": "unload",
            "expected_hash": "",
            "cascade": True,
            "force": False,
        },
        {
            "plugin": "a",
            "operation": "reload",
            "expected_hash": "h2",
            "cascade": False,
            "force": True,
        },
    ]


def test_the_first_worker_to_ask_sets_the_baseline() -> None:
    state = PluginState()
    first = state.answer({"a": "h1", "": "empty name", "b": 7})
    assert first["baseline"] == {"a": "h1"}
    assert state.answer({"a": "other"})["baseline"] == {"a": "h1"}
