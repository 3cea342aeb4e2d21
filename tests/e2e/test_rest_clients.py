"""The REST gateway of a real `nexus serve`, driven by curl and buf curl (gRPC-Web)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

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


def readme_rest_commands() -> list[str]:
    """The shell commands between the rest-tour markers of README.md, one per command."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- rest-tour -->", 1)[1].split("<!-- /rest-tour -->", 1)[0]
    body = block.split("```sh\n", 1)[1].rsplit("```", 1)[0]
    return [command for command in body.replace("\\\n", " ").splitlines() if command.strip()]


def test_readme_curl_examples_work_as_printed(serve: ServeProcess, curl: str) -> None:
    commands = readme_rest_commands()
    assert len(commands) == 8
    outputs = []
    for command in commands:
        command = command.replace("127.0.0.1:8080", serve.http_address)
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
        )
        # curl exits 28 when --max-time ends the endless watch stream, as intended.
        assert result.returncode in (0, 28), (command, result.stderr)
        outputs.append(result.stdout)
    created, fetched, listed, patched, cancelled, missing_order, watched, openapi = outputs
    order = json.loads(created)
    assert order["id"] == "order-1"
    assert order["totalCents"] == "2500"
    assert json.loads(fetched) == order
    assert [o["id"] for o in json.loads(listed)["orders"]] == ["order-1"]
    assert json.loads(patched)["note"] == "gift wrap, please"
    assert json.loads(cancelled)["status"] == "ORDER_STATUS_CANCELLED"
    assert missing_order.startswith("HTTP/1.1 404")
    assert json.loads(missing_order.split("\n\n", 1)[1])["message"] == "order 'order-2' not found"
    first_change = json.loads(watched.splitlines()[0])
    assert first_change["changeType"] == "CHANGE_TYPE_EXISTING"
    assert json.loads(openapi)["openapi"].startswith("3.1")


def test_curl_errors_and_headers(serve: ServeProcess, curl: str) -> None:
    base = f"http://{serve.http_address}"
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
    created = subprocess.run(
        [
            buf,
            "curl",
            "--schema",
            str(REPO),
            "--protocol",
            "grpcweb",
            "-d",
            '{"order": {"customerId": "web", "currencyCode": "EUR", "items": [{"sku": "W-1", "quantity": 3, "unitPriceCents": "7"}]}}',
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
    assert order["totalCents"] == "21"
    missing_call = subprocess.run(
        [
            buf,
            "curl",
            "--schema",
            str(REPO),
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
