"""Storage faults: an unavailable database is UNAVAILABLE and unhealthy until a probe
succeeds; no error text or log carries bound parameters; the files are owner-only."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sqlite3
import stat
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import api_pb2
from sqlalchemy.exc import DBAPIError

from nexus_grpc.storage import (
    RECORDS_TABLE,
    Repository,
    Storage,
    StorageFailure,
    StorageUnavailableError,
)
from tests.fixtures.disk import SmallDisk
from tests.fixtures.mongo import MongoServer
from tests.fixtures.postgres import PostgresServer

from . import connected

#: A value that must never appear in an error or a log line.
SECRET = "scrypt$16384$8$1$c2VjcmV0LXNhbHQ$TOP-SECRET-HASH"


def _api(name: str, version: str = "") -> api_pb2.Api:
    # Any message with a string id field will do; Api.name is one.
    return api_pb2.Api(name=name, version=version)


async def test_full_disk_fails_writes_unavailable_and_a_probe_brings_health_back(
    small_disk: SmallDisk,
) -> None:
    async with connected(f"sqlite:///{small_disk.path}/data/nexus.db") as storage:
        apis = storage.namespace("tests/faults").repository(api_pb2.Api, id_field="name")
        await apis.create(_api("before"))
        small_disk.fill()
        try:
            error = await _write_until_unavailable(apis, SECRET * 20)
            assert error.code == grpc.StatusCode.UNAVAILABLE
            assert error.message == "storage unavailable: disk full"
            assert error.reason == "STORAGE_UNAVAILABLE"
            assert "INSERT" not in str(error) and SECRET not in str(error)
            assert not storage.health.healthy
            assert storage.health.failures["disk full"] >= 1
            # Reads go on; the probe writes, so it fails while the disk is full.
            assert await apis.get("before") == _api("before")
            assert not await storage.probe()
            assert not storage.health.healthy
        finally:
            small_disk.free()
        assert await storage.probe()
        assert storage.health.healthy
        await apis.create(_api("after"))


async def test_unhealthy_storage_is_probed_until_it_works_again(small_disk: SmallDisk) -> None:
    async with connected(f"sqlite:///{small_disk.path}/nexus.db") as storage:
        changes: list[bool] = []

        async def heard(healthy: bool) -> None:
            changes.append(healthy)

        storage.health.on_change(heard)
        storage.start_probing(interval=0.05, timeout=2.0)
        apis = storage.namespace("tests/faults").repository(api_pb2.Api, id_field="name")
        small_disk.fill()
        try:
            await _write_until_unavailable(apis, "x" * 1000)
            await _eventually(lambda: changes == [False])
            probes_failed = storage.health.failures["disk full"]
            await _eventually(lambda: storage.health.failures["disk full"] > probes_failed + 1)
        finally:
            small_disk.free()
        # Nobody calls the storage now: the periodic probe alone finds it works.
        await _eventually(lambda: changes == [False, True])
        assert storage.health.healthy


async def test_read_only_postgres_is_unavailable_until_repaired(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    async with connected(postgres_url) as storage:
        apis = storage.namespace("tests/faults").repository(api_pb2.Api, id_field="name")
        await apis.create(_api("before"))
        _set_read_only(postgres_server, database, on=True)
        try:
            # The pooled connection was cut: first "connection lost", then read-only.
            causes = set()
            for number in range(3):
                with pytest.raises(StorageUnavailableError) as raised:
                    await apis.create(_api(f"during-{number}", SECRET))
                assert SECRET not in str(raised.value)
                causes.add(raised.value.cause)
            assert "read-only database" in causes
            assert not storage.health.healthy
            assert await apis.get("before") == _api("before")
            assert not await storage.probe()
        finally:
            _set_read_only(postgres_server, database, on=False)
        probed = [await storage.probe() for _ in range(3)]  # the first may find a cut one
        assert probed[-1] and storage.health.healthy
        await apis.create(_api("after"))


async def test_postgres_stopped_connection_refused_is_unavailable() -> None:
    with socket.socket() as free:  # a port nobody listens on: a stopped server
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(StorageUnavailableError, match="connection refused"):
        await Storage.connect(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/nexus")


def _set_read_only(server: PostgresServer, database: str, *, on: bool) -> None:
    value = "on" if on else "off"
    server.psql(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {value}')
    # The setting applies to new sessions: cut the pooled ones.
    server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_storage_error_carries_no_parameters_in_its_text_or_the_log(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/nexus.db"
    else:
        url = request.getfixturevalue("postgres_url")
    async with connected(url) as storage:
        apis = storage.namespace("tests/faults").repository(api_pb2.Api, id_field="name")
        await apis.create(_api("before"))
        # Our bug, not the infrastructure's: the table is gone.
        if backend == "sqlite":
            with sqlite3.connect(tmp_path / "nexus.db") as raw:
                raw.execute(f"DROP TABLE {RECORDS_TABLE}")
        else:
            server: PostgresServer = request.getfixturevalue("postgres_server")
            server.psql(f"DROP TABLE {RECORDS_TABLE}", database=url.rsplit("/", 1)[1])
        user = f"user-{uuid.uuid4().hex}"  # not in this file's source, which tracebacks show
        with caplog.at_level(logging.DEBUG), pytest.raises(DBAPIError) as raised:
            await apis.create(_api(user, SECRET))
        logging.getLogger("tests").exception("as the error stage logs it", exc_info=raised.value)
    assert not isinstance(raised.value, StorageUnavailableError)
    assert RECORDS_TABLE in str(raised.value)  # the error still says what went wrong
    assert SECRET not in str(raised.value)
    assert "TOP-SECRET" not in caplog.text
    assert user not in caplog.text


async def test_sqlite_files_and_directory_are_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with connected(f"sqlite:///{data}/nexus.db") as storage:
        await (
            storage.namespace("tests/faults")
            .repository(api_pb2.Api, id_field="name")
            .create(_api("one"))
        )
        files = sorted(p.name for p in data.iterdir())
        assert {"nexus.db", "nexus.db-wal", "nexus.db-shm"} <= set(files)
        for name in files:
            assert _mode(data / name) == 0o600, name
    assert _mode(data) == 0o700


async def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    async with connected(f"sqlite:///{tmp_path}/nexus.db"):
        pass
    for name in ("nexus.db", "nexus.db-wal", "nexus.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)
    async with connected(f"sqlite:///{tmp_path}/nexus.db"):
        assert _mode(tmp_path / "nexus.db") == 0o600


async def test_a_data_directory_open_to_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="nexus.storage"):
        async with connected(f"sqlite:///{shared}/nexus.db"):
            pass
    assert "open to other users" in caplog.text
    assert _mode(shared / "nexus.db") == 0o600


async def _write_until_unavailable(
    apis: Repository[api_pb2.Api], payload: str
) -> StorageUnavailableError:
    """Write until the full disk refuses (the WAL may take a few pages first)."""
    for number in range(200):
        try:
            await apis.create(_api(f"during-{number}", payload))
        except StorageUnavailableError as error:
            return error
    raise AssertionError("200 writes to a full disk succeeded")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_a_mongodb_error_carries_no_document(
    mongo_server: MongoServer, mongo_url: str
) -> None:
    async with connected(mongo_url) as storage:
        apis = storage.namespace("tests/faults").repository(api_pb2.Api, id_field="name")
        await apis.create(_api("before"))
        # A validator every stored record fails: the server's error quotes the document.
        client = mongo_server.client()
        try:
            client[mongo_url.rsplit("/", 1)[1]].command(
                "collMod", RECORDS_TABLE, validator={"payload": {"$type": "string"}}
            )
        finally:
            client.close()
        with pytest.raises(StorageFailure) as raised:
            await apis.create(_api("user-1", SECRET))
    assert str(raised.value) == "MongoDB WriteError (121)"
    assert raised.value.__suppress_context__  # the original is not shown in a traceback
    assert not storage.health.failures  # our bug, not an outage


async def test_an_unreachable_mongodb_is_unavailable() -> None:
    with socket.socket() as free:  # a port nobody listens on: a stopped server
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(StorageUnavailableError, match="no server reachable"):
        await Storage.connect(f"mongodb://127.0.0.1:{port}/nexus?serverSelectionTimeoutMS=300")
    # PyMongo's async monitor leaves the socket of a refused connection to the garbage
    # collector (the client is closed): collect it here rather than in a later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "mongodb"])
async def test_a_server_that_never_answers_is_unavailable_after_the_connect_timeout(
    scheme: str,
) -> None:
    user = "nobody@" if scheme.startswith("postgresql") else ""
    # Listening but never accepting: the kernel completes the handshake, nobody answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        # Bounded well below the drivers' own defaults (asyncpg 60 s, PyMongo 30 s).
        with pytest.raises(StorageUnavailableError) as raised:
            async with asyncio.timeout(10):
                await Storage.connect(
                    f"{scheme}://{user}127.0.0.1:{port}/nexus", connect_timeout=0.5
                )
    assert raised.value.cause in ("connect timeout", "no server reachable")
    with warnings.catch_warnings():  # as above: PyMongo's monitor leaves its socket to gc
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
