"""``/healthz`` and ``/readyz`` on the HTTP port, against real hosts.

Ready, then not ready for each real cause: PostgreSQL refusing writes, the
Redis event bus stopped, a drain begun; liveness stays up through all of them. The
probes answer without a token and under a rate limit that refuses every other call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc.config import EventsConfig, LimitsConfig, ServerConfig, StorageConfig
from nexus_grpc.gateway.probes import Probes, ReadinessSources
from nexus_grpc.testing import running_host
from nexus_grpc.transport import health as health_module
from nexus_grpc.transport.health import HealthState
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.redis import OwnRedis

REPO = Path(__file__).resolve().parents[2]
PLUGINS = ["orders", "inventory"]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_probes_answer_without_a_token_and_beyond_the_rate_limit(tmp_path: Path) -> None:
    # One call per second per client: the probes must not count against it.
    limits = LimitsConfig(rate_classes={"default": {"rate": 1, "burst": 1}})
    async with (
        running_host(
            plugins=PLUGINS,
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path,
            http=True,
            limits=limits,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        for _ in range(20):
            ready = await client.get("/readyz")
            alive = await client.get("/healthz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready"}
            assert alive.status_code == 200
            assert alive.json() == {"status": "alive"}
        assert ready.headers["content-type"] == "application/json"
        assert ready.headers["cache-control"] == "no-store"
        head = await client.head("/readyz")
        assert head.status_code == 200
        assert head.content == b""
        # Another route of the same host is rate limited (and needs a token): the
        # probes went around both.
        token = {"authorization": f"Bearer {host.token()}"}
        codes = [(await client.get("/v1/stock/PEN-1", headers=token)).status_code for _ in range(5)]
        assert 429 in codes
        assert (await client.get("/v1/stock/PEN-1")).status_code == 401


async def test_readyz_names_the_storage_while_postgres_refuses_writes(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    async with (
        running_host(
            plugins=PLUGINS,
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path,
            storage_url=postgres_url,
            http=True,
            storage=StorageConfig(probe_interval=0.05),
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        _read_only(postgres_server, database, on=True)
        try:
            # No call has to fail first: readiness probes the storage (a write) itself.
            await asyncio.sleep(0.1)  # past the probe interval: a fresh probe
            answer = await client.get("/readyz")
            assert answer.status_code == 503
            assert answer.json() == {
                "status": "not ready",
                "checks": {"storage": "unreachable"},
            }
            assert (await client.get("/healthz")).status_code == 200
        finally:
            _read_only(postgres_server, database, on=False)

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready)


def _read_only(server: PostgresServer, database: str, *, on: bool) -> None:
    server.psql(
        f'ALTER DATABASE "{database}" SET default_transaction_read_only = {"on" if on else "off"}'
    )
    server.psql(  # the setting applies to new sessions: cut the pooled ones
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


async def test_readyz_names_the_event_bus_while_redis_is_down(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    events = EventsConfig(backend="redis", redis_url=own_redis.url, retry_backoff=0.05)
    async with (
        running_host(
            plugins=PLUGINS,
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path,
            http=True,
            events=events,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        health = health_pb2_grpc.HealthStub(host.channel())
        assert (await client.get("/readyz")).status_code == 200
        assert await _status(health, "nexus.readiness") == SERVING
        own_redis.stop()

        async def names_the_bus() -> bool:
            answer = await client.get("/readyz")
            return answer.status_code == 503 and answer.json()["checks"] == {
                "events": "unreachable"
            }

        await eventually(names_the_bus)
        # The gRPC port agrees with /readyz; liveness stays up on both.
        assert await _status(health, "nexus.readiness") == NOT_SERVING
        assert await _status(health, "nexus.liveness") == SERVING
        assert (await client.get("/healthz")).status_code == 200
        own_redis.start()

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, seconds=30)
        assert await _status(health, "nexus.readiness") == SERVING


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(health: health_pb2_grpc.HealthStub, service: str) -> int:
    reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def test_readyz_turns_503_first_when_the_drain_starts(tmp_path: Path) -> None:
    # shutdown_delay: the ports stay open while readiness already says "draining".
    server = ServerConfig(shutdown_delay=1.5)
    async with (
        running_host(
            plugins=PLUGINS,
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path,
            http=True,
            server=server,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        stopping = asyncio.ensure_future(host.host.stop())
        try:
            answer = await client.get("/readyz")
            assert answer.status_code == 503
            assert answer.json() == {"status": "not ready", "checks": {"host": "draining"}}
            # Liveness: the process is fine, it must not be restarted mid-drain.
            assert (await client.get("/healthz")).status_code == 200
            health = health_pb2_grpc.HealthStub(host.channel())
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _status(health, "nexus.readiness") == NOT_SERVING
            # Liveness: SERVING while the event loop runs, through the drain.
            assert await _status(health, "nexus.liveness") == SERVING
        finally:
            await stopping


async def test_readyz_reports_a_failed_plugin_but_stays_ready_without_strict(
    tmp_path: Path,
) -> None:
    # plugins.strict = false means "serve without it": the orchestrator must not take
    # the instance out of rotation for it, but the body says what is missing.
    broken = tmp_path / "plugins" / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.toml").write_text('name = "broken"\nversion = [\n')  # not TOML
    async with (
        running_host(
            plugin_dirs=[tmp_path / "plugins", REPO / "plugins"],
            plugins=["broken", "orders"],
            data_dir=tmp_path / "data",
            http=True,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as client,
    ):
        record = host.host.plugins.record("broken")
        assert record is not None and record.state == "FAILED"
        answer = await client.get("/readyz")
        assert answer.status_code == 200
        assert answer.json() == {"status": "ready", "degraded": {"plugin broken": "failed"}}
        health = health_pb2_grpc.HealthStub(host.channel())
        assert await _status(health, "nexus.readiness") == SERVING
        assert (await client.get("/healthz")).status_code == 200


async def test_readiness_under_strict_plugins_counts_a_failed_plugin() -> None:
    # Under plugins.strict a plugin that fails after start (a reload) makes the host not
    # ready; the start itself refuses to complete with a failed plugin.
    health = HealthState()
    await health.set("", True)
    await health.set("orders.v1.OrderService", False)
    records = [("orders", "FAILED", ("orders.v1.OrderService",))]

    def sources(strict: bool) -> ReadinessSources:
        return ReadinessSources(
            health=health,
            draining=lambda: False,
            plugins=lambda: records,
            storage_probe=lambda: None,
            strict_plugins=strict,
        )

    strict = await Probes(sources(True)).answer("/readyz")
    assert strict.status == 503
    assert json.loads(strict.body) == {
        "status": "not ready",
        "checks": {"plugin orders": "failed", "service orders.v1.OrderService": "not serving"},
    }
    lenient = await Probes(sources(False)).answer("/readyz")
    assert lenient.status == 200
    assert json.loads(lenient.body)["degraded"] == {
        "plugin orders": "failed",
        "service orders.v1.OrderService": "not serving",
    }


@contextlib.asynccontextmanager
async def watched_readiness(
    check: Callable[[], Awaitable[bool]],
) -> AsyncIterator[tuple[HealthState, health_pb2_grpc.HealthStub]]:
    """``check`` as the computed nexus.readiness of a HealthState served by a real
    grpc.aio server, and a client of it; shut down at the end."""
    health = HealthState()
    await health.compute("nexus.readiness", check)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield health, health_pb2_grpc.HealthStub(channel)
    finally:
        await server.stop(None)
        await health.shut_down()


READINESS = health_pb2.HealthCheckRequest(service="nexus.readiness")


async def test_a_watcher_of_readiness_learns_when_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gRPC client-side health checking and balancers Watch rather than Check: a computed
    # service (readiness) must reach them when it changes, not only on someone's Check.
    monkeypatch.setattr(health_module, "REFRESH_INTERVAL", 0.05)
    ready = True

    async def check() -> bool:
        return ready

    async with watched_readiness(check) as (health, stub):
        watch = stub.Watch(READINESS)
        seen = [(await watch.read()).status]
        ready = False
        seen.append((await asyncio.wait_for(watch.read(), 5)).status)
        ready = True
        seen.append((await asyncio.wait_for(watch.read(), 5)).status)
        assert seen == [SERVING, NOT_SERVING, SERVING]
        watch.cancel()
        # Nobody watches any more: the evaluation on a clock stops.
        await asyncio.wait_for(health._refreshing["nexus.readiness"], 5)


async def test_a_watched_check_that_fails_says_not_serving_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(health_module, "REFRESH_INTERVAL", 0.02)
    failing = False

    async def check() -> bool:
        if failing:
            raise RuntimeError("probe bug")
        return True

    async with watched_readiness(check) as (_, stub):
        watch = stub.Watch(READINESS)
        assert (await watch.read()).status == SERVING
        failing = True
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        # A second watcher is told the same, not failed with UNKNOWN.
        second = stub.Watch(READINESS)
        assert (await asyncio.wait_for(second.read(), 5)).status == NOT_SERVING
        await asyncio.sleep(0.2)  # several evaluations, still failing
        failing = False
        assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        watch.cancel()
        second.cancel()
    failures = [r for r in caplog.records if "evaluating the health" in r.getMessage()]
    assert len(failures) == 1, failures


async def test_a_watch_after_shutdown_revives_no_status() -> None:
    async def check() -> bool:
        return True

    health = HealthState()
    await health.compute("nexus.liveness", check)
    await health.shut_down()
    await health.refresh("nexus.liveness")  # what a Watch arriving now would do
    assert health.is_serving("nexus.liveness") is False
    assert not health._refreshing
