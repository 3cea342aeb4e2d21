"""The access log and the audit log tell the truth (issue 9, class 17).

The access log names codes as the metrics' ``grpc_code`` label does (never a bare
number); a call below a public method that fails for any reason but authentication is
not audited as an authentication denial; the audit flood guard sums up in the log
instead of writing a line per suppressed record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from probe.v1 import probe_pb2

from nexus_grpc.access.audit import AuditLog, Outcome
from nexus_grpc.pipeline.codes import code_label
from nexus_grpc.testing import RunningHost, running_host
from tests.security.conftest import PROBE_DIR, REPO
from tests.storage import connected

MISSING = "/probe.v1.ProbeService/Missing"
CRASH = "/probe.v1.ProbeService/Crash"


@pytest.fixture
async def logged_host(tmp_path: Path, probe_stubs: Path) -> AsyncIterator[RunningHost]:
    async with running_host(
        plugins=["orders", "auth", "probe"],
        plugin_dirs=[REPO / "plugins", PROBE_DIR],
        data_dir=tmp_path,
        http=True,
        access_log=True,
    ) as host:
        yield host


async def _call(host: RunningHost, path: str, request: Any) -> grpc.StatusCode:
    call = host.channel().unary_unary(
        path, request_serializer=type(request).SerializeToString, response_deserializer=bytes
    )
    try:
        await call(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _access_codes(caplog: pytest.LogCaptureFixture, path: str) -> list[str]:
    return [
        getattr(r, "code", "")
        for r in caplog.records
        if r.name == "nexus.access" and getattr(r, "method", "") == path
    ]


async def test_the_access_log_names_codes_as_the_metrics_do(
    logged_host: RunningHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.access")
    assert await _call(logged_host, MISSING, probe_pb2.MissingRequest()) == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    assert await _call(logged_host, CRASH, probe_pb2.CrashRequest(secret="s")) == (
        grpc.StatusCode.INTERNAL
    )
    async with httpx.AsyncClient(base_url=logged_host.http_url, timeout=10) as http:
        await http.post(
            MISSING, content=b"\0\0\0\0\0", headers={"content-type": "application/grpc-web+proto"}
        )
    assert _access_codes(caplog, MISSING) == ["Unimplemented", "Unimplemented"]
    assert _access_codes(caplog, CRASH) == ["Internal"]
    lines = [r.getMessage() for r in caplog.records if r.name == "nexus.access"]
    assert f"{MISSING} {code_label(grpc.StatusCode.UNIMPLEMENTED)}" in lines


async def _denials(host: RunningHost) -> list[admin_pb2.AuditRecord]:
    admin = admin_pb2_grpc.AdminServiceStub(host.channel(host.token("root")))
    page = await admin.ListAuditRecords(
        admin_pb2.ListAuditRecordsRequest(action="call.denied", page_size=1000)
    )
    return list(page.records)


async def test_a_public_method_failing_below_is_not_an_authentication_denial(
    logged_host: RunningHost,
) -> None:
    # Unimplemented (a StatusError from below the auth stage) and a crash, without a
    # token, over gRPC and gRPC-Web: neither is a denial.
    assert await _call(logged_host, MISSING, probe_pb2.MissingRequest()) == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    assert await _call(logged_host, CRASH, probe_pb2.CrashRequest()) == grpc.StatusCode.INTERNAL
    async with httpx.AsyncClient(base_url=logged_host.http_url, timeout=10) as http:
        await http.post(
            MISSING, content=b"\0\0\0\0\0", headers={"content-type": "application/grpc-web+proto"}
        )
        # A bad token on the same public method is a denial, and is audited.
        await http.post(
            MISSING,
            content=b"\0\0\0\0\0",
            headers={"content-type": "application/grpc-web+proto", "authorization": "Bearer junk"},
        )
    denials = await _denials(logged_host)
    assert [(r.target, r.outcome) for r in denials] == [(MISSING, Outcome.DENIED)]


async def test_a_flood_of_bad_tokens_logs_one_line_not_one_per_denial(
    logged_host: RunningHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.audit")
    async with httpx.AsyncClient(base_url=logged_host.http_url, timeout=10) as http:
        for _ in range(80):
            response = await http.get("/v1/orders/x", headers={"authorization": "Bearer junk"})
            assert response.status_code == 401
    warnings = [
        r for r in caplog.records if r.name == "nexus.audit" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "suppressed" in warnings[0].getMessage()


class _Peer:
    """The one thing AuditLog.record reads of a call context besides its transport."""

    transport = "grpc"

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def test_the_flood_guard_sums_up_per_window_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.audit")
    async with connected(f"sqlite+aiosqlite:///{tmp_path}/audit.db") as storage:
        audit = AuditLog(storage.namespace("core/audit"), per_peer_limit=2, window=1.0)

        async def deny(peer: str) -> None:
            await audit.record(
                actor="anonymous",
                action="call.denied",
                target="/x",
                outcome=Outcome.DENIED,
                context=_Peer(peer),
                throttle=True,
            )

        for _ in range(12):
            await deny("ipv4:10.0.0.1:1")
        # Past the window: the next suppressed record brings the summary of the window.
        await asyncio.sleep(1.1)
        await deny("ipv4:10.0.0.1:1")  # allowed again: a new window of this peer
        await deny("ipv4:10.0.0.1:1")
        await deny("ipv4:10.0.0.1:1")  # suppressed: the summary is due
        messages = [
            r.getMessage()
            for r in caplog.records
            if r.name == "nexus.audit" and r.levelno >= logging.WARNING
        ]
        assert len(messages) == 2, messages
        assert "suppressed (flood)" in messages[0]
        assert messages[1].startswith("11 audit records of denied calls suppressed"), messages
