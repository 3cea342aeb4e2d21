"""The compose balancer's own configuration (``deploy/compose/haproxy.cfg``), run by a
real HAProxy in front of a real host.

The file is used as shipped but for what only exists inside compose: its listeners move
to free loopback ports, the servers' names to loopback addresses (one live host, two
closed ports), Docker's DNS resolver goes, and a stats socket is added to read the
servers' states. Then: HAProxy accepts the file (``haproxy -c``); its health checks
(``/readyz``) take the dead servers out; gRPC (HTTP/2 cleartext to the backend) and REST
calls pass through it; and on SIGTERM the host turns not-ready soon enough that HAProxy
takes it out of rotation while it still serves (compose's ``shutdown_delay`` against
HAProxy's check interval and ``fall``). Its gRPC frontend forwards each client's
address (``option forwardfor``), which the instances believe from the balancer only
(``server.trusted_proxies``): two clients behind it have separate rate-limit buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc
from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

from nexus_grpc.config import LimitsConfig, ServerConfig, load_config
from nexus_grpc.testing import RunningHost, running_host
from tests.e2e.conftest import REPO, missing
from tests.fixtures.ports import free_port
from tests.fixtures.tcp_balancer import Backend, TcpBalancer

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
HAPROXY_CFG = DEPLOY / "compose" / "haproxy.cfg"
COMPOSE_CONFIG = load_config(DEPLOY / "compose" / "nexus.toml", environ={})
GRPC_PORT = int(COMPOSE_CONFIG.server.grpc_address.rsplit(":", 1)[1])
HTTP_PORT = int(COMPOSE_CONFIG.http.address.rsplit(":", 1)[1])


def haproxy_binary() -> str:
    found = shutil.which("haproxy")
    if found is None:
        missing("haproxy")
    assert found is not None
    return found


def local_config(servers: dict[str, tuple[int, int]], binds: tuple[int, int], stats: Path) -> str:
    """haproxy.cfg for this machine: ``servers`` maps a server name to the (gRPC, HTTP)
    ports standing in for it; ``binds`` are the (gRPC, HTTP) listener ports."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"^resolvers docker\n(?:[ \t]+.*\n)*", "", text, flags=re.MULTILINE)
    text = text.replace(" resolvers docker", "")
    text = text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)
    text = re.sub(
        rf"^(\s*)bind :{GRPC_PORT}\b", rf"\g<1>bind 127.0.0.1:{binds[0]}", text, flags=re.M
    )
    text = re.sub(
        rf"^(\s*)bind :{HTTP_PORT}\b", rf"\g<1>bind 127.0.0.1:{binds[1]}", text, flags=re.M
    )
    # Any other listener (the balancer's own monitor): a free port too.
    text = re.sub(
        r"^(\s*)bind :(\d+)\b",
        lambda m: f"{m.group(1)}bind 127.0.0.1:{free_port()}",
        text,
        flags=re.M,
    )
    lines = []
    for line in text.splitlines():
        found = re.match(r"^(\s*server (\S+) )(\S+):(\d+)(.*)$", line)
        if found:
            prefix, name, _, port, rest = found.groups()
            grpc_port, http_port = servers[name]
            target = grpc_port if int(port) == GRPC_PORT else http_port
            rest = rest.replace(f"check port {HTTP_PORT}", f"check port {http_port}")
            line = f"{prefix}127.0.0.1:{target}{rest}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def server_stats(stats: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(backend, server) -> HAProxy's ``show stat`` row (status, stot, ...)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {
        (row["pxname"], row["svname"]): row
        for row in rows
        if row["svname"] not in ("FRONTEND", "BACKEND")
    }


def server_states(stats: Path) -> dict[tuple[str, str], str]:
    """(backend, server) -> status (UP, DOWN, ...) from HAProxy's stats socket."""
    return {key: row["status"] for key, row in server_stats(stats).items()}


def stats_socket(config: str) -> Path:
    found = re.search(r"stats socket (\S+)", config)
    assert found is not None
    return Path(found.group(1))


@contextlib.contextmanager
def haproxy(config: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    binary = haproxy_binary()
    checked = subprocess.run(
        [binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = path.with_suffix(".log")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(100):  # bounded: up to 5 s for the stats socket
            if stats_socket(config).exists() or process.poll() is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def eventually_states(
    stats: Path, wanted: dict[tuple[str, str], str], seconds: float
) -> float:
    """Seconds until the servers are in ``wanted`` states (fails after ``seconds``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    states: dict[tuple[str, str], str] = {}
    while True:
        with contextlib.suppress(OSError):
            states = await asyncio.to_thread(server_states, stats)
            if all(states.get(key, "").startswith(value) for key, value in wanted.items()):
                return loop.time() - started
        if loop.time() - started > seconds:
            raise AssertionError(f"servers never reached {wanted}; last seen {states}")
        await asyncio.sleep(0.1)


async def test_haproxy_with_the_compose_config_balances_checks_and_drains(
    tmp_path: Path,
) -> None:
    haproxy_binary()
    # The compose instances' drain timing; the test host is otherwise a plain one.
    server = ServerConfig(shutdown_delay=COMPOSE_CONFIG.server.shutdown_delay)
    async with running_host(
        plugins=["orders"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path / "data",
        http=True,
        server=server,
    ) as host:
        await _through_haproxy(host, tmp_path)


async def _through_haproxy(host: RunningHost, tmp_path: Path) -> None:
    live = (int(host.address.rsplit(":", 1)[1]), int(host.http_url.rsplit(":", 1)[1]))
    servers = {
        "nexus-1": live,
        "nexus-2": (free_port(), free_port()),
        "nexus-3": (free_port(), free_port()),
    }
    binds = (free_port(), free_port())
    stats = tmp_path / "haproxy.sock"
    with haproxy(local_config(servers, binds, stats), tmp_path):
        await eventually_states(
            stats,
            {
                ("nexus_grpc", "nexus-1"): "UP",
                ("nexus_rest", "nexus-1"): "UP",
                ("nexus_grpc", "nexus-2"): "DOWN",
                ("nexus_grpc", "nexus-3"): "DOWN",
                ("nexus_rest", "nexus-2"): "DOWN",
                ("nexus_rest", "nexus-3"): "DOWN",
            },
            seconds=20,
        )
        token = host.token()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{binds[0]}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            created = await orders_pb2_grpc.OrdersServiceStub(channel).CreateOrder(
                orders_pb2.CreateOrderRequest(
                    order=orders_pb2.Order(
                        customer_id="c1",
                        currency_code="EUR",
                        items=[orders_pb2.LineItem(sku="PEN-7", quantity=1)],
                    )
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=5,
            )
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{binds[1]}",
            headers={"authorization": f"Bearer {token}"},
        ) as client:
            assert (await client.get("/readyz")).json() == {"status": "ready"}
            fetched = await client.get(f"/v1/orders/{created.id}")
            assert fetched.status_code == 200 and fetched.json()["id"] == created.id

        # The drain: HAProxy sees /readyz fail and takes the host out of rotation
        # before its shutdown_delay is over and its ports stop answering.
        stopping = asyncio.ensure_future(host.host.stop())
        try:
            took = await eventually_states(
                stats,
                {("nexus_grpc", "nexus-1"): "DOWN", ("nexus_rest", "nexus-1"): "DOWN"},
                seconds=COMPOSE_CONFIG.server.shutdown_delay,
            )
            assert took < COMPOSE_CONFIG.server.shutdown_delay
            assert not stopping.done()  # still serving while it left the rotation
        finally:
            await stopping


def monitor_port(config: str) -> int:
    """The port of the balancer's monitor frontend (compose's healthcheck target)."""
    found = re.search(r"^frontend monitor\n\s*bind 127\.0\.0\.1:(\d+)", config, flags=re.M)
    assert found is not None
    return int(found.group(1))


async def test_grpc_clients_behind_haproxy_have_separate_login_buckets(tmp_path: Path) -> None:
    haproxy_binary()
    # The compose instances trust the balancer's fixed address; here it is loopback.
    trusted = COMPOSE_CONFIG.server.trusted_proxies
    assert trusted, "compose/nexus.toml must trust the balancer on the gRPC port"
    server = ServerConfig(trusted_proxies=("127.0.0.1/32",))
    limits = LimitsConfig(rate_classes={"default": {"rate": 100, "burst": 100}, "login": LOGIN})
    async with running_host(
        plugins=["auth"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path / "data",
        http=True,
        server=server,
        limits=limits,
    ) as host:
        live = (int(host.address.rsplit(":", 1)[1]), int(host.http_url.rsplit(":", 1)[1]))
        servers = {name: live for name in ("nexus-1", "nexus-2", "nexus-3")}
        binds = (free_port(), free_port())
        stats = tmp_path / "haproxy.sock"
        config = local_config(servers, binds, stats)
        with haproxy(config, tmp_path):
            up = {(backend, "nexus-1"): "UP" for backend in ("nexus_grpc", "nexus_rest")}
            await eventually_states(stats, up, seconds=20)
            # The compose healthcheck's target: the running HAProxy answers it.
            async with httpx.AsyncClient() as client:
                monitor = await client.get(f"http://127.0.0.1:{monitor_port(config)}/healthz")
                assert monitor.status_code == 200
            # Two "machines": relays (started off the loop the host serves on) whose connections to HAProxy come from 127.0.0.2
            # and 127.0.0.3, as two clients' would from their own addresses.
            relays = [
                await asyncio.to_thread(_relay, binds, source)
                for source in ("127.0.0.2", "127.0.0.3")
            ]
            try:
                first = await _logins(relays[0].address("grpc"), LOGIN_BURST + 2)
                second = await _logins(relays[1].address("grpc"), 1)
            finally:
                for relay in relays:
                    await asyncio.to_thread(relay.close)
        # The first client spent its own bucket (then RESOURCE_EXHAUSTED) ...
        assert first[:LOGIN_BURST] == [grpc.StatusCode.UNAUTHENTICATED] * LOGIN_BURST
        assert first[LOGIN_BURST:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        # ... and the second, behind the same balancer, still has all of its own.
        assert second == [grpc.StatusCode.UNAUTHENTICATED]


LOGIN_BURST = 3
#: A bucket that does not refill during the test.
LOGIN = {"rate": 0.001, "burst": float(LOGIN_BURST)}


def _relay(binds: tuple[int, int], source: str) -> TcpBalancer:
    # Its health check is /readyz through HAProxy's REST frontend.
    relay = TcpBalancer(
        [Backend("haproxy", {"grpc": binds[0], "http": binds[1]})],
        kinds=("grpc",),
        source=source,
    )
    relay.start()
    assert relay.healthy() == ["haproxy"]
    return relay


async def _logins(address: str, count: int) -> list[grpc.StatusCode]:
    """Status codes of ``count`` logins with a wrong password through ``address``."""
    codes = []
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for _ in range(count):
            try:
                await stub.Login(
                    auth_pb2.LoginRequest(username="nobody", password="wrong"), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
            else:
                codes.append(grpc.StatusCode.OK)
    return codes
