"""The authentication attack matrix, each case over gRPC and over REST.

Tokens are real JWTs made here with PyJWT and the host's own secret (or hand-built
where PyJWT refuses to make the broken thing). Every refusal must be UNAUTHENTICATED
(401 with WWW-Authenticate over REST) and must never reach the handler.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tests.security.conftest import DROP, Client, Forger, b64, unsigned

NOW = int(time.time())


def assert_refused(outcome: Any, client: Client) -> None:
    assert outcome.code == "UNAUTHENTICATED", outcome
    if client.transport == "rest":
        assert outcome.http_status == 401
        assert outcome.headers["www-authenticate"].startswith("Bearer")
        assert "Traceback" not in str(outcome.body)


async def test_a_valid_token_is_accepted(client: Client, forger: Forger) -> None:
    outcome = await client.get_order(f"Bearer {forger.token()}")
    assert outcome.code == "NOT_FOUND"  # got through to the handler: the order does not exist


async def test_no_token(client: Client) -> None:
    assert_refused(await client.get_order(None), client)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer abc", "Bearer a.b.c", "Bearer !!!.@@@.###", "Basic dXNlcjpwYXNz", "token"],
    ids=["empty", "one-part", "garbage-parts", "not-base64", "basic-scheme", "no-scheme"],
)
async def test_malformed_tokens(client: Client, authorization: str) -> None:
    assert_refused(await client.get_order(authorization), client)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(client: Client, forger: Forger, alg: str) -> None:
    assert_refused(await client.get_order(f"Bearer {unsigned(forger.claims(), alg)}"), client)
    # Also without the trailing dot.
    assert_refused(await client.get_order(f"Bearer {unsigned(forger.claims(), alg)[:-1]}"), client)


async def test_expired(client: Client, forger: Forger) -> None:
    token = forger.token(iat=NOW - 7200, nbf=NOW - 7200, exp=NOW - 3600)
    assert_refused(await client.get_order(f"Bearer {token}"), client)


async def test_expired_within_the_leeway_is_accepted(client: Client, forger: Forger) -> None:
    token = forger.token(iat=NOW - 600, nbf=NOW - 600, exp=int(time.time()) - 5)
    assert (await client.get_order(f"Bearer {token}")).code == "NOT_FOUND"


async def test_not_yet_valid(client: Client, forger: Forger) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(nbf=NOW + 3600)}"), client)


async def test_issued_in_the_future(client: Client, forger: Forger) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(iat=NOW + 3600)}"), client)


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "typ"])
async def test_missing_required_claim(client: Client, forger: Forger, claim: str) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(**{claim: DROP})}"), client)


@pytest.mark.parametrize("issuer", ["nexus-evil", "nexu", "xnexus", "NEXUS", ""])
async def test_wrong_issuer(client: Client, forger: Forger, issuer: str) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(iss=issuer)}"), client)


@pytest.mark.parametrize(
    "audience", ["nexus-evil", "nexu", "xnexus", ["other"], ["nexus-api"], "nexus,other"]
)
async def test_wrong_audience_including_prefix_tricks(
    client: Client, forger: Forger, audience: Any
) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(aud=audience)}"), client)


async def test_refresh_token_used_as_access_token(client: Client, forger: Forger) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(typ='refresh')}"), client)


async def test_tampered_payload(client: Client, forger: Forger) -> None:
    header, _, signature = forger.token(sub="mallory", perms=[]).split(".")
    payload = b64(jwt.api_jws.json.dumps(forger.claims(sub="admin")).encode())  # type: ignore[attr-defined]
    assert_refused(await client.get_order(f"Bearer {header}.{payload}.{signature}"), client)


async def test_signed_with_another_secret(client: Client, forger: Forger) -> None:
    token = jwt.encode(forger.claims(), b"x" * 64, algorithm="HS256")
    assert_refused(await client.get_order(f"Bearer {token}"), client)


async def test_algorithm_outside_the_allow_list(client: Client, forger: Forger) -> None:
    token = jwt.encode(forger.claims(), forger.secret, algorithm="HS512")
    assert_refused(await client.get_order(f"Bearer {token}"), client)


async def test_oversized_token(client: Client, forger: Forger) -> None:
    # Over auth.max_token_bytes (8 KiB): refused before it is parsed. Over gRPC, HTTP/2
    # may refuse such large metadata first (RESOURCE_EXHAUSTED); either way no handler.
    token = forger.token(padding="x" * 9_000)
    outcome = await client.get_order(f"Bearer {token}")
    if client.transport == "grpc" and outcome.code == "RESOURCE_EXHAUSTED":
        return
    assert_refused(outcome, client)


async def test_malformed_permission_claim(client: Client, forger: Forger) -> None:
    assert_refused(await client.get_order(f"Bearer {forger.token(perms=['orders'])}"), client)
