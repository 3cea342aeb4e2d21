"""Password guessing is throttled per account, not only per source address.

The issue: 10 addresses x 12 tries reached the password check of one account 100
times, and the right password was still accepted after ~130 failures. Clients here
connect from ten different loopback addresses (127.0.0.2 ... 127.0.0.11) over REST,
and over gRPC from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc, records_pb2

from nexus_grpc.config import AuthConfig, LimitsConfig
from nexus_grpc.storage import Storage
from nexus_grpc.testing import RunningHost, running_host

PASSWORD = "correct horse battery"
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 12)]
TRIES = 12
#: Each address may try 12 times per attack (two attacks per test at most): the
#: per-address limit is not what stops them here.
LIMITS = LimitsConfig(
    rate_classes={
        "default": {"rate": 1000.0, "burst": 1000.0},
        "login": {"rate": 0.01, "burst": float(2 * TRIES)},
    }
)


async def start(
    tmp_path: Path, auth: AuthConfig, limits: LimitsConfig = LIMITS
) -> AsyncIterator[RunningHost]:
    async with running_host(
        plugins=["auth"], data_dir=tmp_path, http=True, limits=limits, auth=auth
    ) as host:
        await auth_pb2_grpc.AuthServiceStub(
            host.channel(host.token("root", grants=("*.*:all",)))
        ).CreateUser(
            auth_pb2.CreateUserRequest(
                user=auth_pb2.User(username="victim", roles=["customer"]), password=PASSWORD
            )
        )
        yield host


@pytest.fixture
async def locked_long(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """The first lockout lasts a minute: longer than any test here."""
    async for host in start(tmp_path, AuthConfig(login_lockout_base=60.0)):
        yield host


@pytest.fixture
async def locked_briefly(tmp_path: Path) -> AsyncIterator[RunningHost]:
    async for host in start(tmp_path, AuthConfig(login_lockout_base=0.3, login_lockout_max=0.6)):
        yield host


async def guess(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post("/v1/auth/login", json={"username": username, "password": password})


async def attack(host: RunningHost, username: str) -> Counter[tuple[int, str]]:
    """10 addresses x 12 wrong passwords, the addresses in parallel; HTTP statuses
    and error reasons."""

    async def from_address(address: str) -> list[tuple[int, str]]:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(base_url=host.http_url, transport=transport) as http:
            answers = []
            for n in range(TRIES):
                response = await guess(http, username, f"wrong password {n}")
                answers.append((response.status_code, response.json()["details"][0]["reason"]))
            return answers

    results = await asyncio.gather(*(from_address(address) for address in ADDRESSES))
    return Counter(status for statuses in results for status in statuses)


async def test_many_addresses_reach_the_password_check_a_few_times_only(
    locked_long: RunningHost,
) -> None:
    statuses = await attack(locked_long, "victim")
    # 401 = the password was checked (and wrong); 429 = refused before the check.
    assert statuses[(401, "LOGIN_FAILED")] == 5, statuses
    assert_refused_otherwise(statuses)
    # The right password is refused too while the account is locked: a guess that
    # happens to be right is not let through, nor told apart.
    async with httpx.AsyncClient(base_url=locked_long.http_url) as http:
        right = await guess(http, "victim", PASSWORD)
    assert right.status_code == 429
    body = right.json()
    assert body["details"][0]["reason"] == "LOGIN_THROTTLED"
    assert int(right.headers["retry-after"]) > 1
    # gRPC: RESOURCE_EXHAUSTED with RetryInfo.
    stub = auth_pb2_grpc.AuthServiceStub(locked_long.channel())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Login(auth_pb2.LoginRequest(username="victim", password=PASSWORD))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(caught.value) > 1.0


async def test_unknown_user_names_are_throttled_alike(locked_long: RunningHost) -> None:
    """Otherwise the throttle would tell which names exist."""
    known, unknown = await attack(locked_long, "victim"), await attack(locked_long, "nobody")
    assert known[(401, "LOGIN_FAILED")] == unknown[(401, "LOGIN_FAILED")] == 5, (known, unknown)
    assert_refused_otherwise(known)
    assert_refused_otherwise(unknown)


async def test_the_right_password_works_after_the_lockout_and_resets_the_count(
    locked_briefly: RunningHost,
) -> None:
    stub = auth_pb2_grpc.AuthServiceStub(locked_briefly.channel())
    codes = []
    for n in range(6):
        try:
            await stub.Login(auth_pb2.LoginRequest(username="victim", password=f"wrong {n}"))
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            delay = retry_delay(error) if error.code() != grpc.StatusCode.UNAUTHENTICATED else 0
    assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
    assert codes[5] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < delay <= 0.3
    await asyncio.sleep(delay + 0.05)
    tokens = await stub.Login(auth_pb2.LoginRequest(username="victim", password=PASSWORD))
    assert tokens.access_token
    # A success forgets the failures: the next wrong password is checked, not throttled.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Login(auth_pb2.LoginRequest(username="victim", password="wrong again"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_failed_logins_are_audited_in_aggregate(locked_long: RunningHost) -> None:
    await attack(locked_long, "victim")
    admin = admin_pb2_grpc.AdminServiceStub(
        locked_long.channel(locked_long.token("root", grants=("*.*:all",)))
    )
    records = (
        await admin.ListAuditRecords(
            admin_pb2.ListAuditRecordsRequest(page_size=1000, actor="victim")
        )
    ).records
    denied = [r for r in records if r.outcome == admin_pb2.OUTCOME_DENIED]
    # 120 attempts: a record when the streak started (when the attempts came one at a
    # time) and one when the lockout began; not one per attempt.
    assert 1 <= len(denied) <= 2, [r.reason for r in denied]
    assert all(r.action == "auth.login" for r in denied)
    counts = [re.match(r"(\d+) failed login", r.reason) for r in denied]
    # Failures of attempts checked concurrently with the one that locked the name are
    # reported with the next record (next lockout, or a success).
    assert 1 <= sum(int(match[1]) for match in counts if match) <= 5
    sources = set(re.findall(r"127\.0\.0\.\d+", " ".join(r.reason for r in denied)))
    assert sources <= set(ADDRESSES) and len(sources) >= 2
    assert any("locked for" in r.reason for r in denied)


def assert_refused_otherwise(statuses: Counter[tuple[int, str]]) -> None:
    """Every attempt but the five checked ones was refused before the password check.

    Nearly all as LOGIN_THROTTLED; on a machine so loaded that the database stays busy
    for seconds, an attempt may instead be refused as a storage conflict (409), which
    refuses it just the same (the count is taken before the password check).
    """
    refused = {key: n for key, n in statuses.items() if key != (401, "LOGIN_FAILED")}
    assert set(refused) <= {(429, "LOGIN_THROTTLED"), (409, "CONFLICT")}, statuses
    assert sum(refused.values()) == len(ADDRESSES) * TRIES - 5, statuses
    assert refused.get((429, "LOGIN_THROTTLED"), 0) >= 100, statuses


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """Seconds of the RetryInfo detail of ``error``."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    raise AssertionError("no RetryInfo")


async def test_forgotten_user_names_are_swept_from_storage(tmp_path: Path) -> None:
    """Guessing many names must not grow the storage without bound."""
    unlimited = LimitsConfig(
        rate_classes={name: {"rate": 1e3, "burst": 1e3} for name in ("default", "login")}
    )
    async for host in start(tmp_path, AuthConfig(login_failure_window=0.2), unlimited):
        stub = auth_pb2_grpc.AuthServiceStub(host.channel())
        for n in range(10):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Login(auth_pb2.LoginRequest(username=f"ghost{n}", password="x"))
        storage = await Storage.connect(host.host.config.storage_url())
        records = storage.namespace("plugins/security/auth").repository(
            records_pb2.LoginFailureRecord
        )
        assert len((await records.list(page_size=100)).items) == 10
        await asyncio.sleep(0.3)  # every name is forgotten now
        # 32 attempts make the sweep read a page; they come from the name "late".
        for _ in range(32):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Login(auth_pb2.LoginRequest(username="late", password="x"))
        left = {record.id for record in (await records.list(page_size=100)).items}
        await storage.close()
        assert left == {"late"}


async def test_instances_sharing_storage_share_the_count(tmp_path: Path) -> None:
    """Guesses spread over two instances on one database reach the check 5 times in all."""
    auth = AuthConfig(login_lockout_base=60.0)
    async for first in start(tmp_path, auth):
        async with running_host(
            plugins=["auth"], data_dir=tmp_path, limits=LIMITS, auth=auth
        ) as second:
            codes: Counter[grpc.StatusCode] = Counter()
            for n in range(12):
                host = (first, second)[n % 2]
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await auth_pb2_grpc.AuthServiceStub(host.channel()).Login(
                        auth_pb2.LoginRequest(username="victim", password=f"wrong {n}")
                    )
                codes[caught.value.code()] += 1
            assert codes == {
                grpc.StatusCode.UNAUTHENTICATED: 5,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 7,
            }


#: An address no test here guesses from: a newcomer to the account.
NEW_ADDRESS = "127.0.0.12"


async def login_from(host: RunningHost, address: str, password: str) -> httpx.Response:
    """A REST login of ``victim`` from ``address``."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=host.http_url, transport=transport) as http:
        return await guess(http, "victim", password)


async def grpc_login(host: RunningHost, password: str) -> grpc.StatusCode:
    """A gRPC login of ``victim`` from 127.0.0.1 (the user's usual address here)."""
    try:
        await auth_pb2_grpc.AuthServiceStub(host.channel()).Login(
            auth_pb2.LoginRequest(username="victim", password=password)
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_locked_account_still_admits_its_user_from_a_usual_address(
    locked_long: RunningHost,
) -> None:
    """The lock stops guessers, not the user logging in from where it did before."""
    assert await grpc_login(locked_long, PASSWORD) == grpc.StatusCode.OK
    statuses = await attack(locked_long, "victim")
    assert statuses[(401, "LOGIN_FAILED")] == 5, statuses
    assert_refused_otherwise(statuses)
    # Locked for a minute, yet the user gets in from 127.0.0.1.
    assert await grpc_login(locked_long, PASSWORD) == grpc.StatusCode.OK
    # Its success did not lift the lock for anyone else: the attackers' addresses and a
    # new one stay refused, the right password included.
    for address in (ADDRESSES[0], NEW_ADDRESS):
        response = await login_from(locked_long, address, PASSWORD)
        assert response.status_code == 429, response.text
    # Guesses from the user's address (an attacker behind the same NAT) pass the lock
    # five times between two successes of the user, no more.
    codes = [await grpc_login(locked_long, f"typo {n}") for n in range(6)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert await grpc_login(locked_long, PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_one_guess_per_lockout_cannot_keep_the_user_out(tmp_path: Path) -> None:
    """The attack the lock alone allowed: each time a lock ends, the attacker spends one
    guess, which opens the next. The user keeps logging in from its usual address, and
    the attacker reaches the password check once per window, no more."""
    window = 3.0  # generous: the user's login must land inside it on a slow machine
    auth = AuthConfig(login_lockout_base=window, login_lockout_max=window)
    async for host in start(tmp_path, auth):
        assert await grpc_login(host, PASSWORD) == grpc.StatusCode.OK
        checked: Counter[int] = Counter()
        for n in range(5):
            response = await login_from(host, ADDRESSES[n], f"wrong {n}")
            checked[response.status_code] += 1
        assert checked == {401: 5}  # the fifth failure opened the first lock
        rounds = 2
        for round_ in range(rounds):
            # Locked: the user from its usual address gets in; a newcomer does not, so
            # the lock was still open when the user came (it came first).
            assert await grpc_login(host, PASSWORD) == grpc.StatusCode.OK
            refused = await login_from(host, NEW_ADDRESS, PASSWORD)
            assert refused.status_code == 429, refused.text
            # More guesses during the lock: refused before the password check.
            for address in ADDRESSES[5:8]:
                response = await login_from(host, address, f"again {round_}")
                checked[response.status_code] += 1
            # The attacker waits for the lock to end and spends one guess: it opens
            # the next lock.
            await asyncio.sleep(int(refused.headers["retry-after"]) + 0.1)
            response = await login_from(host, ADDRESSES[8 + round_], f"next {round_}")
            checked[response.status_code] += 1
        assert await grpc_login(host, PASSWORD) == grpc.StatusCode.OK
        assert checked == {401: 5 + rounds, 429: 3 * rounds}, checked


async def test_a_lockout_longer_than_the_failure_window_is_not_cut_short(
    tmp_path: Path,
) -> None:
    """Failures forgotten after the window must not end a lock that is still open."""
    # A window long enough for five failed logins on a loaded machine (each hashes a
    # password), short beside the lock.
    auth = AuthConfig(login_lockout_base=60.0, login_failure_window=2.0)
    async for host in start(tmp_path, auth):
        for n in range(5):
            response = await login_from(host, ADDRESSES[n], f"wrong {n}")
            assert response.status_code == 401
        await asyncio.sleep(2.5)  # past the failure window, well inside the lock
        response = await login_from(host, ADDRESSES[5], "wrong again")
        assert response.status_code == 429, response.text
