"""Background tasks started from inside a call do not carry the call's trace or request id."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nexus_grpc import tracing
from nexus_grpc.events._redis_health import Health
from nexus_grpc.logs import request_id_var
from nexus_grpc.storage.faults import StorageHealth
from tests.tracing.conftest import Spans

_probe_log = logging.getLogger("nexus.test.probe")


async def test_the_storage_probe_started_by_a_failing_call_has_no_trace_nor_request_id(
    spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0
    recovered = asyncio.Event()
    told: list[bool] = []

    async def probe() -> None:
        nonlocal attempts
        attempts += 1
        _probe_log.info("probing")
        if attempts < 2:
            raise OSError("still down")

    async def listener(healthy: bool) -> None:
        _probe_log.info("told %s", healthy)
        told.append(healthy)
        if healthy:
            recovered.set()

    health = StorageHealth(probe)
    health.on_change(listener)
    health.start_probing(interval=0.01, timeout=1.0)
    caplog.set_level(logging.DEBUG)
    token = request_id_var.set("req-of-the-failing-call")
    try:
        with tracing.tracer().start_as_current_span("call"):
            health.report("disk full")  # starts the probe from inside the call
    finally:
        request_id_var.reset(token)
    try:
        await asyncio.wait_for(recovered.wait(), 5)
    finally:
        await health.close()
    assert told == [False, True]
    background = [
        r
        for r in caplog.records
        if r.name == "nexus.test.probe" or r.getMessage() == "storage available again"
    ]
    assert len(background) >= 4  # two probes, two notifications, the recovery
    for record in background:
        assert not getattr(record, "trace_id", None), record.getMessage()
        assert getattr(record, "request_id", "") == "", record.getMessage()


async def test_the_event_bus_probe_started_by_a_failing_call_has_no_trace_nor_request_id(
    spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    pings = 0

    async def ping() -> None:
        nonlocal pings
        pings += 1
        _probe_log.info("pinging")
        if pings < 2:
            raise OSError("still down")

    health = Health(ping)
    caplog.set_level(logging.DEBUG)
    token = request_id_var.set("req-of-the-failing-call")
    try:
        with tracing.tracer().start_as_current_span("publish"):
            await health.failed(OSError("down"), health.mark())  # starts the probe
    finally:
        request_id_var.reset(token)
    try:
        for _ in range(200):
            if health.healthy:
                break
            await asyncio.sleep(0.02)
    finally:
        await health.close()
    assert health.healthy
    background = [
        r
        for r in caplog.records
        if r.name == "nexus.test.probe" or r.getMessage() == "event bus reaches Redis again"
    ]
    assert len(background) >= 3  # two pings and the recovery
    for record in background:
        assert not getattr(record, "trace_id", None), record.getMessage()
        assert getattr(record, "request_id", "") == "", record.getMessage()
