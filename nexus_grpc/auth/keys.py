"""Keys that sign and verify tokens: an HMAC secret, PEM files, or a JWKS endpoint.

The algorithm family is fixed by configuration, never by a token: HMAC setups hold
one secret, asymmetric setups hold public keys (from a file and/or a JWKS endpoint)
that are only ever used with the algorithms their key type allows. That is what
defeats algorithm confusion (an ``HS256`` token "signed" with a public key's PEM).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK, PyJWKClient
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError, PyJWTError

from nexus_grpc.config import AuthConfig
from nexus_grpc.errors import StatusError
from nexus_grpc.loopback import is_loopback_host

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "KeySet",
    "VerificationKey",
    "check_auth_config",
]

_log = logging.getLogger("nexus.auth")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_CURVES) | {"EdDSA"}

#: PyJWT's implementations, looked up by name; ``none`` is never reachable because
#: only names that passed :func:`check_auth_config` are ever looked up.
ALGORITHMS: dict[str, Algorithm] = {
    name: algorithm
    for name, algorithm in get_default_algorithms().items()
    if name in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
}

#: RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
#: Name of the secret generated in the data folder when no secret_file is set.
GENERATED_SECRET_NAME = "jwt-hs256.key"
_GENERATED_SECRET_BYTES = 64
_MAX_LEEWAY = 60.0
_JWKS_TIMEOUT = 10.0
#: After a failed JWKS fetch, retry sooner than the refresh interval: an endpoint that
#: was down at start-up must not lock every JWKS token out for a whole interval.
_JWKS_RETRY_AFTER_FAILURE = 5.0
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
#: Members of the RFC 7638 thumbprint, per key type.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def check_auth_config(config: AuthConfig) -> None:
    """Refuse settings that are unsafe or cannot work; ValueError naming the setting."""
    algorithms = config.algorithms
    if not algorithms:
        raise ValueError("auth.algorithms is empty: name at least one, e.g. HS256 or RS256")
    for name in algorithms:
        if name.strip().lower() == "none":
            raise ValueError("auth.algorithms must not contain 'none': it accepts unsigned tokens")
        if name not in ALGORITHMS:
            known = ", ".join(sorted(ALGORITHMS))
            raise ValueError(f"auth.algorithms: unknown algorithm {name!r} (known: {known})")
    hmac = set(algorithms) & HMAC_ALGORITHMS
    if hmac and len(hmac) != len(set(algorithms)):
        # With both families allowed, a public key could be fed to HMAC as a secret.
        raise ValueError(
            "auth.algorithms mixes HMAC (HS*) and asymmetric algorithms; use one family"
        )
    if hmac:
        for setting in ("public_key_file", "private_key_file", "jwks_url"):
            if getattr(config, setting):
                raise ValueError(
                    f"auth.{setting} needs asymmetric auth.algorithms (e.g. RS256, ES256, "
                    f"EdDSA); {', '.join(algorithms)} use auth.secret_file"
                )
    else:
        if config.secret_file:
            raise ValueError(
                "auth.secret_file needs HMAC auth.algorithms (HS256/384/512); "
                f"{', '.join(algorithms)} use auth.public_key_file or auth.jwks_url"
            )
        if not config.public_key_file and not config.jwks_url:
            raise ValueError(
                f"auth.algorithms {', '.join(algorithms)} need auth.public_key_file "
                "or auth.jwks_url to verify tokens with"
            )
    if not (math.isfinite(config.leeway) and 0 <= config.leeway <= _MAX_LEEWAY):
        raise ValueError(
            f"auth.leeway must be between 0 and {_MAX_LEEWAY:g} seconds, got {config.leeway!r}"
        )
    if config.max_token_bytes <= 0:
        raise ValueError(f"auth.max_token_bytes must be positive, got {config.max_token_bytes}")
    if not config.issuer:
        raise ValueError("auth.issuer must not be empty")
    if not config.audience:
        raise ValueError("auth.audience must not be empty")
    for setting in ("access_token_ttl", "refresh_token_ttl"):
        if getattr(config, setting) <= 0:
            raise ValueError(f"auth.{setting} must be positive, got {getattr(config, setting)}")
    if config.jwks_url:
        _check_jwks_url(config.jwks_url)
        interval = config.jwks_refresh_interval
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"auth.jwks_refresh_interval must be positive, got {interval!r}")
    _check_session_settings(config)


def _check_session_settings(config: AuthConfig) -> None:
    """The epoch cache and login throttling settings; ValueError naming the setting."""
    for name in ("session_check_ttl", "login_lockout_base", "login_failure_window"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"auth.{name} must be a positive number of seconds, got {value!r}")
    if not (
        math.isfinite(config.login_lockout_max)
        and config.login_lockout_max >= config.login_lockout_base
    ):
        raise ValueError(
            "auth.login_lockout_max must be at least auth.login_lockout_base, got "
            f"{config.login_lockout_max!r}"
        )
    if config.login_free_failures < 1:
        raise ValueError(
            f"auth.login_free_failures must be 1 or more, got {config.login_free_failures}"
        )


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    # Plain http lets anyone on the path swap in their own keys; allow it only for a
    # server on this machine (tests, a sidecar).
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise ValueError(
        f"auth.jwks_url must be an https:// URL (http:// only for localhost), got {url!r}"
    )


@dataclass(frozen=True)
class VerificationKey:
    """A key that checks signatures, with the algorithms it may be used with."""

    #: The secret (bytes) for HMAC, else a ``cryptography`` public key.
    key: Any
    algorithms: frozenset[str]
    #: Key id: from the JWKS, or the RFC 7638 thumbprint of a PEM key; None for HMAC.
    kid: str | None = None


@dataclass(frozen=True)
class _SigningKey:
    key: Any
    algorithms: frozenset[str]
    kid: str | None


class KeySet:
    """Verification keys (a secret, a PEM public key, JWKS keys) and the signing key.

    Build it with :meth:`load`; the constructor takes already loaded keys.
    """

    def __init__(
        self,
        algorithms: frozenset[str],
        static: VerificationKey | None,
        signing: _SigningKey | None,
        jwks: _JwksKeys | None,
    ) -> None:
        self._algorithms = algorithms
        self._static = static
        self._signing = signing
        self._jwks = jwks

    @classmethod
    async def load(
        cls,
        config: AuthConfig,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> KeySet:
        """Check ``config``, read or generate the keys it names, fetch the JWKS once.

        ``clock`` paces JWKS fetches (monotonic seconds). A JWKS endpoint that cannot be
        reached now is only logged: tokens are refused until a later fetch succeeds.
        """
        check_auth_config(config)
        # File reads (and the first-run secret generation) block: keep them off the loop.
        static, signing = await asyncio.to_thread(_load_static_keys, config, Path(data_dir))
        jwks = None
        if config.jwks_url:
            jwks = _JwksKeys(
                config.jwks_url,
                frozenset(config.algorithms),
                config.jwks_refresh_interval,
                clock,
            )
            await jwks.refresh()
        return cls(frozenset(config.algorithms), static, signing, jwks)

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms these keys were loaded for."""
        return self._algorithms

    @property
    def can_sign(self) -> bool:
        """Whether a signing key (HMAC secret or private key) is available."""
        return self._signing is not None

    async def verification_key(self, algorithm: str, kid: str | None) -> Any | None:
        """The key that checks a token signed with ``algorithm`` and ``kid``; None if unknown.

        May fetch the JWKS (in a thread, throttled) when ``kid`` is not known yet, or
        when the known keys are older than ``jwks_refresh_interval``.
        """
        static = self._static
        # The PEM key (or secret) serves tokens naming it, tokens naming no key, and, with
        # no JWKS to choose from, any kid: with a single key the kid is only a hint and
        # the signature decides.
        if static is not None and (self._jwks is None or kid is None or kid == static.kid):
            return static.key if algorithm in static.algorithms else None
        if self._jwks is None or kid is None:
            return None
        found = await self._jwks.get(kid)
        if found is None or algorithm not in found.algorithms:
            return None
        return found.key

    def signing_key(self, algorithm: str) -> tuple[Any, str | None]:
        """The key and key id that sign with ``algorithm``.

        RuntimeError when there is no signing key (verification-only setups).
        """
        signing = self._signing
        if signing is None:
            raise RuntimeError(
                "no signing key: set auth.private_key_file to issue tokens "
                "(this setup only verifies tokens issued elsewhere)"
            )
        if algorithm not in signing.algorithms:
            raise RuntimeError(f"the signing key cannot sign {algorithm}")
        return signing.key, signing.kid

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS of the PEM public key, for an endpoint other services fetch.

        Empty for HMAC (a secret is never published) and for JWKS-only setups.
        """
        static = self._static
        if static is None or static.kid is None:
            return {"keys": []}
        jwk = _public_jwk(static.key)
        jwk.update(kid=static.kid, use="sig")
        if len(static.algorithms) == 1:
            (jwk["alg"],) = static.algorithms
        return {"keys": [jwk]}


def _load_static_keys(
    config: AuthConfig, data_dir: Path
) -> tuple[VerificationKey | None, _SigningKey | None]:
    allowed = frozenset(config.algorithms)
    if allowed <= HMAC_ALGORITHMS:
        secret = _load_secret(config, data_dir)
        return VerificationKey(secret, allowed), _SigningKey(secret, allowed, None)
    static = None
    if config.public_key_file:
        public = _load_public_key(config.public_key_file)
        algorithms = _usable_algorithms(public, allowed)
        if not algorithms:
            raise ValueError(
                f"auth.public_key_file {config.public_key_file}: a {_describe(public)} key "
                f"cannot verify any of auth.algorithms ({', '.join(config.algorithms)})"
            )
        static = VerificationKey(public, algorithms, _thumbprint(public))
    signing = None
    if config.private_key_file:
        private = _load_private_key(config.private_key_file)
        first = config.algorithms[0]
        algorithms = _usable_algorithms(private, allowed)
        if first not in algorithms:
            raise ValueError(
                f"auth.private_key_file {config.private_key_file}: a {_describe(private)} key "
                f"cannot sign {first} (auth.algorithms[0], the algorithm tokens are issued with)"
            )
        public = private.public_key()
        if static is not None and _spki(static.key) != _spki(public):
            raise ValueError(
                f"auth.private_key_file {config.private_key_file} does not match "
                f"auth.public_key_file {config.public_key_file}: issued tokens would not verify"
            )
        signing = _SigningKey(private, algorithms, _thumbprint(public))
    return static, signing


def _load_secret(config: AuthConfig, data_dir: Path) -> bytes:
    if config.secret_file:
        path = Path(config.secret_file)
        setting = "auth.secret_file"
        secret = _read(path, setting)
    else:
        path = data_dir / GENERATED_SECRET_NAME
        setting = "generated secret"
        secret = _read_or_generate_secret(path)
    _warn_if_exposed(path)
    needed = max(MIN_SECRET_BYTES, *(_HMAC_MIN_BYTES[name] for name in config.algorithms))
    if len(secret) < needed:
        raise ValueError(
            f"{setting} {path}: the secret is {len(secret)} bytes, "
            f"{', '.join(config.algorithms)} need at least {needed} random bytes"
        )
    try:
        # PyJWT's own check: refuses a "secret" that is really a PEM/DER/JWK key.
        ALGORITHMS[config.algorithms[0]].prepare_key(secret)
    except InvalidKeyError:
        raise ValueError(f"{setting} {path}: holds an asymmetric key, not an HMAC secret") from None
    return secret


def _read_or_generate_secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written to a private temp file (mkstemp: mode 0600) and linked into place, never
    # renamed over: when several workers start together exactly one secret wins, and
    # nobody ever reads a half-written file.
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".jwt-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(secrets.token_bytes(_GENERATED_SECRET_BYTES))
            temp.flush()
            os.fsync(temp.fileno())
        try:
            os.link(temp_name, path)
            _log.warning(
                "generated a new token signing secret in %s; set auth.secret_file "
                "to share one secret between hosts",
                path,
            )
        except FileExistsError:
            pass
    finally:
        os.unlink(temp_name)
    return path.read_bytes()


def _warn_if_exposed(path: Path) -> None:
    if os.name != "posix":
        return
    info = path.stat()
    exposed = info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    if exposed == stat.S_IRGRP and info.st_gid == os.getegid():
        # Group-read for the process's own group only: what Kubernetes makes of a Secret
        # volume's 0400 files under the pod's fsGroup (0440, group = fsGroup = the
        # process's gid). Whoever could read it through that group runs as this process's
        # group already; warning on every start would only teach operators to ignore it.
        return
    if exposed:
        _log.warning(
            "token secret %s is readable by other users (mode %o)", path, info.st_mode & 0o777
        )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{setting} {path} does not exist") from None
    except OSError as error:
        raise ValueError(f"{setting} {path} cannot be read: {error.strerror}") from None


def _load_public_key(name: str) -> Any:
    data = _read(Path(name), "auth.public_key_file")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ValueError(
            f"auth.public_key_file {name}: not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    _check_strength(key, "auth.public_key_file", name)
    return key


def _load_private_key(name: str) -> Any:
    data = _read(Path(name), "auth.private_key_file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"auth.private_key_file {name}: encrypted keys are not supported"
        ) from None
    except ValueError:
        raise ValueError(
            f"auth.private_key_file {name}: not a PEM private key (-----BEGIN PRIVATE KEY-----)"
        ) from None
    _check_strength(key, "auth.private_key_file", name)
    return key


def _check_strength(key: Any, setting: str, name: str) -> None:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"{setting} {name}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed"
        )


def _usable_algorithms(key: Any, allowed: frozenset[str]) -> frozenset[str]:
    """The algorithms of ``allowed`` that ``key``'s type and curve fit."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        fitting = _RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        fitting = frozenset(
            name for name, curve in _EC_CURVES.items() if isinstance(key.curve, curve)
        )
    elif isinstance(
        key,
        ed25519.Ed25519PublicKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PublicKey
        | ed448.Ed448PrivateKey,
    ):
        fitting = frozenset({"EdDSA"})
    else:
        # HMAC secrets (kty "oct") and anything else: never an asymmetric verifier.
        fitting = frozenset()
    return fitting & allowed


def _describe(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey")


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _public_jwk(key: Any) -> dict[str, Any]:
    family = next(iter(_usable_algorithms(key, ASYMMETRIC_ALGORITHMS)))
    jwk = dict(ALGORITHMS[family].to_jwk(key, as_dict=True))
    jwk.pop("key_ops", None)
    return jwk


def _thumbprint(key: Any) -> str:
    """RFC 7638 JWK thumbprint: a key id any party can recompute from the public key."""
    jwk = _public_jwk(key)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


class _JwksKeys:
    """Keys from a JWKS endpoint by kid, fetched at most once per refresh interval."""

    def __init__(
        self,
        url: str,
        allowed: frozenset[str],
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._url = url
        self._allowed = allowed
        self._interval = interval
        self._clock = clock
        # PyJWKClient's own cache and cooldown run on its wall clock and refetch on
        # every cache miss after a cooldown; the throttle here is the one that counts.
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=_JWKS_TIMEOUT)
        self._keys: dict[str, VerificationKey] = {}
        #: Clock reading from which the next fetch may happen.
        self._next_fetch = -math.inf
        self._last_fetch_failed = False
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> VerificationKey | None:
        """The key named ``kid``; refetches when unknown or stale, within the throttle."""
        found = self._keys.get(kid)
        # Known keys stay usable while a refresh is under way: only the caller that
        # started it waits for the endpoint.
        if found is not None and (self._clock() < self._next_fetch or self._lock.locked()):
            return found
        await self.refresh()
        found = self._keys.get(kid)
        if found is None and self._last_fetch_failed:
            # Not the caller's fault: the key may well exist. UNAVAILABLE says "retry".
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "token verification keys are unavailable; retry later",
                reason="KEYS_UNAVAILABLE",
            )
        return found

    async def refresh(self) -> None:
        """Fetch the JWKS unless one was fetched less than an interval ago."""
        async with self._lock:
            now = self._clock()
            if now < self._next_fetch:
                return
            # Set before fetching so that callers queued on the lock see the throttle.
            self._next_fetch = now + self._interval
            try:
                keys = await asyncio.to_thread(self._fetch)
            except (PyJWTError, OSError, ValueError) as error:
                self._next_fetch = now + min(self._interval, _JWKS_RETRY_AFTER_FAILURE)
                self._last_fetch_failed = True
                # Keep the keys we have: an outage of the endpoint must not lock users out.
                _log.warning("fetching JWKS from %s failed: %s", self._url, error)
                return
            self._last_fetch_failed = False
            self._keys = keys

    def _fetch(self) -> dict[str, VerificationKey]:
        data = self._client.fetch_data()
        entries = data.get("keys")
        if not isinstance(entries, list):
            raise ValueError("the JWKS has no keys list")
        keys: dict[str, VerificationKey] = {}
        for entry in entries:
            found = self._parse(entry)
            if found is not None and found.kid is not None:
                keys[found.kid] = found
        if not keys:
            raise ValueError("the JWKS holds no key usable with auth.algorithms")
        return keys

    def _parse(self, entry: Any) -> VerificationKey | None:
        if not isinstance(entry, dict):
            return None
        kid, use, declared = entry.get("kid"), entry.get("use"), entry.get("alg")
        if not isinstance(kid, str) or not kid or use not in (None, "sig"):
            return None
        try:
            key = PyJWK.from_dict(entry).key
        except PyJWTError:
            return None
        if isinstance(key, _PRIVATE_KEY_TYPES):
            # A JWKS should never hold private parts; if it does, use only the public one.
            key = key.public_key()
        algorithms = _usable_algorithms(key, self._allowed)
        if declared is not None:
            if not isinstance(declared, str):
                return None
            # RFC 7517 §4.4: a key that names its algorithm is for that algorithm only.
            algorithms &= {declared}
        if not algorithms:
            return None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            _log.warning("ignoring JWKS key %r: RSA key of %d bits", kid, key.key_size)
            return None
        return VerificationKey(key, algorithms, kid)
