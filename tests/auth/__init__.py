"""Helpers shared by the auth tests: real keys, real tokens made with PyJWT, a clock."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: The tests' "now": fixed, so exp/nbf/iat cases are exact.
NOW = 1_800_000_000.0
SECRET = bytes(range(64))
#: Marks a claim to leave out of :func:`claims`.
DROP = object()


class Clock:
    """A settable clock, for ``clock=`` parameters."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@functools.cache
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """An RSA 2048 key; generated once per index per run (generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    """An EC P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    """An Ed25519 key."""
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private: Any) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of ``private``'s public key."""
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def write_keys(folder: Path, private: Any, name: str = "key") -> tuple[Path, Path]:
    """Write ``private`` and its public key as PEM files; (private path, public path)."""
    private_path = folder / f"{name}.pem"
    public_path = folder / f"{name}.pub.pem"
    private_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_path.write_bytes(public_pem(private))
    return private_path, public_path


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid access-token payload at :data:`NOW`; ``name=DROP`` leaves a claim out."""
    payload: dict[str, Any] = {
        "iss": "nexus",
        "aud": "nexus",
        "sub": "user-1",
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "typ": "access",
        "jti": "token-1",
        "roles": ["admin", "clerk"],
        "perms": ["orders.read:team", "orders.write:own"],
        "team": "team-7",
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not DROP}


def sign(
    payload: dict[str, Any], key: Any, algorithm: str, headers: dict[str, Any] | None = None
) -> str:
    """A token made by PyJWT directly."""
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(data: bytes | dict[str, Any]) -> str:
    """Unpadded base64url of bytes, or of a dict as compact JSON."""
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any] | bytes, secret: bytes) -> str:
    """An HMAC-SHA256-signed token built by hand, for what PyJWT refuses to make.

    (Non-string claims, a non-string kid, an HMAC "secret" that is a public key PEM.)
    """
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"
