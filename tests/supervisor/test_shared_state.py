"""What each process would keep to itself, right with two workers: one /metrics,
rate limits across workers, SQLite written by both, revocation seen by both, one audit
log, a dead worker replaced, SIGTERM draining both.

One `nexus serve --workers 2` for the module (SQLite, Redis for limits, events and
cache). Calls go on fresh connections, which the kernel spreads over both workers.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.redis import RedisServer
from tests.supervisor.conftest import Workers, start_workers, until, workers_config

pytestmark = pytest.mark.e2e

#: The login rate class made small: 5 attempts per address, no refill during a test.
LOGIN_BURST = 5
ORDER = {
    "customerId": "c1",
    "currencyCode": "EUR",
    "items": [{"sku": "BOOK-1", "quantity": 1, "unitPriceCents": "1250"}],
}


@pytest.fixture(scope="module")
def host(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    tmp_path = tmp_path_factory.mktemp("workers")
    # A database of its own on the session's Redis, emptied first.
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/7"
    redis_server.command("SELECT", "7")
    config = workers_config(
        tmp_path / "nexus.toml",
        redis_url,
        f"""
[limits.rate_classes.login]
rate = 0.001
burst = {LOGIN_BURST}
[server]
shutdown_delay = 1.0
""",
    )
    # The access log says which worker (pid) answered each call.
    running = start_workers(tmp_path, config, NEXUS_LOG__ACCESS="true")
    try:
        yield running
    finally:
        running.close()


def on_every_worker(host: Workers, call: Callable[[httpx.Client], None], tries: int = 40) -> None:
    """``call(client)`` on new connections until every worker ran it (at most ``tries``).

    Which worker a connection reaches is learnt first, on the same connection: a call
    with a request id of ours, which that worker's access log line names with its pid
    (a refused call has no access log line of its own).
    """
    seen: set[int] = set()
    for _ in range(tries):
        marker = uuid.uuid4().hex
        with httpx.Client(base_url=f"http://{host.http_address}", timeout=10) as client:
            headers = {"authorization": f"Bearer {host.token()}", "x-request-id": marker}
            assert client.get("/v1/auth/me", headers=headers).status_code == 200
            call(client)
        seen.add(host.wait_for_log(lambda e, m=marker: e.get("request_id") == m)["pid"])
        if seen >= set(host.worker_pids):
            return
    raise AssertionError(f"only workers {seen} of {host.worker_pids} reached in {tries} tries")


def health_check(address: str) -> int:
    """One health Check on a connection of its own; the status."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return int(reply.status)


def scrape(host: Workers) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one /metrics scrape, by name and labels."""
    text = httpx.get(f"http://{host.http_address}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


CHECKS = (
    "grpc_server_handled_total",
    (
        ("grpc_code", "OK"),
        ("grpc_method", "Check"),
        ("grpc_service", "grpc.health.v1.Health"),
        ("grpc_type", "unary"),
        ("plugin", "nexus"),
        ("transport", "grpc"),
    ),
)
WORKERS = ("nexus_workers", ())


def test_one_scrape_reports_the_sum_over_workers(host: Workers) -> None:
    before = scrape(host).get(CHECKS, 0.0)
    for _ in range(30):
        assert health_check(host.address) == health_pb2.HealthCheckResponse.SERVING
    # The worker answering writes its own numbers at once, the other within a second.
    until(lambda: scrape(host).get(CHECKS) == before + 30)
    samples = scrape(host)
    assert samples[WORKERS] == 2
    # go-grpc-prometheus names and labels, one series per label set (not per worker).
    histogram = tuple(label for label in CHECKS[1] if label[0] != "grpc_code")
    assert samples[("grpc_server_handling_seconds_count", histogram)] >= before + 30
    assert (
        samples[
            ("grpc_server_handling_seconds_bucket", tuple(sorted((*histogram, ("le", "+Inf")))))
        ]
        >= before + 30
    )


def test_the_rate_limit_holds_across_workers(host: Workers) -> None:
    """Login's rate class allows LOGIN_BURST attempts per address in all: a limiter per
    worker would let each worker's share through."""

    def attempt(number: int) -> int:
        # Its own address (127.0.0.3), so other tests' logins do not share the bucket.
        transport = httpx.HTTPTransport(local_address="127.0.0.3")
        with httpx.Client(transport=transport, timeout=10) as client:
            reply = client.post(
                f"http://{host.http_address}/v1/auth/login",
                json={"username": f"nobody-{number}", "password": "not-the-password"},
            )
            return reply.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(attempt, range(20)))
    assert sorted(statuses) == [401] * LOGIN_BURST + [429] * (20 - LOGIN_BURST)


def test_sqlite_keeps_every_write_of_both_workers(host: Workers) -> None:
    headers = {"authorization": f"Bearer {host.token()}"}

    def create(batch: int) -> list[str]:
        # One keep-alive connection per batch: the batches land on both workers.
        with httpx.Client(base_url=f"http://{host.http_address}", headers=headers) as client:
            created = []
            for _ in range(15):
                reply = client.post("/v1/orders", json=ORDER, timeout=30)
                assert reply.status_code == 200, reply.text
                created.append(reply.json()["id"])
            return created

    with ThreadPoolExecutor(16) as pool:
        ids = [order_id for batch in pool.map(create, range(16)) for order_id in batch]
    assert len(set(ids)) == 16 * 15
    with httpx.Client(base_url=f"http://{host.http_address}", headers=headers) as client:
        for order_id in ids:
            reply = client.get(f"/v1/orders/{order_id}", timeout=30)
            assert reply.status_code == 200, reply.text


def test_revoked_sessions_are_refused_by_every_worker(host: Workers) -> None:
    base = f"http://{host.http_address}"
    admin = {"authorization": f"Bearer {host.token()}"}
    password = "correct horse battery"
    created = httpx.post(
        f"{base}/v1/users",
        json={"user": {"username": "rita"}, "password": password},
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 200, created.text
    login = httpx.post(
        f"{base}/v1/auth/login", json={"username": "rita", "password": password}, timeout=10
    )
    assert login.status_code == 200, login.text
    rita = {"authorization": f"Bearer {login.json()['accessToken']}"}

    def statuses() -> list[int]:
        # Each on a new connection, so both workers answer some.
        return [
            httpx.get(f"{base}/v1/auth/me", headers=rita, timeout=10).status_code for _ in range(12)
        ]

    assert statuses() == [200] * 12
    revoked = httpx.post(f"{base}/v1/auth/me:revokeSessions", json={}, headers=rita, timeout=10)
    assert revoked.status_code == 200, revoked.text
    # The revocation travels to the other worker on the cache's Redis channel.
    until(lambda: statuses() == [401] * 12, seconds=5)

    def refused(client: httpx.Client) -> None:
        reply = client.get("/v1/auth/me", headers=rita)
        assert reply.status_code == 401, reply.text

    # Both workers refused it (not one worker answering every call).
    on_every_worker(host, refused)


def test_a_disabled_user_is_refused_by_every_worker(host: Workers) -> None:
    base = f"http://{host.http_address}"
    admin = {"authorization": f"Bearer {host.token()}"}
    password = "correct horse battery"
    created = httpx.post(
        f"{base}/v1/users",
        json={"user": {"username": "dora"}, "password": password},
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 200, created.text
    login = httpx.post(
        f"{base}/v1/auth/login", json={"username": "dora", "password": password}, timeout=10
    )
    assert login.status_code == 200, login.text
    dora = {"authorization": f"Bearer {login.json()['accessToken']}"}

    def allowed(client: httpx.Client) -> None:
        assert client.get("/v1/auth/me", headers=dora).status_code == 200

    on_every_worker(host, allowed)
    disabled = httpx.post(f"{base}/v1/users/dora:disable", json={}, headers=admin, timeout=10)
    assert disabled.status_code == 200, disabled.text

    def refused(client: httpx.Client) -> None:
        reply = client.get("/v1/auth/me", headers=dora)
        assert reply.status_code == 401, reply.text

    until(lambda: httpx.get(f"{base}/v1/auth/me", headers=dora, timeout=10).status_code == 401)
    on_every_worker(host, refused)


def test_the_audit_log_is_one_view(host: Workers) -> None:
    """Denials audited by either worker, listed the same by both."""
    base = f"http://{host.http_address}"
    nobody = {"authorization": f"Bearer {host.token(subject='snoop', grants=())}"}
    for _ in range(6):  # new connections: both workers refuse some
        assert httpx.get(f"{base}/v1/admin/audit", headers=nobody, timeout=10).status_code == 403
    admin = {"authorization": f"Bearer {host.token()}"}

    def snoop_denials() -> list[str]:
        reply = httpx.get(f"{base}/v1/admin/audit?actor=snoop", headers=admin, timeout=10)
        assert reply.status_code == 200, reply.text
        return [
            r["id"] for r in reply.json().get("records", []) if r["outcome"] == "OUTCOME_DENIED"
        ]

    views = [snoop_denials() for _ in range(6)]
    assert len(views[0]) == 6
    assert all(view == views[0] for view in views)

    def listed(client: httpx.Client) -> None:
        reply = client.get("/v1/admin/audit?actor=snoop", headers=admin)
        assert reply.status_code == 200, reply.text
        records = reply.json().get("records", [])
        assert [r["id"] for r in records if r["outcome"] == "OUTCOME_DENIED"] == views[0]

    # Every worker lists them, the same.
    on_every_worker(host, listed)


def test_a_killed_worker_is_replaced_and_counters_do_not_go_back(host: Workers) -> None:
    for _ in range(10):
        health_check(host.address)
    until(lambda: scrape(host).get(CHECKS, 0) >= 40)
    before = scrape(host)[CHECKS]
    victim = host.worker_pids[1]
    os.kill(victim, signal.SIGKILL)
    host.wait_for_log(lambda e: e.get("pid") == victim and "died" in e.get("message", ""))
    host.wait_for_log(
        lambda e: (
            e.get("message", "").startswith("worker 1 (pid")
            and "serving" in e["message"]
            and str(victim) not in e["message"]
        ),
        timeout=30,
    )
    # A dead worker's counts stay in the sums; its live gauges are gone.
    samples = scrape(host)
    assert samples[CHECKS] >= before
    assert samples[WORKERS] == 2
    for _ in range(10):
        assert health_check(host.address) == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_turns_every_worker_not_serving_then_drains(host: Workers) -> None:
    """Last in this module: it stops the host."""
    host.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # Within server.shutdown_delay both workers still answer, NOT_SERVING.
    statuses = {health_check(host.address) for _ in range(8)}
    assert statuses == {health_pb2.HealthCheckResponse.NOT_SERVING}
    assert host.process.wait(30) == 0
    host.wait_for_log(lambda e: e.get("message") == "nexus workers stopped")
    stopped = [e for e in host.logs if e.get("message") == "nexus stopped"]
    assert len(stopped) == 2
