"""Password hashing with scrypt, a memory-hard KDF from the standard library."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

# ~16 MiB and ~50 ms per hash on these machines: expensive for an attacker with a
# stolen table, cheap enough for a login. Stored with each hash, so raising them later
# keeps old hashes verifiable.
_N, _R, _P = 2**14, 8, 1
_LENGTH = 32


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_LENGTH, maxmem=64 * 1024 * 1024
    )


def _encode(salt: bytes, digest: bytes) -> str:
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


async def hash_password(password: str) -> str:
    """The encoded scrypt hash of ``password`` (computed off the event loop)."""
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(_derive, password, salt, _N, _R, _P)
    return _encode(salt, digest)


async def verify_password(password: str, encoded: str | None) -> bool:
    """Whether ``password`` matches ``encoded``; takes as long when there is no hash."""
    if encoded is None:
        # Unknown user: spend the same time so timing does not tell which users exist.
        await hash_password(password)
        return False
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        derived = await asyncio.to_thread(
            _derive, password, base64.b64decode(salt), int(n), int(r), int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, base64.b64decode(digest))
