"""End to end over TLS and mutual TLS: `nexus serve` with certificates, clients nexus did
not write (grpcurl, buf curl over gRPC and gRPC-Web, Node's @grpc/grpc-js with
``credentials.createSsl``, curl, httpx) and the nexus CLI."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from nexus_grpc.tls.certs import IssuedCert, TestCA
from tests.e2e.conftest import BIN, REPO, ServeProcess, require_tool, start_serve

pytestmark = pytest.mark.e2e

HEALTH = "grpc.health.v1.Health/Check"


@dataclass
class TlsServe:
    """A `nexus serve` requiring client certificates on both ports, and the PKI files."""

    serve: ServeProcess
    ca: TestCA
    client: IssuedCert

    @property
    def tls_flags(self) -> list[str]:
        """grpcurl's and the CLI's spelling of the CA and the client certificate."""
        return [
            "-cacert",
            str(self.ca.cert_file),
            "-cert",
            str(self.client.cert_file),
            "-key",
            str(self.client.key_file),
        ]


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


#: The client certificate's identity: ``[auth.clients]`` lets it read every order, and
#: nothing else (no orders.create).
CLIENT_ID = "spiffe://test/client"


def seed_order(serve: ServeProcess, cacert: Path, client: IssuedCert | None = None) -> str:
    """Create an order over HTTPS with an admin token; its id."""
    context = ssl.create_default_context(cafile=str(cacert))
    if client is not None:
        context.load_cert_chain(str(client.cert_file), str(client.key_file))
    with httpx.Client(verify=context, timeout=10) as http:
        response = http.post(
            f"https://{serve.http_address}/v1/orders",
            headers={"authorization": f"Bearer {serve.token()}"},
            json={"customerId": "e2e", "items": [{"sku": "BOOK-1", "quantity": 1}]},
        )
    assert response.status_code == 200, response.text
    order_id: str = response.json()["id"]
    return order_id


def order_ids(listed: str) -> list[str]:
    """The ids in a ListOrders answer printed as JSON."""
    return [order["id"] for order in json.loads(listed)["orders"]]


@pytest.fixture
def tls_serve(tmp_path: Path, probe_stubs: Path) -> Iterator[TlsServe]:
    ca = TestCA.create(tmp_path / "pki")
    server = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    client = ca.issue("client", uris=(CLIENT_ID,), client=True)
    config = tmp_path / "nexus.toml"
    config.write_text(f'[auth.clients."{CLIENT_ID}"]\ngrants = ["orders.read:all"]\n')
    env = {"NEXUS_CONFIG": str(config)}
    for section in ("SERVER", "HTTP"):
        env[f"NEXUS_{section}__TLS__CERT_FILE"] = str(server.cert_file)
        env[f"NEXUS_{section}__TLS__KEY_FILE"] = str(server.key_file)
        env[f"NEXUS_{section}__TLS__CLIENT_CA_FILE"] = str(ca.cert_file)
        env[f"NEXUS_{section}__TLS__CLIENT_AUTH"] = "require"
    running = start_serve(
        tmp_path,
        probe_stubs,
        [REPO / "plugins", REPO / "tests" / "probe"],
        NEXUS_PLUGINS__DISABLED="inventory",
        **env,
    )
    try:
        yield TlsServe(running, ca, client)
    finally:
        running.close()


def test_grpcurl_over_mutual_tls(tls_serve: TlsServe, grpcurl: str) -> None:
    address = tls_serve.serve.address
    listed = run(grpcurl, *tls_serve.tls_flags, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "nexus.orders.v1.OrdersService" in listed.stdout.split()
    health = run(grpcurl, *tls_serve.tls_flags, address, HEALTH)
    assert json.loads(health.stdout)["status"] == "SERVING"
    # Without a client certificate the handshake fails; plaintext gets nothing.
    no_cert = run(grpcurl, "-cacert", str(tls_serve.ca.cert_file), address, HEALTH)
    assert no_cert.returncode != 0
    plain = run(grpcurl, "-plaintext", "-max-time", "3", address, HEALTH)
    assert plain.returncode != 0


def test_grpcurl_as_a_certificate_principal_without_a_token(
    tls_serve: TlsServe, grpcurl: str
) -> None:
    created = seed_order(tls_serve.serve, tls_serve.ca.cert_file, tls_serve.client)
    address = tls_serve.serve.address
    # No bearer token: the certificate's SAN URI is the principal, and its grant
    # orders.read:all lets it list every order...
    listed = run(
        grpcurl,
        *tls_serve.tls_flags,
        "-d",
        "{}",
        address,
        "nexus.orders.v1.OrdersService/ListOrders",
    )
    assert listed.returncode == 0, listed.stderr
    assert order_ids(listed.stdout) == [created]
    # ...but not create one: no orders.create grant.
    create = run(
        grpcurl,
        *tls_serve.tls_flags,
        "-d",
        '{"order": {"customerId": "e2e", "items": [{"sku": "BOOK-1", "quantity": 1}]}}',
        address,
        "nexus.orders.v1.OrdersService/CreateOrder",
    )
    assert create.returncode != 0
    assert "Code: PermissionDenied" in create.stderr, create.stderr


def test_buf_curl_over_grpc_and_grpc_web_with_client_certificates(
    tls_serve: TlsServe, buf: str
) -> None:
    # The schema for gRPC-Web (no reflection on the HTTP port) needs the google/api protos.
    subprocess.run([str(REPO / "scripts" / "lint"), "--deps-only"], check=True, capture_output=True)
    flags = [
        "--cacert",
        str(tls_serve.ca.cert_file),
        "--cert",
        str(tls_serve.client.cert_file),
        "--key",
        str(tls_serve.client.key_file),
    ]
    grpc_call = run(
        buf, "curl", *flags, "--protocol", "grpc", f"https://{tls_serve.serve.address}/{HEALTH}"
    )
    assert grpc_call.returncode == 0, grpc_call.stderr
    assert json.loads(grpc_call.stdout)["status"] == "SERVING"
    created = seed_order(tls_serve.serve, tls_serve.ca.cert_file, tls_serve.client)
    token = tls_serve.serve.token()
    web = run(
        buf,
        "curl",
        *flags,
        "--protocol",
        "grpcweb",
        "--schema",
        str(REPO),
        "-H",
        f"authorization: Bearer {token}",
        "--data",
        '{"pageSize": 1}',
        f"https://{tls_serve.serve.http_address}/nexus.orders.v1.OrdersService/ListOrders",
    )
    assert web.returncode == 0, web.stderr
    assert order_ids(web.stdout) == [created]


def test_node_grpc_js_with_create_ssl(tls_serve: TlsServe, node: str) -> None:
    result = run(
        node,
        str(REPO / "tests" / "e2e" / "node" / "orders_client.mjs"),
        tls_serve.serve.address,
        tls_serve.serve.token(
            subject="node-customer",
            grants=("orders.create:own", "orders.read:own", "orders.update:own"),
        ),
        env={
            "NEXUS_CACERT": str(tls_serve.ca.cert_file),
            "NEXUS_CERT": str(tls_serve.client.cert_file),
            "NEXUS_KEY": str(tls_serve.client.key_file),
        },
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["fetched"]["id"] == report["created"]["id"]
    assert report["not_found_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


def test_curl_and_httpx_over_https_with_client_certificates(tls_serve: TlsServe) -> None:
    curl = require_tool("curl", "curl")
    created = seed_order(tls_serve.serve, tls_serve.ca.cert_file, tls_serve.client)
    url = f"https://{tls_serve.serve.http_address}/v1/orders"
    bearer = f"authorization: Bearer {tls_serve.serve.token()}"
    listed = run(
        curl,
        "-sS",
        "--cacert",
        str(tls_serve.ca.cert_file),
        "--cert",
        str(tls_serve.client.cert_file),
        "--key",
        str(tls_serve.client.key_file),
        "-H",
        bearer,
        url,
    )
    assert listed.returncode == 0, listed.stderr
    assert order_ids(listed.stdout) == [created]
    no_cert = run(curl, "-sS", "--cacert", str(tls_serve.ca.cert_file), "-H", bearer, url)
    assert no_cert.returncode != 0
    context = ssl.create_default_context(cafile=str(tls_serve.ca.cert_file))
    context.load_cert_chain(str(tls_serve.client.cert_file), str(tls_serve.client.key_file))
    with httpx.Client(verify=context, timeout=10) as client:
        response = client.get(url, headers={"authorization": bearer.split(": ", 1)[1]})
    assert response.status_code == 200, response.text
    assert [order["id"] for order in response.json()["orders"]] == [created]


def test_cli_over_mutual_tls(tls_serve: TlsServe) -> None:
    nexus = str(BIN / "nexus")
    address = f"https://{tls_serve.serve.address}"
    token = tls_serve.serve.token()
    flags = [
        f"--{flag.lstrip('-')}" if flag.startswith("-") else flag for flag in tls_serve.tls_flags
    ]
    listed = run(nexus, "plugins", "--address", address, "--token", token, *flags)
    assert listed.returncode == 0, listed.stderr
    assert "orders" in listed.stdout
    # The same through the environment, and events stats as a second command.
    stats = run(
        nexus,
        "events",
        "stats",
        "--address",
        tls_serve.serve.address,
        "--token",
        token,
        env={
            "NEXUS_CACERT": str(tls_serve.ca.cert_file),
            "NEXUS_CERT": str(tls_serve.client.cert_file),
            "NEXUS_KEY": str(tls_serve.client.key_file),
        },
    )
    assert stats.returncode == 0, stats.stderr
    # No client certificate: the handshake fails, and the message says why and what to pass.
    refused = run(
        nexus,
        "plugins",
        "--address",
        address,
        "--token",
        token,
        "--cacert",
        str(tls_serve.ca.cert_file),
        "--timeout",
        "2",
    )
    assert refused.returncode == 1
    assert "(TLS)" in refused.stderr and "--cert/--key" in refused.stderr
    # Plaintext to a TLS port: the hint names --cacert.
    plain = run(nexus, "plugins", "--address", tls_serve.serve.address, "--timeout", "2")
    assert plain.returncode == 1
    assert "(plaintext)" in plain.stderr and "pass --cacert FILE" in plain.stderr


def test_readme_tls_tour_works_as_printed(
    tmp_path: Path, probe_stubs: Path, grpcurl: str, buf: str
) -> None:
    from tests.e2e.test_rest_clients import readme_block, run_in_one_shell

    require_tool("curl", "curl")
    pki = tmp_path / "tls"
    made = run(str(BIN / "nexus"), "tls", "dev-cert", "--dir", str(pki))
    assert made.returncode == 0, made.stderr
    assert oct((pki).stat().st_mode & 0o777) == "0o700"
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in pki.iterdir())
    env = {}
    for section in ("SERVER", "HTTP"):
        env[f"NEXUS_{section}__TLS__CERT_FILE"] = str(pki / "server.crt")
        env[f"NEXUS_{section}__TLS__KEY_FILE"] = str(pki / "server.key")
    serve = start_serve(tmp_path, probe_stubs, [REPO / "plugins"], **env)
    try:
        created = run(
            str(BIN / "nexus"),
            "users",
            "create",
            "admin",
            "--admin",
            "--password-stdin",
            env={"NEXUS_DATA_DIR": str(serve.data_dir)},
            stdin="correct horse battery staple\n",
        )
        assert created.returncode == 0, created.stderr
        seeded = seed_order(serve, pki / "ca.crt")
        tour = [command.replace(".nexus/tls", str(pki)) for command in readme_block("tls-tour")]
        assert len(tour) == 6
        listed, login, orders, curl, buf_curl, plugins = run_in_one_shell(tour, serve, tmp_path)
    finally:
        serve.close()
    for step in (listed, login, orders, curl, buf_curl, plugins):
        assert step.code == 0, (step.command, step.err)
    assert "nexus.orders.v1.OrdersService" in listed.out.split()
    # The order made before the tour, the same through grpcurl and curl.
    assert order_ids(orders.out) == order_ids(curl.out) == [seeded]
    assert json.loads(buf_curl.out) == {"status": "SERVING"}
    assert "orders" in plugins.out
