"""The REST gateway of a real `nexus serve`, driven by curl and buf curl (gRPC-Web)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, ServeProcess, missing

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        missing("curl")
    assert path is not None
    return path


def readme_block(marker: str) -> list[str]:
    """The shell commands between a README marker pair, one per command."""
    text = (REPO / "README.md").read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    body = block.split("```sh\n", 1)[1].rsplit("```", 1)[0]
    return [command for command in body.replace("\\\n", " ").splitlines() if command.strip()]


@dataclass
class Ran:
    command: str
    code: int
    out: str
    err: str


def run_in_one_shell(commands: list[str], serve: ServeProcess, tmp_path: Path) -> list[Ran]:
    """Run the commands in one bash session (variables carry over), as a reader would."""
    script = []
    for index, command in enumerate(commands):
        command = command.replace("127.0.0.1:8080", serve.http_address)
        command = command.replace("127.0.0.1:50051", serve.address)
        script.append(
            f"{{ {command} ; }} >{tmp_path}/out{index} 2>{tmp_path}/err{index}; "
            f"echo $? >{tmp_path}/rc{index}"
        )
    subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        timeout=180,
        check=True,
        env={**os.environ, "NEXUS_DATA_DIR": str(serve.data_dir)},
    )
    return [
        Ran(
            command,
            int((tmp_path / f"rc{i}").read_text()),
            (tmp_path / f"out{i}").read_text(),
            (tmp_path / f"err{i}").read_text(),
        )
        for i, command in enumerate(commands)
    ]


def test_readme_tours_work_as_printed(
    shop_serve: ServeProcess, curl: str, grpcurl: str, tmp_path: Path
) -> None:
    grpc_tour = readme_block("grpc-tour")
    rest_tour = readme_block("rest-tour")
    assert len(grpc_tour) == 14 and len(rest_tour) == 12
    ran = run_in_one_shell(grpc_tour + rest_tour, shop_serve, tmp_path)
    (
        bootstrap,
        users,
        listed,
        described,
        login,
        stocked,
        created,
        orders,
        invalid,
        anonymous,
        watched,
        health,
        plugins,
        event_stats,
        rest_login,
        rest_created,
        fetched,
        rest_listed,
        patched,
        cancelled,
        stock,
        missing_order,
        no_token,
        rest_watched,
        openapi,
        audit,
    ) = ran
    # grpcurl exits 68 (DeadlineExceeded) when -max-time ends the endless watch, as intended.
    assert watched.code in (0, 68), watched.err
    for step in (
        bootstrap,
        users,
        listed,
        described,
        login,
        stocked,
        stock,
        created,
        orders,
        health,
        plugins,
        event_stats,
        rest_login,
        rest_created,
        fetched,
        rest_listed,
        patched,
        cancelled,
        missing_order,
        no_token,
        openapi,
    ):
        assert step.code == 0, (step.command, step.err)
    assert "created admin with roles admin" in users.out
    assert "nexus.auth.v1.AuthService" in listed.out.split()
    assert "rpc CancelOrder" in described.out
    assert json.loads(stocked.out) == {"sku": "BOOK-1", "available": "100"}
    assert json.loads(created.out)["status"] == "ORDER_STATUS_PENDING"
    assert [o["customer_id"] for o in json.loads(orders.out)["orders"]] == ["alice"]
    assert invalid.code != 0 and "Code: InvalidArgument" in invalid.err
    assert "order.items[0].quantity: must be at least 1" in invalid.err
    assert anonymous.code != 0 and "Code: Unauthenticated" in anonymous.err
    assert '"change_type": "CHANGE_TYPE_EXISTING"' in watched.out
    assert json.loads(health.out) == {"status": "SERVING"}
    assert any(
        line.split()[:4] == ["orders", "1.0.0", "business", "SERVING"]
        for line in plugins.out.splitlines()
    )
    assert "inventory" in event_stats.out and "orders" in event_stats.out, event_stats.out

    order = json.loads(rest_created.out)
    assert order["id"] == "order-1"
    assert order["totalCents"] == "2500"
    assert json.loads(fetched.out)["id"] == "order-1"  # by now perhaps CONFIRMED
    assert "order-1" in [o["id"] for o in json.loads(rest_listed.out)["orders"]]
    assert json.loads(patched.out)["note"] == "gift wrap, please"
    assert json.loads(cancelled.out)["status"] == "ORDER_STATUS_CANCELLED"
    assert json.loads(stock.out)["sku"] == "BOOK-1"
    assert missing_order.out.startswith("HTTP/1.1 404")
    assert (
        json.loads(missing_order.out.split("\n\n", 1)[1])["message"] == "order 'order-2' not found"
    )
    assert no_token.out.startswith("HTTP/1.1 401")
    assert re.search(r"(?im)^www-authenticate: Bearer", no_token.out)
    # curl exits 28 when --max-time ends the endless watch stream, as intended.
    assert rest_watched.code in (0, 28)
    assert json.loads(rest_watched.out.splitlines()[0])["changeType"] == "CHANGE_TYPE_EXISTING"
    assert json.loads(openapi.out)["openapi"].startswith("3.1")
    records = json.loads(audit.out)["records"]
    assert len(records) == 5
    actions = {(r["actor"], r["action"]) for r in records}
    assert ("anonymous", "call.denied") in actions  # the GET without a token, just before
    assert ("admin", "admin.call") in actions  # e.g. the ListPlugins of `nexus plugins`


def test_curl_errors_and_headers(serve: ServeProcess, curl: str) -> None:
    base = f"http://{serve.http_address}"
    token = f"Authorization: Bearer {serve.token()}"
    wrong = subprocess.run(
        [curl, "-s", "-i", "-X", "DELETE", f"{base}/v1/orders"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert wrong.stdout.startswith("HTTP/1.1 405")
    assert re.search(r"(?im)^allow: GET, POST\r?$", wrong.stdout)
    invalid = subprocess.run(
        [
            curl,
            "-s",
            "-i",
            "-X",
            "POST",
            f"{base}/v1/orders",
            "-H",
            "Content-Type: application/json",
            "-H",
            token,
            "-H",
            "X-Request-Id: curl-1",
            "-d",
            "{}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert invalid.stdout.startswith("HTTP/1.1 400")
    assert re.search(r"(?im)^x-request-id: curl-1\r?$", invalid.stdout)
    body = json.loads(invalid.stdout.split("\n\n", 1)[1])
    violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))[
        "fieldViolations"
    ]
    assert {v["field"] for v in violations} >= {"order.customer_id", "order.items"}


def test_buf_curl_over_grpc_web(serve: ServeProcess, buf: str) -> None:
    base = f"http://{serve.http_address}"
    bearer = serve.bearer()
    created = subprocess.run(
        [
            buf,
            "curl",
            "--schema",
            str(REPO),
            "-H",
            bearer,
            "--protocol",
            "grpcweb",
            "-d",
            '{"order": {"customerId": "web", "currencyCode": "EUR", "items": [{"sku": "PEN-7", "quantity": 3}]}}',
            f"{base}/nexus.orders.v1.OrdersService/CreateOrder",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert created.returncode == 0, created.stderr
    order = json.loads(created.stdout)
    assert order["totalCents"] == "597"
    missing_call = subprocess.run(
        [
            buf,
            "curl",
            "--schema",
            str(REPO),
            "-H",
            bearer,
            "--protocol",
            "grpcweb",
            "-d",
            '{"id": "nope"}',
            f"{base}/nexus.orders.v1.OrdersService/GetOrder",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert json.loads(missing_call.stderr)["code"] == "not_found"
    watched = subprocess.run(
        [
            buf,
            "curl",
            "--schema",
            str(REPO),
            "-H",
            bearer,
            "--protocol",
            "grpcweb",
            "--timeout",
            "2s",
            "-d",
            '{"customerId": "web", "includeExisting": true}',
            f"{base}/nexus.orders.v1.OrdersService/WatchOrders",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert '"changeType": "CHANGE_TYPE_EXISTING"' in watched.stdout
    assert order["id"] in watched.stdout
