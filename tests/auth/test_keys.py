"""Key loading, configuration checks, and JWKS fetching against a real local server."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from nexus_grpc.auth.keys import KeySet
from nexus_grpc.auth.principal import Principal
from nexus_grpc.auth.tokens import AuthError, TokenIssuer, TokenVerifier
from nexus_grpc.config import AuthConfig
from nexus_grpc.errors import StatusError
from tests.auth import (
    NOW,
    SECRET,
    Clock,
    b64,
    claims,
    ec_key,
    public_pem,
    rsa_key,
    sign,
    write_keys,
)

INTERVAL = 300.0


# --- the HMAC secret --------------------------------------------------------------------


async def test_generated_secret_is_private_long_enough_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    config = AuthConfig()
    first = await KeySet.load(config, data_dir)
    path = data_dir / "jwt-hs256.key"
    secret = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 32
    assert [p.name for p in data_dir.iterdir()] == ["jwt-hs256.key"]  # no temp file left

    second = await KeySet.load(config, data_dir)
    assert path.read_bytes() == secret
    token, _ = TokenIssuer(first, config).issue_access(_principal())
    assert (await TokenVerifier(second, config).verify(token)).subject == "user-1"


async def test_generated_secrets_differ_between_data_folders(tmp_path: Path) -> None:
    await KeySet.load(AuthConfig(), tmp_path / "a")
    await KeySet.load(AuthConfig(), tmp_path / "b")
    assert (tmp_path / "a" / "jwt-hs256.key").read_bytes() != (
        tmp_path / "b" / "jwt-hs256.key"
    ).read_bytes()


async def test_secret_file_is_used_and_nothing_is_generated(tmp_path: Path) -> None:
    secret_path = tmp_path / "secret"
    secret_path.write_bytes(SECRET)
    config = AuthConfig(secret_file=str(secret_path))
    keys = await KeySet.load(config, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    token = sign(claims(), SECRET, "HS256")
    assert await TokenVerifier(keys, config, clock=Clock()).verify(token)


@pytest.mark.parametrize(
    ("algorithm", "length", "needed"), [("HS256", 31, 32), ("HS384", 47, 48), ("HS512", 63, 64)]
)
async def test_short_secret_is_refused(
    tmp_path: Path, algorithm: str, length: int, needed: int
) -> None:
    secret_path = tmp_path / "secret"
    secret_path.write_bytes(SECRET[:length])
    config = AuthConfig(algorithms=(algorithm,), secret_file=str(secret_path))
    with pytest.raises(ValueError, match=rf"auth\.secret_file .* {length} bytes.* {needed}"):
        await KeySet.load(config, tmp_path)


async def test_missing_secret_file_is_refused(tmp_path: Path) -> None:
    config = AuthConfig(secret_file=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=r"auth\.secret_file .*absent does not exist"):
        await KeySet.load(config, tmp_path)


async def test_public_key_used_as_a_secret_is_refused(tmp_path: Path) -> None:
    secret_path = tmp_path / "secret"
    secret_path.write_bytes(public_pem(rsa_key()))
    with pytest.raises(ValueError, match="asymmetric key"):
        await KeySet.load(AuthConfig(secret_file=str(secret_path)), tmp_path)


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"algorithms": ()}, r"auth\.algorithms is empty"),
        ({"algorithms": ("none",)}, r"auth\.algorithms must not contain 'none'"),
        ({"algorithms": ("HS256", "None")}, r"auth\.algorithms must not contain 'none'"),
        ({"algorithms": ("NONE",)}, r"auth\.algorithms must not contain 'none'"),
        ({"algorithms": ("hs256",)}, r"auth\.algorithms: unknown algorithm 'hs256'"),
        ({"algorithms": ("HS1024",)}, r"auth\.algorithms: unknown algorithm"),
        ({"algorithms": ("HS256", "RS256")}, r"auth\.algorithms mixes HMAC"),
        ({"algorithms": ("ES256", "HS512")}, r"auth\.algorithms mixes HMAC"),
        ({"algorithms": ("RS256",)}, r"need auth\.public_key_file or auth\.jwks_url"),
        ({"public_key_file": "k.pem"}, r"auth\.public_key_file needs asymmetric"),
        ({"jwks_url": "https://idp/jwks"}, r"auth\.jwks_url needs asymmetric"),
        (
            {"algorithms": ("RS256",), "public_key_file": "k", "secret_file": "s"},
            r"auth\.secret_file needs HMAC",
        ),
        ({"leeway": 61}, r"auth\.leeway must be between 0 and 60"),
        ({"leeway": -1}, r"auth\.leeway"),
        ({"leeway": float("nan")}, r"auth\.leeway"),
        ({"max_token_bytes": 0}, r"auth\.max_token_bytes"),
        ({"session_check_ttl": 0}, r"auth\.session_check_ttl must be a positive"),
        ({"login_lockout_base": float("nan")}, r"auth\.login_lockout_base"),
        ({"login_failure_window": -1}, r"auth\.login_failure_window"),
        ({"login_lockout_max": 0.5}, r"auth\.login_lockout_max must be at least"),
        ({"login_free_failures": 0}, r"auth\.login_free_failures must be 1 or more"),
        ({"issuer": ""}, r"auth\.issuer"),
        ({"audience": ""}, r"auth\.audience"),
        ({"access_token_ttl": 0}, r"auth\.access_token_ttl"),
        ({"refresh_token_ttl": -5}, r"auth\.refresh_token_ttl"),
        (
            {"algorithms": ("RS256",), "jwks_url": "http://idp.example.com/jwks"},
            r"auth\.jwks_url must be an https:// URL",
        ),
        (
            {"algorithms": ("RS256",), "jwks_url": "file:///etc/passwd"},
            r"auth\.jwks_url must be an https:// URL",
        ),
        (
            {"algorithms": ("RS256",), "jwks_url": "https://idp/", "jwks_refresh_interval": 0},
            r"auth\.jwks_refresh_interval",
        ),
    ],
)
async def test_invalid_config_is_refused(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await KeySet.load(AuthConfig(**settings), tmp_path)
    assert not (tmp_path / "jwt-hs256.key").exists()


async def test_public_key_that_fits_no_configured_algorithm_is_refused(tmp_path: Path) -> None:
    _, public_path = write_keys(tmp_path, ec_key())
    config = AuthConfig(algorithms=("RS256", "EdDSA"), public_key_file=str(public_path))
    with pytest.raises(ValueError, match=r"auth\.public_key_file .*EC secp256r1 key cannot verify"):
        await KeySet.load(config, tmp_path)


async def test_private_key_that_cannot_sign_the_first_algorithm_is_refused(
    tmp_path: Path,
) -> None:
    private_path, _ = write_keys(tmp_path, ec_key(), "ec")
    _, public_path = write_keys(tmp_path, rsa_key(), "rsa")
    config = AuthConfig(
        algorithms=("RS256", "ES256"),
        public_key_file=str(public_path),
        private_key_file=str(private_path),
    )
    with pytest.raises(ValueError, match=r"auth\.private_key_file .* cannot sign RS256"):
        await KeySet.load(config, tmp_path)


async def test_private_key_not_matching_the_public_key_is_refused(tmp_path: Path) -> None:
    private_path, _ = write_keys(tmp_path, rsa_key(0), "a")
    _, public_path = write_keys(tmp_path, rsa_key(1), "b")
    config = AuthConfig(
        algorithms=("RS256",), public_key_file=str(public_path), private_key_file=str(private_path)
    )
    with pytest.raises(ValueError, match="does not match"):
        await KeySet.load(config, tmp_path)


async def test_rsa_key_under_2048_bits_is_refused(tmp_path: Path) -> None:
    _, public_path = write_keys(tmp_path, rsa.generate_private_key(65537, 1024))
    config = AuthConfig(algorithms=("RS256",), public_key_file=str(public_path))
    with pytest.raises(ValueError, match="1024 bits"):
        await KeySet.load(config, tmp_path)


async def test_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    _, public_path = write_keys(tmp_path, rsa_key())
    private_path = tmp_path / "encrypted.pem"
    private_path.write_bytes(
        rsa_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    config = AuthConfig(
        algorithms=("RS256",), public_key_file=str(public_path), private_key_file=str(private_path)
    )
    with pytest.raises(ValueError, match="encrypted keys are not supported"):
        await KeySet.load(config, tmp_path)


async def test_file_that_is_not_a_pem_key_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "key.pem"
    garbage.write_text("hello")
    config = AuthConfig(algorithms=("RS256",), public_key_file=str(garbage))
    with pytest.raises(ValueError, match=r"auth\.public_key_file .*not a PEM public key"):
        await KeySet.load(config, tmp_path)


async def test_public_jwks_publishes_the_rfc7638_thumbprint_as_kid(tmp_path: Path) -> None:
    # RFC 7638 §3.1's example key and its thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
        "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
        "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = RSAAlgorithm.from_jwk({"kty": "RSA", "n": n, "e": "AQAB"})
    assert isinstance(public, rsa.RSAPublicKey)
    path = tmp_path / "rfc.pub.pem"
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    keys = await KeySet.load(AuthConfig(algorithms=("RS256",), public_key_file=str(path)), tmp_path)
    (jwk,) = keys.public_jwks()["keys"]
    assert jwk == {
        "kty": "RSA",
        "n": n,
        "e": "AQAB",
        "kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
        "use": "sig",
        "alg": "RS256",
    }
    assert (await KeySet.load(AuthConfig(), tmp_path)).public_jwks() == {"keys": []}


# --- JWKS -------------------------------------------------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1, port 0, served from a thread."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.delay = 0.0
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                time.sleep(outer.delay)
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"
        # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def publish(self, kid: str, private: Any, **extra: Any) -> None:
        """Add ``private``'s public key to the set under ``kid``."""
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig", **extra})


_PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib would send requests for 127.0.0.1 through a proxy named in the environment."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def jwks(no_proxy: None) -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def jwks_verifier(
    server: JwksServer, clock: Clock, algorithms: tuple[str, ...] = ("RS256",)
) -> TokenVerifier:
    config = AuthConfig(algorithms=algorithms, jwks_url=server.url, jwks_refresh_interval=INTERVAL)
    keys = await KeySet.load(config, Path("/nonexistent"), clock=clock)
    return TokenVerifier(keys, config, clock=Clock())


def rs256(kid: str, private: Any, **overrides: Any) -> str:
    return sign(claims(**overrides), private, "RS256", headers={"kid": kid})


async def test_jwks_token_is_verified(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    jwks.keys.append({**json.loads(ECAlgorithm.to_jwk(ec_key().public_key())), "kid": "e1"})
    verifier = await jwks_verifier(jwks, Clock(), ("RS256", "ES256"))
    assert (await verifier.verify(rs256("k1", rsa_key(0)))).subject == "user-1"
    es256 = sign(claims(), ec_key(), "ES256", headers={"kid": "e1"})
    assert (await verifier.verify(es256)).subject == "user-1"
    assert jwks.requests == 1


async def test_jwks_token_without_kid_is_refused(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    verifier = await jwks_verifier(jwks, Clock())
    with pytest.raises(AuthError) as caught:
        await verifier.verify(sign(claims(), rsa_key(0), "RS256"))
    assert caught.value.reason == "KEY_UNKNOWN"


async def test_unknown_kids_are_refused_with_one_fetch_per_interval(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    assert jwks.requests == 1
    for kid in ("unknown-1", "unknown-2", "unknown-3"):
        with pytest.raises(AuthError) as caught:
            await verifier.verify(rs256(kid, rsa_key(0)))
        assert caught.value.reason == "KEY_UNKNOWN"
    assert jwks.requests == 1  # within the interval of the first fetch

    clock.now += INTERVAL
    for kid in ("unknown-4", "unknown-5"):
        with pytest.raises(AuthError) as caught:
            await verifier.verify(rs256(kid, rsa_key(0)))
        assert caught.value.reason == "KEY_UNKNOWN"
    assert jwks.requests == 2  # one refetch, then throttled again


async def test_concurrent_unknown_kids_share_one_fetch(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    clock.now += INTERVAL
    jwks.delay = 0.05
    results = await asyncio.gather(
        *(verifier.verify(rs256(f"unknown-{n}", rsa_key(0))) for n in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, AuthError) and r.reason == "KEY_UNKNOWN" for r in results)
    assert jwks.requests == 2


async def test_rotated_key_is_accepted_after_the_interval(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    jwks.publish("k2", rsa_key(1))
    rotated = rs256("k2", rsa_key(1))
    with pytest.raises(AuthError) as caught:
        await verifier.verify(rotated)
    assert caught.value.reason == "KEY_UNKNOWN"

    clock.now += INTERVAL
    assert (await verifier.verify(rotated)).subject == "user-1"
    assert (await verifier.verify(rs256("k1", rsa_key(0)))).subject == "user-1"
    assert jwks.requests == 2


async def test_key_removed_from_the_jwks_is_refused_after_a_refresh(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    assert await verifier.verify(rs256("k1", rsa_key(0), jti="a"))
    jwks.keys.clear()
    jwks.publish("k2", rsa_key(1))
    clock.now += INTERVAL
    with pytest.raises(AuthError) as caught:
        await verifier.verify(rs256("k1", rsa_key(0), jti="b"))
    assert caught.value.reason == "KEY_UNKNOWN"
    assert jwks.requests == 2


async def test_jwks_fetch_does_not_block_the_event_loop(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    jwks.delay = 0.2
    clock.now += INTERVAL
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(AuthError):
            await verifier.verify(rs256("unknown", rsa_key(0)))
    finally:
        ticker.cancel()
    assert ticks >= 5


async def test_known_key_is_served_while_a_refresh_is_under_way(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    jwks.delay = 0.3
    clock.now += INTERVAL
    refreshing = asyncio.create_task(verifier.verify(rs256("k1", rsa_key(0), jti="a")))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    assert await verifier.verify(rs256("k1", rsa_key(0), jti="b"))
    assert time.perf_counter() - started < 0.1
    assert await refreshing


@pytest.mark.usefixtures("no_proxy")
async def test_unreachable_jwks_makes_tokens_unavailable_not_invalid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = AuthConfig(algorithms=("RS256",), jwks_url=f"http://127.0.0.1:{port}/jwks")
    keys = await KeySet.load(config, Path("/nonexistent"), clock=Clock())
    assert "fetching JWKS" in caplog.text
    verifier = TokenVerifier(keys, config, clock=Clock())
    with pytest.raises(StatusError) as caught:
        await verifier.verify(rs256("k1", rsa_key(0)))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert not isinstance(caught.value, AuthError)


async def test_failed_refresh_keeps_the_known_keys(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    jwks.status = 500
    clock.now += INTERVAL
    assert await verifier.verify(rs256("k1", rsa_key(0)))
    assert jwks.requests == 2


async def test_failed_fetch_is_retried_before_the_interval(jwks: JwksServer) -> None:
    jwks.status = 500
    clock = Clock(1000.0)
    verifier = await jwks_verifier(jwks, clock)
    jwks.status = 200
    jwks.publish("k1", rsa_key(0))
    clock.now += 5
    assert await verifier.verify(rs256("k1", rsa_key(0)))
    assert jwks.requests == 2


async def test_hmac_key_in_the_jwks_is_never_used(jwks: JwksServer) -> None:
    # A JWKS "oct" key would turn the endpoint into an HMAC secret store.
    jwks.publish("k1", rsa_key(0))
    jwks.keys.append({"kty": "oct", "k": b64(SECRET), "kid": "h1", "alg": "HS256"})
    verifier = await jwks_verifier(jwks, Clock())
    hs256 = sign(claims(), SECRET, "HS256", headers={"kid": "h1"})
    with pytest.raises(AuthError) as caught:
        await verifier.verify(hs256)
    assert caught.value.reason == "ALGORITHM_NOT_ALLOWED"
    with pytest.raises(AuthError) as caught:
        await verifier.verify(rs256("h1", rsa_key(0)))
    assert caught.value.reason == "KEY_UNKNOWN"


async def test_jwks_key_is_used_only_with_the_algorithm_it_declares(jwks: JwksServer) -> None:
    jwks.publish("pss", rsa_key(0), alg="PS256")
    jwks.publish("enc", rsa_key(1), use="enc")
    verifier = await jwks_verifier(jwks, Clock(), ("RS256", "PS256"))
    with pytest.raises(AuthError) as caught:
        await verifier.verify(rs256("pss", rsa_key(0)))
    assert caught.value.reason == "KEY_UNKNOWN"
    pss = sign(claims(), rsa_key(0), "PS256", headers={"kid": "pss"})
    assert await verifier.verify(pss)
    with pytest.raises(AuthError) as caught:
        await verifier.verify(rs256("enc", rsa_key(1)))
    assert caught.value.reason == "KEY_UNKNOWN"


async def test_pem_key_and_jwks_work_together(tmp_path: Path, jwks: JwksServer) -> None:
    jwks.publish("remote", rsa_key(1))
    private_path, public_path = write_keys(tmp_path, rsa_key(0))
    config = AuthConfig(
        algorithms=("RS256",),
        public_key_file=str(public_path),
        private_key_file=str(private_path),
        jwks_url=jwks.url,
    )
    keys = await KeySet.load(config, tmp_path, clock=Clock())
    verifier = TokenVerifier(keys, config, clock=Clock())
    own, _ = TokenIssuer(keys, config, clock=Clock()).issue_access(_principal())
    assert (await verifier.verify(own)).subject == "user-1"  # our kid: the PEM key
    assert await verifier.verify(sign(claims(), rsa_key(0), "RS256"))  # no kid: the PEM key
    assert await verifier.verify(rs256("remote", rsa_key(1)))  # JWKS kid
    with pytest.raises(AuthError) as caught:
        await verifier.verify(rs256("remote", rsa_key(0)))
    assert caught.value.reason == "SIGNATURE_INVALID"


async def test_jwks_only_setup_verifies_but_cannot_issue(jwks: JwksServer) -> None:
    jwks.publish("k1", rsa_key(0))
    config = AuthConfig(algorithms=("RS256",), jwks_url=jwks.url)
    keys = await KeySet.load(config, Path("/nonexistent"))
    assert not keys.can_sign
    with pytest.raises(RuntimeError, match="no signing key"):
        TokenIssuer(keys, config).issue_access(_principal())


def _principal() -> Principal:
    return Principal("user-1", expires_at=NOW)
