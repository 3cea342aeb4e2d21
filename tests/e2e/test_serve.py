"""End to end: `nexus serve` as a process, driven by clients nexus did not write."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import BIN, REPO, ServeProcess, start_serve

pytestmark = pytest.mark.e2e

ORDER_JSON = json.dumps(
    {
        "order": {
            "customerId": "grpcurl",
            "currencyCode": "EUR",
            "items": [{"sku": "PEN-7", "quantity": 4}],  # priced by the server: 199
        }
    }
)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_grpcurl_lists_describes_and_calls_through_reflection(
    serve: ServeProcess, grpcurl: str
) -> None:
    listed = run(grpcurl, "-plaintext", serve.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    for expected in (
        "nexus.orders.v1.OrdersService",
        "nexus.admin.v1.AdminService",
        "probe.v1.ProbeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert expected in services

    described = run(
        grpcurl, "-plaintext", serve.address, "describe", "nexus.orders.v1.OrdersService"
    )
    assert described.returncode == 0, described.stderr
    assert (
        "rpc WatchOrders ( .nexus.orders.v1.WatchOrdersRequest ) returns ( stream .nexus.orders.v1.WatchOrdersResponse )"
        in described.stdout
    )
    method = run(
        grpcurl,
        "-plaintext",
        serve.address,
        "describe",
        "nexus.orders.v1.OrdersService.CreateOrder",
    )
    assert method.returncode == 0, (
        method.stderr
    )  # method symbols resolve, as the reflection spec says
    assert "rpc CreateOrder" in method.stdout
    message = run(grpcurl, "-plaintext", serve.address, "describe", "nexus.orders.v1.Order")
    assert "google.protobuf.Timestamp create_time = 9;" in message.stdout

    created = run(
        grpcurl,
        "-plaintext",
        "-H",
        serve.bearer(),
        "-d",
        ORDER_JSON,
        serve.address,
        "nexus.orders.v1.OrdersService/CreateOrder",
    )
    assert created.returncode == 0, created.stderr
    order = json.loads(created.stdout)
    assert order["status"] == "ORDER_STATUS_PENDING"
    assert order["total_cents"] == "796"  # grpcurl prints proto field names

    fetched = run(
        grpcurl,
        "-plaintext",
        "-H",
        serve.bearer(),
        "-d",
        json.dumps({"id": order["id"]}),
        serve.address,
        "nexus.orders.v1.OrdersService/GetOrder",
    )
    assert json.loads(fetched.stdout)["id"] == order["id"]

    health = run(grpcurl, "-plaintext", serve.address, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}

    invalid = run(
        grpcurl,
        "-plaintext",
        "-H",
        serve.bearer(),
        "-d",
        '{"order": {}}',
        serve.address,
        "nexus.orders.v1.OrdersService/CreateOrder",
    )
    assert invalid.returncode != 0
    assert "Code: InvalidArgument" in invalid.stderr
    assert "order.customer_id: required" in invalid.stderr
    assert "Traceback" not in invalid.stderr


def test_buf_curl_calls_through_reflection_v1(serve: ServeProcess, buf: str) -> None:
    base = f"http://{serve.address}"
    common = (
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        "grpc-v1",
        "-H",
        serve.bearer(),
    )
    services = run(buf, "curl", *common, "--list-services", base)
    assert services.returncode == 0, services.stderr
    assert "nexus.orders.v1.OrdersService" in services.stdout.split()
    methods = run(buf, "curl", *common, "--list-methods", base)
    assert "nexus.orders.v1.OrdersService/CancelOrder" in methods.stdout.split()
    created = run(
        buf, "curl", *common, "-d", ORDER_JSON, f"{base}/nexus.orders.v1.OrdersService/CreateOrder"
    )
    assert created.returncode == 0, created.stderr
    order = json.loads(created.stdout)
    cancelled = run(
        buf,
        "curl",
        *common,
        "-d",
        json.dumps({"id": order["id"], "reason": "buf"}),
        f"{base}/nexus.orders.v1.OrdersService/CancelOrder",
    )
    assert json.loads(cancelled.stdout)["status"] == "ORDER_STATUS_CANCELLED"
    alpha = run(
        buf,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        "grpc-v1alpha",
        "--list-services",
        base,
    )
    assert "nexus.orders.v1.OrdersService" in alpha.stdout.split()


def test_node_grpc_js_client_calls_unary_and_streaming(serve: ServeProcess, node: str) -> None:
    result = run(
        node,
        str(REPO / "tests" / "e2e" / "node" / "orders_client.mjs"),
        serve.address,
        serve.token(
            subject="node-customer",
            grants=("orders.create:own", "orders.read:own", "orders.update:own"),
        ),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    created = report["created"]
    assert created["status"] == "ORDER_STATUS_PENDING"
    assert created["total_cents"] == "2500"  # 2 x BOOK-1 at the list price
    assert report["fetched"]["id"] == created["id"]
    mine = [c for c in report["watch"] if c["order"]["id"] == created["id"]]
    assert [c["change_type"] for c in mine] == ["CHANGE_TYPE_EXISTING", "CHANGE_TYPE_CANCELLED"]
    assert report["not_found_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


def test_nexus_plugins_lists_a_broken_plugin_beside_good_ones(
    tmp_path: Path, probe_stubs: Path
) -> None:
    broken = tmp_path / "more" / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.toml").write_text(
        'name = "broken"\nversion = "1"\ncategory = "business"\ndescription = "raises"\n'
        'services = ["broken.v1.BrokenService"]\n'
    )
    (broken / "__init__.py").write_text("raise RuntimeError('cannot import me')\n")
    serve = start_serve(tmp_path, probe_stubs, [REPO / "plugins", tmp_path / "more"])
    try:
        table = run(
            str(BIN / "nexus"), "plugins", "--address", serve.address, "--token", serve.token()
        )
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == [
            "NAME",
            "VERSION",
            "CATEGORY",
            "STATE",
            "GEN",
            "CODE",
            "SERVICES",
        ]
        assert any(line.split()[:4] == ["orders", "1.0.0", "business", "SERVING"] for line in lines)
        assert any(
            line.split()[:4] == ["broken", "1", "business", "FAILED"] and "(not serving)" in line
            for line in lines
        )
        assert "broken: plugin 'broken'" in table.stdout and "cannot import me" in table.stdout
        failure = serve.wait_for_log(
            lambda e: e.get("plugin") == "broken" and e["level"] == "error"
        )
        assert "cannot import me" in failure["message"]
    finally:
        serve.stop()


def test_sigterm_reports_not_serving_drains_the_call_in_flight_then_exits(
    tmp_path: Path, probe_stubs: Path
) -> None:
    from probe.v1 import probe_pb2, probe_pb2_grpc

    serve = start_serve(
        tmp_path,
        probe_stubs,
        [REPO / "tests" / "probe"],
        NEXUS_SERVER__SHUTDOWN_DELAY="0.3",
        NEXUS_SERVER__GRACE_PERIOD="5",
    )
    with grpc.insecure_channel(serve.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="probe.v1.ProbeService"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        probe = probe_pb2_grpc.ProbeServiceStub(channel)
        slow = probe.Sleep.future(probe_pb2.SleepRequest(millis=1500), timeout=10)
        time.sleep(0.3)  # let the call reach the handler before the signal
        sent = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # A stream still open would hold the drain for the whole grace period, as in
        # grpc-go's GracefulStop; a prober closes its watch once it has the answer.
        watch.cancel()
        assert slow.result().slept_millis == 1500  # finished during the drain
        assert serve.process.wait(10) == 0
        serve.wait_for_log(lambda e: e["message"] == "nexus stopped", timeout=5)
        serve.close()
        assert time.monotonic() - sent < 5
    messages = [e["message"] for e in serve.logs]
    assert "SIGTERM received: shutting down" in messages
    assert messages.index("SIGTERM received: shutting down") < messages.index("nexus stopped")


def test_access_log_has_request_id_and_code(serve: ServeProcess, grpcurl: str) -> None:
    result = run(
        grpcurl,
        "-plaintext",
        "-H",
        serve.bearer(),
        "-H",
        "x-request-id: e2e-1",
        "-d",
        '{"id": "missing"}',
        serve.address,
        "nexus.orders.v1.OrdersService/GetOrder",
    )
    assert "NotFound" in result.stderr
    entry = serve.wait_for_log(
        lambda e: e.get("logger") == "nexus.access" and e.get("request_id") == "e2e-1"
    )
    # Spelled as the metrics' grpc_code label (and grpc-go) spell it.
    assert entry["code"] == "NotFound"
    assert entry["method"] == "/nexus.orders.v1.OrdersService/GetOrder"
    assert entry["plugin"] == "orders"
    assert entry["principal"] == "e2e-admin"
    assert entry["duration_ms"] >= 0


def test_port_in_use_is_a_clear_start_up_error(serve: ServeProcess) -> None:
    result = run(str(BIN / "nexus"), "serve", "--grpc-address", serve.address)
    assert result.returncode == 1
    assert f"server.grpc_address {serve.address}: cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "nexus"), "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"NEXUS_SERVER__GRACE_PERIOD": "later", "PATH": ""},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert (
        "server.grace_period (from NEXUS_SERVER__GRACE_PERIOD): expected a number, got 'later'"
        in result.stderr
    )


def test_health_stream_and_calls_are_threaded_safely(serve: ServeProcess) -> None:
    # Many concurrent clients through the dispatcher: every call answered, none lost.
    from nexus.orders.v1 import orders_pb2, orders_pb2_grpc

    errors: list[BaseException] = []
    token = serve.token()

    def client(n: int) -> None:
        try:
            with grpc.insecure_channel(serve.address) as channel:
                stub = orders_pb2_grpc.OrdersServiceStub(channel)
                metadata = (("authorization", f"Bearer {token}"),)
                for i in range(10):
                    stub.CreateOrder(
                        orders_pb2.CreateOrderRequest(
                            order=orders_pb2.Order(
                                customer_id=f"t{n}",
                                currency_code="EUR",
                                items=[orders_pb2.LineItem(sku="PEN-7", quantity=i + 1)],
                            )
                        ),
                        timeout=10,
                        metadata=metadata,
                    )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with grpc.insecure_channel(serve.address) as channel:
        stub = orders_pb2_grpc.OrdersServiceStub(channel)
        listed = stub.ListOrders(
            orders_pb2.ListOrdersRequest(page_size=1000),
            timeout=10,
            metadata=(("authorization", f"Bearer {token}"),),
        )
    assert len(listed.orders) == 80


def test_serve_freezes_its_imports_before_it_loads_a_plugin(
    tmp_path: Path, probe_stubs: Path
) -> None:
    # nexus_grpc/heap.py: what is frozen is never collected, so no plugin code may be.
    serve = start_serve(tmp_path, probe_stubs, [REPO / "tests" / "probe"], NEXUS_LOG__LEVEL="debug")
    try:
        messages = [entry["message"] for entry in serve.logs]
        froze = next((i for i, m in enumerate(messages) if m.startswith("froze ")), None)
        assert froze is not None, messages
        # nexus, grpc, protobuf and SQLAlchemy: ~100k objects on CPython 3.11.
        assert int(messages[froze].split()[1]) > 20_000
        loaded = next((i for i, m in enumerate(messages) if m.startswith("plugin probe ")), None)
        assert loaded is not None and froze < loaded, messages
    finally:
        serve.stop()
