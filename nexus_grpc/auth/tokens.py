"""Verifying and issuing JWTs: the token a caller presents becomes a :class:`Principal`.

Verification parses the compact JWS itself and calls PyJWT's algorithm objects with
keys prepared once at load time. ``jwt.decode`` would re-prepare the key on every
call (for an HMAC secret that means trying to parse it as DER and JSON), check time
claims against the wall clock instead of ours, and fold distinct failures into one
exception type; clients here get one stable reason per failure.

Verified tokens are cached by their exact text until they expire, so a caller
presenting the same token again costs a dict lookup, not a signature check.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
import jwt

from nexus_grpc.auth.keys import ALGORITHMS, KeySet, check_auth_config
from nexus_grpc.auth.principal import Grant, Principal
from nexus_grpc.config import AuthConfig
from nexus_grpc.errors import StatusError

__all__ = ["AuthError", "KeySet", "TokenIssuer", "TokenVerifier"]

TOKEN_TYPES = ("access", "refresh")
_WRONG_TYPE = {"access": "token is not an access token", "refresh": "token is not a refresh token"}
_REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "typ")
#: Unpadded base64url, as RFC 7515 requires; anything else is not ours to guess at.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class AuthError(StatusError):
    """A token was refused: UNAUTHENTICATED with a stable ``reason``.

    The message is short and safe to send: it never quotes the token or any key.
    ``metadata["claim"]`` names the claim for CLAIM_MISSING and CLAIM_INVALID.
    """

    def __init__(self, reason: str, message: str, *, claim: str = "") -> None:
        super().__init__(
            grpc.StatusCode.UNAUTHENTICATED,
            message,
            reason=reason,
            metadata={"claim": claim} if claim else {},
        )


def _malformed(message: str = "token is not a well-formed JWT") -> AuthError:
    return AuthError("TOKEN_MALFORMED", message)


def _b64decode(segment: str) -> bytes:
    """Strict unpadded base64url; ValueError otherwise."""
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as error:
        raise ValueError("not base64url") from error
    # The last character may carry unused bits; one spelling only, so that a token
    # cannot be altered and still verify.
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("not canonical base64url")
    return data


class TokenVerifier:
    """Checks tokens and maps their claims to a :class:`Principal`."""

    def __init__(
        self,
        keys: KeySet,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        check_auth_config(config)
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (no cache) or more, got {cache_size}")
        self._keys = keys
        self._clock = clock
        self._cache_size = cache_size
        self._algorithms = frozenset(config.algorithms)
        self._issuer = config.issuer
        self._audience = config.audience
        self._leeway = config.leeway
        self._max_bytes = config.max_token_bytes
        # One cache per token type: a refresh token verified as such must not be a
        # cache hit when presented as an access token. Values: (principal, valid until).
        # OrderedDict because popitem(last=False) evicts the oldest in O(1).
        self._caches: dict[str, OrderedDict[str, tuple[Principal, float]]] = {
            token_type: OrderedDict() for token_type in TOKEN_TYPES
        }

    async def verify(self, token: str, *, token_type: str = "access") -> Principal:
        """The principal ``token`` describes; AuthError when it is not acceptable.

        ``token_type`` is the ``typ`` claim required: ``"access"`` or ``"refresh"``.
        """
        if not token:
            raise AuthError("TOKEN_MISSING", "no token was presented")
        # Before anything else: an attacker's megabyte of junk costs one len().
        # Characters, not bytes: a longer-in-bytes token is non-ASCII, hence malformed.
        if len(token) > self._max_bytes:
            raise AuthError("TOKEN_TOO_LARGE", "token is too large")
        cache = self._caches.get(token_type)
        if cache is None:
            raise ValueError(f"token_type must be 'access' or 'refresh', got {token_type!r}")
        cached = cache.get(token)
        if cached is not None:
            # A cached token expires like any other: exp is checked on every hit.
            if self._clock() < cached[1]:
                return cached[0]
            del cache[token]
            raise AuthError("TOKEN_EXPIRED", "token has expired")
        principal, valid_until = await self._verify(token, token_type)
        if self._cache_size:
            if len(cache) >= self._cache_size:
                cache.popitem(last=False)
            cache[token] = (principal, valid_until)
        return principal

    def clear_cache(self) -> None:
        """Forget every verified token (after a key was revoked, say)."""
        for cache in self._caches.values():
            cache.clear()

    async def _verify(self, token: str, token_type: str) -> tuple[Principal, float]:
        if not token.isascii():
            raise _malformed()
        parts = token.split(".")
        if len(parts) != 3:
            raise _malformed("token is not a JWT (header.payload.signature)")
        header_part, payload_part, signature_part = parts
        try:
            header = json.loads(_b64decode(header_part))
            signature = _b64decode(signature_part)
        except (ValueError, RecursionError):
            raise _malformed() from None
        if not isinstance(header, dict):
            raise _malformed()
        algorithm = header.get("alg")
        # The allow-list comes from configuration, never from the token: "none",
        # and any family other than the configured one, stop here.
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise AuthError("ALGORITHM_NOT_ALLOWED", "token algorithm is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed()
        if "crit" in header:
            # RFC 7515 §4.1.11: extensions we do not implement must make the token fail.
            raise _malformed("token uses unsupported critical header parameters")
        key = await self._keys.verification_key(algorithm, kid)
        if key is None:
            raise AuthError("KEY_UNKNOWN", "token was signed with an unknown key")
        signing_input = token[: len(header_part) + 1 + len(payload_part)].encode("ascii")
        if not ALGORITHMS[algorithm].verify(signing_input, key, signature):
            raise AuthError("SIGNATURE_INVALID", "token signature is invalid")
        # The payload is parsed only once the signature proved who wrote it.
        try:
            claims = json.loads(_b64decode(payload_part))
        except (ValueError, RecursionError):
            raise _malformed() from None
        if not isinstance(claims, dict):
            raise _malformed()
        return self._principal(claims, token_type)

    def _principal(self, claims: dict[str, Any], token_type: str) -> tuple[Principal, float]:
        for name in _REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise AuthError("CLAIM_MISSING", f"token has no {name} claim", claim=name)
        expires = _number(claims, "exp")
        issued = _number(claims, "iat")
        not_before = None if claims.get("nbf") is None else _number(claims, "nbf")
        if _string(claims, "iss") != self._issuer:
            raise AuthError("ISSUER_INVALID", "token issuer is not accepted")
        self._check_audience(claims["aud"])
        if _string(claims, "typ") != token_type:
            raise AuthError("TOKEN_TYPE_INVALID", _WRONG_TYPE[token_type])
        now = self._clock()
        leeway = self._leeway
        if now >= expires + leeway:
            raise AuthError("TOKEN_EXPIRED", "token has expired")
        if not_before is not None and not_before > now + leeway:
            raise AuthError("TOKEN_NOT_YET_VALID", "token is not valid yet")
        if issued > now + leeway:
            raise AuthError("ISSUED_IN_FUTURE", "token was issued in the future")
        subject = _string(claims, "sub")
        if not subject:
            raise _invalid("sub")
        perms = _strings(claims, "perms")
        try:
            grants = frozenset(Grant.parse(text) for text in perms)
        except ValueError:
            raise _invalid("perms") from None
        principal = Principal(
            subject=subject,
            roles=tuple(_strings(claims, "roles")),
            grants=grants,
            team=_string(claims, "team", ""),
            token_id=_string(claims, "jti", ""),
            expires_at=float(expires),
            epoch=_epoch(claims),
        )
        return principal, expires + leeway

    def _check_audience(self, audience: Any) -> None:
        # Exact comparison only: "nexus-evil", "nexu" and "xnexus" are other audiences.
        if isinstance(audience, str):
            accepted = audience == self._audience
        elif isinstance(audience, list):
            if not all(isinstance(item, str) for item in audience):
                raise _invalid("aud")
            accepted = self._audience in audience
        else:
            raise _invalid("aud")
        if not accepted:
            raise AuthError("AUDIENCE_INVALID", "token audience is not accepted")


def _invalid(name: str) -> AuthError:
    return AuthError("CLAIM_INVALID", f"token claim {name} is invalid", claim=name)


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    # bool is an int in Python, and JSON lets NaN, Infinity and 400-digit integers
    # through: none of them is a date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(name)
    try:
        number = float(value)
    except OverflowError:
        raise _invalid(name) from None
    if not math.isfinite(number):
        raise _invalid(name)
    return number


def _epoch(claims: dict[str, Any]) -> int:
    value = claims.get("ep", 0)
    # A JSON number that is not a plain integer is not an epoch (and bool is an int).
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise _invalid("ep")
    return value


def _string(claims: dict[str, Any], name: str, default: str | None = None) -> str:
    value = claims.get(name, default)
    if not isinstance(value, str):
        raise _invalid(name)
    return value


def _strings(claims: dict[str, Any], name: str) -> list[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid(name)
    return value


class TokenIssuer:
    """Signs access and refresh tokens with the first configured algorithm."""

    def __init__(
        self, keys: KeySet, config: AuthConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        check_auth_config(config)
        self._keys = keys
        self._config = config
        self._clock = clock
        self._algorithm = config.algorithms[0]

    def issue_access(self, principal: Principal) -> tuple[str, int]:
        """A signed access token for ``principal`` and its lifetime in seconds."""
        if not principal.subject:
            raise ValueError("the principal has no subject")
        ttl = self._config.access_token_ttl
        claims = self._claims(principal.subject, ttl, "access", uuid.uuid4().hex)
        claims["roles"] = list(principal.roles)
        claims["perms"] = sorted(str(grant) for grant in principal.grants)
        claims["team"] = principal.team
        claims["ep"] = principal.epoch
        return self._sign(claims), ttl

    def issue_refresh(self, subject: str, token_id: str, *, epoch: int = 0) -> tuple[str, int]:
        """A signed refresh token whose ``jti`` is ``token_id``, and its lifetime.

        ``epoch`` is the user's token epoch (see nexus_grpc.auth.sessions).
        """
        if not subject or not token_id:
            raise ValueError("a refresh token needs a subject and a token id")
        ttl = self._config.refresh_token_ttl
        claims = self._claims(subject, ttl, "refresh", token_id)
        claims["ep"] = epoch
        return self._sign(claims), ttl

    def _claims(self, subject: str, ttl: int, token_type: str, token_id: str) -> dict[str, Any]:
        now = int(self._clock())
        return {
            "iss": self._config.issuer,
            "aud": self._config.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": token_id,
            "typ": token_type,
        }

    def _sign(self, claims: dict[str, Any]) -> str:
        key, kid = self._keys.signing_key(self._algorithm)
        headers = {"kid": kid} if kid else None
        return jwt.encode(claims, key, algorithm=self._algorithm, headers=headers)
