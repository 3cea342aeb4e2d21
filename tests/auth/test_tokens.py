"""Token verification and issuing: the attack matrix, with real keys and real tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nexus_grpc.auth import tokens
from nexus_grpc.auth.principal import Grant, Principal, Scope
from nexus_grpc.auth.tokens import AuthError, KeySet, TokenIssuer, TokenVerifier
from nexus_grpc.config import AuthConfig
from tests.auth import (
    DROP,
    NOW,
    SECRET,
    Clock,
    b64,
    claims,
    ec_key,
    ed_key,
    forge,
    public_pem,
    rsa_key,
    sign,
    write_keys,
)

PRIVATE_KEYS = {"RS256": rsa_key, "PS256": rsa_key, "ES256": ec_key, "EdDSA": ed_key}
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ALL_ALGORITHMS = ["HS256", "HS512", "RS256", "PS256", "ES256", "EdDSA"]

EXPECTED = Principal(
    subject="user-1",
    roles=("admin", "clerk"),
    grants=frozenset({Grant("orders", "read", Scope.TEAM), Grant("orders", "write", Scope.OWN)}),
    team="team-7",
    token_id="token-1",
    expires_at=NOW + 600,
)


async def setup(
    tmp_path: Path,
    algorithm: str = "HS256",
    clock: Clock | None = None,
    *,
    cache_size: int = 10_000,
    **settings: Any,
) -> tuple[TokenVerifier, Any, AuthConfig]:
    """A verifier for ``algorithm`` and the key that signs tokens it accepts."""
    if algorithm.startswith("HS"):
        secret_path = tmp_path / "secret.key"
        secret_path.write_bytes(SECRET)
        secret_path.chmod(0o600)
        config = AuthConfig(algorithms=(algorithm,), secret_file=str(secret_path), **settings)
        signing_key: Any = SECRET
    else:
        signing_key = PRIVATE_KEYS[algorithm]()
        private_path, public_path = write_keys(tmp_path, signing_key)
        config = AuthConfig(
            algorithms=(algorithm,),
            public_key_file=str(public_path),
            private_key_file=str(private_path),
            **settings,
        )
    keys = await KeySet.load(config, tmp_path)
    verifier = TokenVerifier(keys, config, clock=clock or Clock(), cache_size=cache_size)
    return verifier, signing_key, config


@pytest.fixture(scope="module")
def es256(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenVerifier, str]:
    """One ES256 verifier and a token it accepts, shared by the property tests.

    (PEM-key verifiers hold no event-loop state, so building it in its own loop is fine.)
    """
    verifier, key, _ = asyncio.run(setup(tmp_path_factory.mktemp("es256"), "ES256"))
    return verifier, sign(claims(), key, "ES256")


async def refused(
    verifier: TokenVerifier, token: str, reason: str, *, token_type: str = "access"
) -> AuthError:
    """Assert ``token`` is refused with ``reason``, and the message leaks nothing."""
    with pytest.raises(AuthError) as caught:
        await verifier.verify(token, token_type=token_type)
    error = caught.value
    assert error.reason == reason, error.message
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert len(error.message) < 80
    if len(token) > 8:
        assert token not in error.message
        assert not any(part and part in error.message for part in token.split(".") if len(part) > 8)
    return error


# --- valid tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
async def test_valid_token_gives_the_principal(tmp_path: Path, algorithm: str) -> None:
    verifier, key, _ = await setup(tmp_path, algorithm)
    principal = await verifier.verify(sign(claims(), key, algorithm))
    assert principal == EXPECTED


async def test_token_without_optional_claims_gives_an_empty_principal(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    payload = claims(roles=DROP, perms=DROP, team=DROP, jti=DROP)
    principal = await verifier.verify(sign(payload, key, "HS256"))
    assert principal == Principal(subject="user-1", expires_at=NOW + 600)


async def test_audience_list_containing_ours_is_accepted(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    principal = await verifier.verify(sign(claims(aud=["billing", "nexus"]), key, "HS256"))
    assert principal.subject == "user-1"


async def test_kid_is_only_a_hint_when_one_key_is_configured(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path, "RS256")
    token = sign(claims(), key, "RS256", headers={"kid": "issuer-key-2024"})
    assert (await verifier.verify(token)).subject == "user-1"


# --- missing, oversized and malformed -------------------------------------------------


async def test_missing_token_is_refused(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path)
    await refused(verifier, "", "TOKEN_MISSING")


async def test_oversized_token_is_refused_before_any_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, key, _ = await setup(tmp_path, max_token_bytes=1024)
    valid = sign(claims(), key, "HS256")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized token was parsed")

    monkeypatch.setattr(tokens, "_b64decode", never)
    monkeypatch.setattr(json, "loads", never)
    monkeypatch.setattr(jwt, "decode", never)
    # Junk that is not even base64 beyond the limit: parsing would say MALFORMED.
    await refused(verifier, valid + "!" * 1024, "TOKEN_TOO_LARGE")
    await refused(verifier, "x" * 10_000_000, "TOKEN_TOO_LARGE")


async def test_token_at_the_size_limit_is_accepted(tmp_path: Path) -> None:
    token = sign(claims(), SECRET, "HS256")
    verifier, _, _ = await setup(tmp_path, max_token_bytes=len(token))
    assert (await verifier.verify(token)).subject == "user-1"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-token", id="one-part"),
        pytest.param("a.b", id="two-parts"),
        pytest.param("a.b.c.d", id="four-parts"),
        pytest.param("..", id="empty-parts"),
        pytest.param("!!!!.e30.c2ln", id="header-not-base64"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9=.e30.c2ln", id="header-padded"),
        pytest.param(f"{b64(b'{not json')}.e30.c2ln", id="header-not-json"),
        pytest.param(f"{b64(b'[1, 2]')}.e30.c2ln", id="header-not-object"),
        pytest.param(f"{b64({'alg': 'HS256'})}.e30.!!!!", id="signature-not-base64"),
        pytest.param("é.é.é", id="not-ascii"),
    ],
)
async def test_malformed_token_is_refused(tmp_path: Path, token: str) -> None:
    verifier, _, _ = await setup(tmp_path)
    await refused(verifier, token, "TOKEN_MALFORMED")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[1, 2]", id="not-object"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
async def test_signed_payload_that_is_not_a_claims_object_is_refused(
    tmp_path: Path, payload: bytes
) -> None:
    verifier, _, _ = await setup(tmp_path)
    token = forge({"alg": "HS256", "typ": "JWT"}, payload, SECRET)
    await refused(verifier, token, "TOKEN_MALFORMED")


async def test_kid_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path)
    token = forge({"alg": "HS256", "kid": 5}, claims(), SECRET)
    await refused(verifier, token, "TOKEN_MALFORMED")


async def test_critical_header_extension_is_refused(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path)
    token = forge({"alg": "HS256", "crit": ["exp"], "exp": 1}, claims(), SECRET)
    await refused(verifier, token, "TOKEN_MALFORMED")


# --- algorithms -------------------------------------------------------------------------


@pytest.mark.parametrize("configured", ["HS256", "RS256"])
@pytest.mark.parametrize("name", ["none", "None", "NONE", "nOnE"])
async def test_unsigned_alg_none_token_is_refused(
    tmp_path: Path, configured: str, name: str
) -> None:
    verifier, _, _ = await setup(tmp_path, configured)
    unsigned = f"{b64({'alg': name, 'typ': 'JWT'})}.{b64(claims())}"
    await refused(verifier, unsigned + ".", "ALGORITHM_NOT_ALLOWED")
    await refused(verifier, unsigned, "TOKEN_MALFORMED")


async def test_token_without_alg_is_refused(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path)
    await refused(verifier, forge({"typ": "JWT"}, claims(), SECRET), "ALGORITHM_NOT_ALLOWED")


async def test_hs256_token_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    # The key-confusion attack: the public key is public, so if HS256 were tried with
    # the configured "key" as an HMAC secret, anyone could mint tokens.
    verifier, key, _ = await setup(tmp_path, "RS256")
    pem = public_pem(key)
    for secret in (pem, pem.strip()):
        await refused(verifier, forge({"alg": "HS256"}, claims(), secret), "ALGORITHM_NOT_ALLOWED")


async def test_rs256_token_is_refused_when_hs256_is_configured(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path, "HS256")
    await refused(verifier, sign(claims(), rsa_key(), "RS256"), "ALGORITHM_NOT_ALLOWED")


async def test_es256_token_is_refused_when_only_rs256_is_configured(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path, "RS256")
    await refused(verifier, sign(claims(), ec_key(), "ES256"), "ALGORITHM_NOT_ALLOWED")


async def test_key_fitting_no_token_algorithm_is_unknown(tmp_path: Path) -> None:
    # RS256 and ES256 are both allowed, but the one configured key is RSA.
    signing_key = rsa_key()
    _, public_path = write_keys(tmp_path, signing_key)
    config = AuthConfig(algorithms=("RS256", "ES256"), public_key_file=str(public_path))
    verifier = TokenVerifier(await KeySet.load(config, tmp_path), config, clock=Clock())
    await refused(verifier, sign(claims(), ec_key(), "ES256"), "KEY_UNKNOWN")
    assert (await verifier.verify(sign(claims(), signing_key, "RS256"))).subject == "user-1"


# --- signatures -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256", "EdDSA"])
async def test_token_signed_with_another_key_is_refused(tmp_path: Path, algorithm: str) -> None:
    verifier, _, _ = await setup(tmp_path, algorithm)
    others: dict[str, Callable[[], Any]] = {
        "HS256": lambda: b"another secret, 32 bytes or more!",
        "RS256": lambda: rsa_key(1),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }
    other = others[algorithm]()
    await refused(verifier, sign(claims(), other, algorithm), "SIGNATURE_INVALID")


@pytest.mark.parametrize("algorithm", ["HS256", "RS256"])
async def test_tampered_payload_is_refused(tmp_path: Path, algorithm: str) -> None:
    verifier, key, _ = await setup(tmp_path, algorithm)
    header, _, signature = sign(claims(), key, algorithm).split(".")
    promoted = b64(claims(sub="admin", roles=["admin", "root"]))
    await refused(verifier, f"{header}.{promoted}.{signature}", "SIGNATURE_INVALID")


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "PS256", "ES256", "EdDSA"])
async def test_tampered_signature_is_refused(tmp_path: Path, algorithm: str) -> None:
    verifier, key, _ = await setup(tmp_path, algorithm)
    header, payload, signature = sign(claims(), key, algorithm).split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    raw = jwt.utils.base64url_decode(signature)
    shorter, longer = b64(raw[:-1]), b64(raw + b"\0")
    for forged in (flipped, "", "AAAA", shorter, longer, "A" * 2000):
        await refused(verifier, f"{header}.{payload}.{forged}", "SIGNATURE_INVALID")


async def test_signature_with_altered_unused_bits_is_refused(tmp_path: Path) -> None:
    # 32 signature bytes take 43 characters; the last one has 2 unused bits, so four
    # spellings decode to the same bytes. Only the canonical one is accepted.
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(), key, "HS256")
    last = BASE64URL.index(token[-1])
    for spare in (1, 2, 3):
        await refused(verifier, token[:-1] + BASE64URL[last ^ spare], "TOKEN_MALFORMED")
    assert await verifier.verify(token)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), replacement=st.sampled_from(BASE64URL + "."))
async def test_any_one_character_change_is_refused(
    es256: tuple[TokenVerifier, str], position: int, replacement: str
) -> None:
    verifier, token = es256
    position %= len(token)
    assume(token[position] != replacement)
    altered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(AuthError):
        await verifier.verify(altered)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.one_of(
        st.text(max_size=300),
        st.lists(st.text(BASE64URL, max_size=60), min_size=1, max_size=5).map(".".join),
        st.tuples(st.dictionaries(st.text(max_size=5), st.text(max_size=5)), st.binary()).map(
            lambda parts: f"{b64(parts[0])}.{b64(parts[1])}.{b64(parts[1])}"
        ),
    )
)
async def test_arbitrary_input_only_ever_raises_auth_error(
    es256: tuple[TokenVerifier, str], token: str
) -> None:
    verifier, _ = es256
    with pytest.raises(AuthError):
        await verifier.verify(token)


# --- time claims ----------------------------------------------------------------------


async def test_expired_token_is_refused(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)  # leeway 30 s
    await refused(verifier, sign(claims(exp=int(NOW) - 30), key, "HS256"), "TOKEN_EXPIRED")


async def test_token_expired_within_the_leeway_is_accepted(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    principal = await verifier.verify(sign(claims(exp=int(NOW) - 29), key, "HS256"))
    assert principal.expires_at == NOW - 29


async def test_leeway_is_configurable(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path, leeway=0)
    await refused(verifier, sign(claims(exp=int(NOW)), key, "HS256"), "TOKEN_EXPIRED")


async def test_token_not_yet_valid_is_refused(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(nbf=int(NOW) + 31), key, "HS256")
    await refused(verifier, token, "TOKEN_NOT_YET_VALID")


async def test_nbf_within_the_leeway_is_accepted(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    assert await verifier.verify(sign(claims(nbf=int(NOW) + 30), key, "HS256"))


async def test_token_issued_in_the_future_is_refused(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(iat=int(NOW) + 31), key, "HS256")
    await refused(verifier, token, "ISSUED_IN_FUTURE")


# --- required claims, issuer, audience, types ------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "typ"])
async def test_missing_required_claim_is_refused(tmp_path: Path, claim: str) -> None:
    verifier, _, _ = await setup(tmp_path)
    for value in (DROP, None):  # absent, or null
        token = forge({"alg": "HS256"}, claims(**{claim: value}), SECRET)
        error = await refused(verifier, token, "CLAIM_MISSING")
        assert error.metadata == {"claim": claim}
        assert re.search(rf"\b{claim}\b", error.message)


@pytest.mark.parametrize("issuer", ["evil", "Nexus", "nexus ", "nexus-evil", "nexu", "xnexus", ""])
async def test_wrong_issuer_is_refused(tmp_path: Path, issuer: str) -> None:
    verifier, key, _ = await setup(tmp_path)
    await refused(verifier, sign(claims(iss=issuer), key, "HS256"), "ISSUER_INVALID")


@pytest.mark.parametrize(
    "audience",
    [
        "nexus-evil",
        "nexu",
        "xnexus",
        "NEXUS",
        "nexus ",
        "",
        ["billing"],
        ["nexus-evil", "xnexus", "nexu"],
        [],
    ],
)
async def test_wrong_audience_is_refused(tmp_path: Path, audience: object) -> None:
    verifier, key, _ = await setup(tmp_path)
    await refused(verifier, sign(claims(aud=audience), key, "HS256"), "AUDIENCE_INVALID")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("roles", "admin"),
        ("roles", ["admin", 1]),
        ("perms", "orders.read:all"),
        ("perms", [["orders.read:all"]]),
        ("team", 7),
        ("jti", 7),
        ("sub", 7),
        ("sub", ""),
        ("iss", ["nexus"]),
        ("typ", 1),
        ("aud", 7),
        ("aud", ["nexus", 7]),
        ("exp", "soon"),
        ("exp", True),
        ("exp", float("inf")),
        ("exp", float("nan")),
        ("exp", 10**400),
        ("iat", "2027-01-01"),
        ("nbf", "later"),
    ],
)
async def test_claim_of_the_wrong_type_is_refused(
    tmp_path: Path, claim: str, value: object
) -> None:
    verifier, _, _ = await setup(tmp_path)
    # Hand-made: PyJWT refuses to encode some of these, a hostile issuer would not.
    token = forge({"alg": "HS256"}, claims(**{claim: value}), SECRET)
    error = await refused(verifier, token, "CLAIM_INVALID")
    assert error.metadata == {"claim": claim}


@pytest.mark.parametrize(
    "perm", ["orders-read:all", "orders.read", "orders.read:galaxy", ".read:all", "orders.:own"]
)
async def test_malformed_permission_is_refused(tmp_path: Path, perm: str) -> None:
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(perms=["orders.read:all", perm]), key, "HS256")
    error = await refused(verifier, token, "CLAIM_INVALID")
    assert error.metadata == {"claim": "perms"}


async def test_refresh_token_is_refused_as_an_access_token(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(typ="refresh"), key, "HS256")
    await refused(verifier, token, "TOKEN_TYPE_INVALID")
    assert (await verifier.verify(token, token_type="refresh")).subject == "user-1"


async def test_access_token_is_refused_as_a_refresh_token(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(), key, "HS256")
    await refused(verifier, token, "TOKEN_TYPE_INVALID", token_type="refresh")


async def test_unknown_token_type_is_a_programming_error(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    with pytest.raises(ValueError, match="token_type"):
        await verifier.verify(sign(claims(), key, "HS256"), token_type="id")


# --- the cache ------------------------------------------------------------------------


def count_key_lookups(verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each signature check's key lookup (a cache miss)."""
    keys = verifier._keys
    original = keys.verification_key
    lookups: list[str] = []

    async def counting(algorithm: str, kid: str | None) -> Any:
        lookups.append(algorithm)
        return await original(algorithm, kid)

    monkeypatch.setattr(keys, "verification_key", counting)
    return lookups


async def test_cache_hit_returns_the_same_principal_without_a_signature_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, key, _ = await setup(tmp_path, "RS256")
    lookups = count_key_lookups(verifier, monkeypatch)
    token = sign(claims(), key, "RS256")
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first
    assert lookups == ["RS256"]


async def test_expired_cached_token_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    verifier, key, _ = await setup(tmp_path, clock=clock)
    token = sign(claims(exp=int(NOW) + 60), key, "HS256")
    assert await verifier.verify(token)
    clock.now = NOW + 60 + 29  # within the leeway: still the cached principal
    assert await verifier.verify(token)
    clock.now = NOW + 60 + 30
    await refused(verifier, token, "TOKEN_EXPIRED")
    await refused(verifier, token, "TOKEN_EXPIRED")  # evicted, and expired when re-checked


async def test_cache_evicts_the_oldest_token_when_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, key, _ = await setup(tmp_path, cache_size=2)
    lookups = count_key_lookups(verifier, monkeypatch)
    first, second, third = (sign(claims(jti=f"t{n}"), key, "HS256") for n in range(3))
    for token in (first, second, third):
        await verifier.verify(token)
    assert len(lookups) == 3
    await verifier.verify(third)
    await verifier.verify(second)
    assert len(lookups) == 3
    await verifier.verify(first)  # evicted: checked again
    assert len(lookups) == 4


async def test_cache_size_zero_turns_the_cache_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier, key, _ = await setup(tmp_path, cache_size=0)
    lookups = count_key_lookups(verifier, monkeypatch)
    token = sign(claims(), key, "HS256")
    await verifier.verify(token)
    await verifier.verify(token)
    assert len(lookups) == 2


async def test_cached_access_token_is_still_refused_as_a_refresh_token(tmp_path: Path) -> None:
    verifier, key, _ = await setup(tmp_path)
    token = sign(claims(), key, "HS256")
    await verifier.verify(token)
    await refused(verifier, token, "TOKEN_TYPE_INVALID", token_type="refresh")


async def test_refused_token_is_not_cached(tmp_path: Path) -> None:
    clock = Clock(NOW - 3600)
    verifier, key, _ = await setup(tmp_path, clock=clock)
    token = sign(claims(), key, "HS256")
    await refused(verifier, token, "ISSUED_IN_FUTURE")
    clock.now = NOW
    assert await verifier.verify(token)


# --- issuing --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
async def test_issued_access_token_verifies_to_the_same_principal(
    tmp_path: Path, algorithm: str
) -> None:
    verifier, _, config = await setup(tmp_path, algorithm)
    issuer = TokenIssuer(verifier._keys, config, clock=Clock())
    principal = Principal(
        "user-9", roles=("clerk",), grants=EXPECTED.grants, team="team-1", token_id="ignored"
    )
    token, expires_in = issuer.issue_access(principal)
    assert expires_in == config.access_token_ttl
    verified = await verifier.verify(token)
    assert verified.subject == "user-9"
    assert verified.roles == ("clerk",)
    assert verified.grants == EXPECTED.grants
    assert verified.team == "team-1"
    assert re.fullmatch("[0-9a-f]{32}", verified.token_id)
    assert verified.expires_at == NOW + expires_in


async def test_issued_access_token_carries_the_documented_claims(tmp_path: Path) -> None:
    verifier, key, config = await setup(tmp_path, "RS256")
    issuer = TokenIssuer(verifier._keys, config, clock=Clock())
    token, _ = issuer.issue_access(EXPECTED)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(
        token,
        key.public_key(),
        algorithms=["RS256"],
        audience="nexus",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    jwks = verifier._keys.public_jwks()
    assert header["alg"] == "RS256"
    assert header["kid"] == jwks["keys"][0]["kid"]
    assert set(payload) == {
        "iss",
        "aud",
        "sub",
        "iat",
        "nbf",
        "exp",
        "jti",
        "typ",
        "roles",
        "perms",
        "team",
        "ep",
    }
    assert payload["typ"] == "access"
    assert payload["iat"] == payload["nbf"] == int(NOW)
    assert payload["exp"] == int(NOW) + 900
    assert payload["perms"] == ["orders.read:team", "orders.write:own"]
    assert payload["jti"] != EXPECTED.token_id


async def test_hmac_tokens_carry_no_kid(tmp_path: Path) -> None:
    verifier, _, config = await setup(tmp_path)
    token, _ = TokenIssuer(verifier._keys, config, clock=Clock()).issue_access(EXPECTED)
    assert "kid" not in jwt.get_unverified_header(token)


async def test_issued_refresh_token_verifies_only_as_a_refresh_token(tmp_path: Path) -> None:
    verifier, _, config = await setup(tmp_path, "EdDSA")
    issuer = TokenIssuer(verifier._keys, config, clock=Clock())
    token, expires_in = issuer.issue_refresh("user-1", "refresh-42")
    assert expires_in == config.refresh_token_ttl == 7 * 24 * 3600
    principal = await verifier.verify(token, token_type="refresh")
    assert (principal.subject, principal.token_id) == ("user-1", "refresh-42")
    await refused(verifier, token, "TOKEN_TYPE_INVALID")


async def test_issuer_signs_with_the_first_configured_algorithm(tmp_path: Path) -> None:
    private_path, public_path = write_keys(tmp_path, rsa_key())
    config = AuthConfig(
        algorithms=("PS256", "RS256"),
        public_key_file=str(public_path),
        private_key_file=str(private_path),
    )
    keys = await KeySet.load(config, tmp_path)
    token, _ = TokenIssuer(keys, config).issue_access(EXPECTED)
    assert jwt.get_unverified_header(token)["alg"] == "PS256"


async def test_issuer_without_a_signing_key_raises(tmp_path: Path) -> None:
    _, public_path = write_keys(tmp_path, rsa_key())
    config = AuthConfig(algorithms=("RS256",), public_key_file=str(public_path))
    keys = await KeySet.load(config, tmp_path)
    assert not keys.can_sign
    issuer = TokenIssuer(keys, config)
    with pytest.raises(RuntimeError, match="private_key_file"):
        issuer.issue_access(EXPECTED)
    with pytest.raises(RuntimeError, match="private_key_file"):
        issuer.issue_refresh("user-1", "r1")


async def test_verifier_and_issuer_check_their_config(tmp_path: Path) -> None:
    verifier, _, _ = await setup(tmp_path)
    with pytest.raises(ValueError, match="'none'"):
        TokenVerifier(verifier._keys, AuthConfig(algorithms=("HS256", "none")))
    with pytest.raises(ValueError, match=r"auth\.leeway"):
        TokenIssuer(verifier._keys, AuthConfig(leeway=3600))


def test_forged_hmac_helper_matches_pyjwt() -> None:
    # The hand-made tokens above are only meaningful if they are real HS256 tokens.
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(), SECRET)
    decoded = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        audience="nexus",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded == claims()
    header, payload, _ = token.split(".")
    expected = hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert token.endswith(b64(expected))
    assert json.loads(jwt.utils.base64url_decode(header)) == {"alg": "HS256", "typ": "JWT"}
