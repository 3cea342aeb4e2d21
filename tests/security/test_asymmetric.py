"""Asymmetric keys: key confusion and unknown key ids, over gRPC and REST."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nexus_grpc.config import AuthConfig
from nexus_grpc.testing import running_host
from tests.security.conftest import REPO, Client, b64


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_files(tmp_path: Path, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    public = tmp_path / "public.pem"
    private = tmp_path / "private.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    return public, private


def claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "nexus",
        "aud": "nexus",
        "sub": "eve",
        "iat": now,
        "exp": now + 600,
        "typ": "access",
        "perms": ["*.*:all"],
    }


def hs256_with_key(data: bytes) -> str:
    """An HS256 token keyed with arbitrary bytes (PyJWT refuses PEM keys as secrets)."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(data, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(params=["grpc", "rest"])
async def rsa_client(
    request: pytest.FixtureRequest, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> AsyncIterator[Client]:
    public, private = pem_files(tmp_path, rsa_key)
    auth = AuthConfig(
        algorithms=("RS256",), public_key_file=str(public), private_key_file=str(private)
    )
    async with (
        running_host(
            plugins=["orders"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path / "d",
            http=True,
            auth=auth,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as http,
    ):
        yield Client(request.param, host, http)


async def test_rs256_token_is_accepted(rsa_client: Client, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await rsa_client.get_order(f"Bearer {token}")).code == "NOT_FOUND"


async def test_hs256_signed_with_the_public_key_is_refused(
    rsa_client: Client, tmp_path: Path
) -> None:
    public_pem = (tmp_path / "public.pem").read_bytes()
    outcome = await rsa_client.get_order(f"Bearer {hs256_with_key(public_pem)}")
    assert outcome.code == "UNAUTHENTICATED"


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update({"kid": "known", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["grpc", "rest"])
async def jwks_client(
    request: pytest.FixtureRequest, tmp_path: Path, jwks_server: str
) -> AsyncIterator[Client]:
    auth = AuthConfig(algorithms=("RS256",), jwks_url=jwks_server)
    async with (
        running_host(
            plugins=["orders"],
            plugin_dirs=[REPO / "plugins"],
            data_dir=tmp_path,
            http=True,
            auth=auth,
        ) as host,
        httpx.AsyncClient(base_url=host.http_url) as http,
    ):
        yield Client(request.param, host, http)


async def test_jwks_key_by_kid_is_accepted_and_unknown_kid_refused(
    jwks_client: Client, rsa_key: rsa.RSAPrivateKey
) -> None:
    known = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "known"})
    assert (await jwks_client.get_order(f"Bearer {known}")).code == "NOT_FOUND"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    unknown = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rotated-away"})
    outcome = await jwks_client.get_order(f"Bearer {unknown}")
    assert outcome.code == "UNAUTHENTICATED"
    if jwks_client.transport == "rest":
        assert outcome.body["details"][0]["reason"] == "KEY_UNKNOWN"
