"""A real `nexus serve` over mutual TLS, called by grpcurl and curl; SIGHUP rotates."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from nexus_grpc.tls.certs import IssuedCert, TestCA
from tests.e2e.conftest import BIN, REPO, ServeProcess, require_tool, start_serve

READER = "spiffe://acme/reporting"


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "pki")


@pytest.fixture
def tls_serve(tmp_path: Path, probe_stubs: Path, pki: TestCA) -> Iterator[ServeProcess]:
    """`nexus serve` with the orders plugin, mutual TLS required on both ports."""
    server = pki.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    config = tmp_path / "nexus.toml"
    config.write_text(
        f"""
[auth.clients."{READER}"]
grants = ["orders.read:all"]
""",
        encoding="utf-8",
    )
    env = {"NEXUS_CONFIG": str(config), "NEXUS_PLUGINS__DISABLED": "inventory,auth"}
    for port in ("SERVER", "HTTP"):
        env[f"NEXUS_{port}__TLS__CERT_FILE"] = str(server.cert_file)
        env[f"NEXUS_{port}__TLS__KEY_FILE"] = str(server.key_file)
        env[f"NEXUS_{port}__TLS__CLIENT_CA_FILE"] = str(pki.cert_file)
        env[f"NEXUS_{port}__TLS__CLIENT_AUTH"] = "require"
        env[f"NEXUS_{port}__TLS__RELOAD_INTERVAL"] = "0"  # SIGHUP only
    running = start_serve(tmp_path, probe_stubs, [REPO / "plugins"], **env)
    try:
        yield running
    finally:
        running.close()


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _tls_args(pki: TestCA, client: IssuedCert | None, *, curl: bool = False) -> list[str]:
    args = ["--cacert" if curl else "-cacert", str(pki.cert_file)]
    if client is not None:
        args += ["--cert" if curl else "-cert", str(client.cert_file)]
        args += ["--key" if curl else "-key", str(client.key_file)]
    return args


def test_grpcurl_and_curl_call_over_mutual_tls(tls_serve: ServeProcess, pki: TestCA) -> None:
    grpcurl = require_tool("grpcurl", BIN / "grpcurl")
    curl = require_tool("curl", "curl")
    reader = pki.issue("reporting", uris=(READER,), client=True)
    stranger = pki.issue("stranger", uris=("spiffe://acme/stranger",), client=True)
    address, http = tls_serve.address, tls_serve.http_address

    health = _run(grpcurl, *_tls_args(pki, reader), address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    listed = _run(
        grpcurl, *_tls_args(pki, reader), address, "nexus.orders.v1.OrdersService/ListOrders"
    )
    assert listed.returncode == 0, listed.stderr
    denied = _run(
        grpcurl, *_tls_args(pki, stranger), address, "nexus.orders.v1.OrdersService/ListOrders"
    )
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr, denied.stderr
    for refused in (
        _run(grpcurl, *_tls_args(pki, None), address, "list"),  # no client certificate
        _run(grpcurl, "-plaintext", address, "list"),
    ):
        assert refused.returncode != 0

    url = f"https://{http}/v1/orders"
    ok = _run(
        curl,
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        *_tls_args(pki, reader, curl=True),
        url,
    )
    assert ok.stdout == "200", ok.stderr
    unlisted = _run(
        curl,
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        *_tls_args(pki, stranger, curl=True),
        url,
    )
    assert unlisted.stdout == "401", unlisted.stderr
    no_cert = _run(curl, "-sS", *_tls_args(pki, None, curl=True), url)
    assert no_cert.returncode != 0
    plain = _run(curl, "-sS", f"http://{http}/v1/orders")
    assert plain.returncode != 0 or not plain.stdout.startswith("{")


def test_sighup_serves_replaced_certificate_files(tls_serve: ServeProcess, pki: TestCA) -> None:
    renewed = pki.issue("server", dns=("localhost",), ips=("127.0.0.1",), days=90)
    tls_serve.process.send_signal(signal.SIGHUP)
    for where in ("server.tls", "http.tls"):
        tls_serve.wait_for_log(
            lambda entry, where=where: entry.get("message", "").startswith(
                f"{where}: serving certificate serial {renewed.serial:x}"
            )
        )
    # New connections to both ports are shown the renewed certificate.
    reader = pki.issue("reporting", uris=(READER,), client=True)
    context = ssl.create_default_context(cafile=pki.cert_file)
    context.load_cert_chain(reader.cert_file, reader.key_file)
    for address, alpn in ((tls_serve.address, "h2"), (tls_serve.http_address, "http/1.1")):
        context.set_alpn_protocols([alpn])
        host, port = address.rsplit(":", 1)
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as wrapped,
        ):
            der = wrapped.getpeercert(binary_form=True)
        assert der is not None
        assert x509.load_der_x509_certificate(der).serial_number == renewed.serial
    assert tls_serve.stop() == 0
