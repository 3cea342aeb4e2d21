"""The compose topology for real, without containers: three `nexus serve --workers 2`
on one PostgreSQL and one Redis, behind the real HAProxy with the shipped
``deploy/compose/haproxy.cfg`` (moved to free loopback ports) and each instance on the
shipped ``deploy/compose/nexus.toml`` (``NEXUS_CONFIG``, the Redis URLs and the token
secret from the environment as compose gives them). One whole instance (its supervisor
and both workers) is killed with SIGKILL in the middle of a load of CreateOrder over
gRPC and REST.

What must hold afterwards:

- no acknowledged write is lost: every order a client was told exists (OK, or
  ALREADY_EXISTS when retrying its own idempotency key) is readable;
- no write appears that no client asked for;
- every OrderCreated took effect exactly once: inventory reserved one unit per order
  (its inbox holds one row per order), and the order ledger (a consumer group of its
  own) has each order once, including those whose event the killed instance had left
  in its outbox or had read without acknowledging;
- the calls that failed were the ones the balancer could not complete on the killed
  instance: gRPC UNAVAILABLE (HAProxy's 502/503) or a reset stream, REST 502/503, only
  after the kill, each retried with the same idempotency key until acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.auth import Grant, KeySet, Principal, TokenIssuer
from nexus_grpc.config import AuthConfig
from nexus_grpc.events.outbox import INBOX_COLLECTION
from nexus_grpc.testing import running_host
from tests.deploy.test_haproxy import (
    eventually_states,
    haproxy,
    haproxy_binary,
    local_config,
    server_states,
    server_stats,
)
from tests.e2e.conftest import BIN, REPO, ServeProcess
from tests.e2e.test_two_hosts import count, settled_ledger, wait_until
from tests.fixtures.ports import free_port
from tests.fixtures.redis import OwnRedis
from tests.fixtures.tcp_balancer import Backend, TcpBalancer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

COMPOSE_TOML = REPO / "deploy" / "compose" / "nexus.toml"
#: Worker processes per instance, as compose runs them: the killed instance takes its
#: workers with it.
WORKERS = 2
INSTANCES = 3
#: Client threads per transport, each with its own connection to the balancer.
CLIENTS = 3
#: Orders each client creates; the load also stops after LOAD_SECONDS.
ORDERS_PER_CLIENT = 40
LOAD_SECONDS = 12.0
#: The victim is killed once this many orders are acknowledged.
KILL_AFTER = 40
#: Attempts per order: the first, then retries with the same idempotency key.
ATTEMPTS = 8
SKU = "widget"
STOCK = 100_000
TEST_PLUGINS = REPO / "tests" / "e2e" / "plugins"
#: gRPC codes of a call the balancer could not complete on the killed instance: HAProxy
#: answers 502/503 (UNAVAILABLE to a gRPC client) or resets a stream already answered.
RETRYABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
RETRYABLE_HTTP = (502, 503)


@dataclass
class Load:
    """What the clients did: acknowledged ids, every id asked for, each failure."""

    acknowledged: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    #: (monotonic time, client, description) of each failed attempt.
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def acked(self, order_id: str) -> None:
        with self.lock:
            self.acknowledged.add(order_id)

    def failed(self, client: str, what: str) -> None:
        with self.lock:
            self.failures.append((time.monotonic(), client, what))


@dataclass
class Instance:
    """One compose instance: `nexus serve --workers` in a process group of its own."""

    serve: ServeProcess
    worker_pids: list[int]

    def kill(self) -> None:
        """SIGKILL to the supervisor and its workers at once, as a container dies.

        The supervisor's process group, then each worker: the supervisor starts its
        workers in sessions of their own, so the group alone does not reach them (a
        container's end does: it kills every process of its PID namespace).
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.serve.process.pid, signal.SIGKILL)
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.serve.process.wait(10)

    def close(self) -> None:
        self.kill()
        self.serve.close()


def start_instance(
    root: Path, probe_stubs: Path, secret_file: Path, postgres_url: str, redis_url: str
) -> Instance:
    """`nexus serve --workers` on the compose nexus.toml, with what compose.yaml puts in
    the environment (database and Redis URLs, the token secret), on free ports."""
    data_dir = root / "data"  # a volume per instance, as in compose.yaml
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(probe_stubs), os.environ.get("PYTHONPATH", "")]),
        "NEXUS_CONFIG": str(COMPOSE_TOML),
        "NEXUS_STORAGE__URL": postgres_url,
        "NEXUS_AUTH__SECRET_FILE": str(secret_file),
        "NEXUS_EVENTS__REDIS_URL": redis_url,
        "NEXUS_CACHE__REDIS_URL": redis_url,
        "NEXUS_LIMITS__REDIS_URL": redis_url,
        # Only what a machine without containers needs changed: ports, paths, the
        # test's ledger plugin, faster event redelivery, rate limits lifted for the load.
        "NEXUS_DATA_DIR": str(data_dir),
        "NEXUS_HTTP__ADDRESS": "127.0.0.1:0",
        "NEXUS_PLUGINS__DIRS": str(TEST_PLUGINS),
        "NEXUS_PLUGINS__ENTRY_POINTS": "false",
        "NEXUS_EVENTS__CLAIM_IDLE": "1.5",
        "NEXUS_EVENTS__RETRY_BACKOFF": "0.05",
        "NEXUS_EVENTS__OUTBOX_RELAY_AFTER": "1.0",
        "NEXUS_EVENTS__OUTBOX_POLL_INTERVAL": "0.2",
        "NEXUS_LIMITS__RATE_CLASSES__DEFAULT__RATE": "100000",
        "NEXUS_LIMITS__RATE_CLASSES__DEFAULT__BURST": "100000",
        "NEXUS_LOG__ACCESS": "false",
        "NEXUS_PLUGIN__ORDERS__PRICES__WIDGET": "100",
    }
    argv = ["serve", "--grpc-address", "127.0.0.1:0", "--workers", str(WORKERS)]
    process = subprocess.Popen(
        [str(BIN / "nexus"), *argv],
        cwd=REPO,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killed whole, like a container
    )
    serve = ServeProcess(process, data_dir=data_dir)

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            serve._lines.put(line)
        serve._lines.put(None)

    serve._reader = threading.Thread(target=pump, daemon=True)
    serve._reader.start()
    instance = Instance(serve, [])
    try:
        ready = serve.wait_for_log(
            lambda e: e.get("message", "").startswith("nexus workers serving on"), timeout=90
        )
    except BaseException:
        instance.close()
        raise
    serve.address = ready["grpc_address"]
    serve.http_address = ready["http_address"]
    instance.worker_pids = list(ready["worker_pids"])
    return instance


@pytest.fixture
def instances(
    tmp_path: Path, probe_stubs: Path, postgres_url: str, own_redis: OwnRedis
) -> Iterator[list[Instance]]:
    """INSTANCES compose instances sharing the database, Redis and one token secret."""
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_bytes(secrets.token_bytes(48))
    secret_file.chmod(0o600)

    def start(index: int) -> Instance:
        return start_instance(
            tmp_path / f"nexus-{index + 1}", probe_stubs, secret_file, postgres_url, own_redis.url
        )

    started = [start(0)]  # creates the schema before the others start
    try:
        with ThreadPoolExecutor(INSTANCES - 1) as pool:
            started.extend(pool.map(start, range(1, INSTANCES)))
        yield started
    finally:
        for instance in started:
            instance.close()


def admin_token(secret_file: Path) -> str:
    """An access token every instance accepts (signed with the shared secret)."""
    config = AuthConfig(secret_file=str(secret_file))
    keys = asyncio.run(KeySet.load(config, secret_file.parent))
    principal = Principal(subject="e2e-admin", grants=frozenset([Grant.parse("*.*:all")]))
    return TokenIssuer(keys, config).issue_access(principal)[0]


def new_order() -> orders_pb2.Order:
    return orders_pb2.Order(
        customer_id="c1",
        currency_code="EUR",
        items=[orders_pb2.LineItem(sku=SKU, quantity=1)],
    )


def grpc_client(name: str, address: str, token: str, load: Load) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    # A subchannel of its own: each client has its own connection to the balancer.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        orders = orders_pb2_grpc.OrdersServiceStub(channel)
        for n in range(ORDERS_PER_CLIENT):
            if load.stop.is_set():
                return
            order_id = f"{name}-{n}"
            with load.lock:
                load.attempted.add(order_id)
            request = orders_pb2.CreateOrderRequest(order=new_order(), order_id=order_id)
            for attempt in range(ATTEMPTS):
                try:
                    orders.CreateOrder(request, metadata=metadata, timeout=10)
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                    if attempt and code == grpc.StatusCode.ALREADY_EXISTS:
                        load.acked(order_id)  # the cut attempt had committed it
                        break
                    details = error.details() or ""  # type: ignore[attr-defined]
                    load.failed(name, f"{code.name} {details}")
                    if code not in RETRYABLE_GRPC:
                        load.unexpected.append(f"{order_id}: {code.name} {details}")
                        break
                    time.sleep(0.1)
                    continue
                load.acked(order_id)
                break


def rest_client(name: str, base_url: str, token: str, load: Load) -> None:
    body = {"customerId": "c1", "currencyCode": "EUR", "items": [{"sku": SKU, "quantity": 1}]}
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        for n in range(ORDERS_PER_CLIENT):
            if load.stop.is_set():
                return
            order_id = f"{name}-{n}"
            with load.lock:
                load.attempted.add(order_id)
            for attempt in range(ATTEMPTS):
                try:
                    answer = client.post("/v1/orders", params={"orderId": order_id}, json=body)
                except httpx.TransportError as error:
                    load.failed(name, type(error).__name__)
                    time.sleep(0.1)
                    continue
                if answer.status_code == 200 or (attempt and answer.status_code == 409):
                    load.acked(order_id)
                    break
                load.failed(name, str(answer.status_code))
                if answer.status_code not in RETRYABLE_HTTP:
                    load.unexpected.append(f"{order_id}: {answer.status_code} {answer.text}")
                    break
                time.sleep(0.1)


def all_orders(channel: grpc.Channel, token: str) -> dict[str, orders_pb2.Order]:
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    found: dict[str, orders_pb2.Order] = {}
    page_token = ""
    for _ in range(100):  # bounded: 100 pages of 1000 is far beyond this load
        page = stub.ListOrders(
            orders_pb2.ListOrdersRequest(page_size=1000, page_token=page_token),
            metadata=metadata,
            timeout=10,
        )
        found.update((order.id, order) for order in page.orders)
        page_token = page.next_page_token
        if not page_token:
            return found
    raise AssertionError("ListOrders never ended")


def test_an_instance_killed_under_load_loses_no_acknowledged_write_and_no_event(
    instances: list[Instance], tmp_path: Path, postgres_url: str, own_redis: OwnRedis
) -> None:
    haproxy_binary()
    servers = {
        f"nexus-{i + 1}": (
            int(instance.serve.address.rsplit(":", 1)[1]),
            int(instance.serve.http_address.rsplit(":", 1)[1]),
        )
        for i, instance in enumerate(instances)
    }
    binds = (free_port(), free_port())
    stats = tmp_path / "haproxy.sock"
    with haproxy(local_config(servers, binds, stats), tmp_path):
        every_up = {(px, sv): "UP" for sv in servers for px in ("nexus_grpc", "nexus_rest")}
        asyncio.run(eventually_states(stats, every_up, seconds=20))
        token = admin_token(tmp_path / "jwt-secret")
        grpc_address = f"127.0.0.1:{binds[0]}"
        with grpc.insecure_channel(grpc_address) as channel:
            inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
            inventory.SetStock(
                inventory_pb2.SetStockRequest(sku=SKU, available=STOCK),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        load = Load()
        clients = [
            threading.Thread(target=grpc_client, args=(f"g{i}", grpc_address, token, load))
            for i in range(CLIENTS)
        ] + [
            threading.Thread(
                target=rest_client, args=(f"r{i}", f"http://127.0.0.1:{binds[1]}", token, load)
            )
            for i in range(CLIENTS)
        ]
        started = time.monotonic()
        for client in clients:
            client.start()
        while len(load.acknowledged) < KILL_AFTER and time.monotonic() - started < LOAD_SECONDS:
            time.sleep(0.01)
        # The victim served both transports' calls (HAProxy balances each call).
        victim_name = "nexus-2"
        before = server_stats(stats)
        assert all(
            int(before[(px, victim_name)]["stot"]) > 0 for px in ("nexus_grpc", "nexus_rest")
        )
        victim = instances[1]
        killed_at = time.monotonic()
        victim.kill()
        # The whole instance is gone, workers included (SIGKILL takes effect at once;
        # init reaps the orphans within moments).
        deadline = time.monotonic() + 5
        while any(map(_alive, victim.worker_pids)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(_alive, victim.worker_pids)), victim.worker_pids
        # Load goes on against the survivors, then stops (bounded in time).
        for client in clients:
            client.join(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
        load.stop.set()
        for client in clients:
            client.join(15)
            assert not client.is_alive()
        # The balancer takes the dead instance out after `fall 2` failed checks `inter 2s`
        # apart: wait for it (bounded) rather than assume the load lasted that long.
        deadline = time.monotonic() + 10
        after = server_states(stats)
        while not after[("nexus_grpc", victim_name)].startswith("DOWN"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
            after = server_states(stats)

        assert load.unexpected == [], load.unexpected
        # Failures: only after the kill, each retried until acknowledged.
        assert all(at >= killed_at for at, _, _ in load.failures), load.failures
        assert load.acknowledged == load.attempted
        assert len(load.acknowledged) > KILL_AFTER  # the load went on after the kill
        assert after[("nexus_grpc", victim_name)].startswith("DOWN")

        with grpc.insecure_channel(grpc_address) as channel:
            stored = all_orders(channel, token)
            # No acknowledged write lost; nothing nobody asked for.
            assert set(stored) == load.acknowledged

            def settled() -> bool:
                current = all_orders(channel, token)
                return all(o.status != orders_pb2.ORDER_STATUS_PENDING for o in current.values())

            wait_until(settled, seconds=30)
            stored = all_orders(channel, token)
            assert {o.status for o in stored.values()} == {orders_pb2.ORDER_STATUS_CONFIRMED}
            stock = inventory_pb2_grpc.InventoryServiceStub(channel).GetStock(
                inventory_pb2.GetStockRequest(sku=SKU),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        # One reservation per order, whichever instance handled its event.
        assert (stock.reserved, stock.available) == (len(stored), STOCK - len(stored))
        assert count(postgres_url, "plugins/business/inventory", INBOX_COLLECTION) == len(stored)
        assert settled_ledger(postgres_url, own_redis.url) == sorted(stored)
        print(  # shown with -s: what the run did
            f"orders={len(stored)} failed_attempts={len(load.failures)} "
            f"failures={sorted({what for _, _, what in load.failures})} "
            f"calls_per_server={[(k, v['stot']) for k, v in before.items()]} "
            f"load_seconds={time.monotonic() - started:.1f}"
        )


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_the_balancer_skips_a_backend_that_is_not_ready(tmp_path: Path) -> None:
    # A backend whose ports are closed is never in rotation and never connected to.
    closed = Backend("closed", {"grpc": free_port(), "http": free_port()})
    async with running_host(data_dir=tmp_path, plugins=["orders"], http=True) as host:
        live = Backend(
            "live",
            {
                "grpc": int(host.address.rsplit(":", 1)[1]),
                "http": int(host.http_url.rsplit(":", 1)[1]),
            },
        )
        balancer = TcpBalancer([closed, live])
        await asyncio.to_thread(balancer.start)  # it checks /readyz of this loop's host
        try:
            assert balancer.healthy() == ["live"]
            async with httpx.AsyncClient(base_url=f"http://{balancer.address('http')}") as client:
                for _ in range(4):
                    assert (await client.get("/readyz")).status_code == 200
            assert closed.connections == {}
            assert live.connections == {"http": 1}  # one kept-alive connection
        finally:
            await asyncio.to_thread(balancer.close)
