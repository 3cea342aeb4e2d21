"""Where the time of a REST call goes: the gateway's ASGI app under cProfile, no network.

A production host (``nexus_grpc.host.Host``: the real dispatcher, pipeline and SQLite
storage, access log off, only the orders plugin, the bench's auth and limits) is started
in-process, and ``GatewayApp.__call__`` is driven directly with synthetic ASGI
scope/receive/send for N requests, one after the other. Every request carries a bearer
token minted as ``scripts/bench`` mints it (fresh HMAC secret, ``*.*:all``); the FastAPI
baseline verifies it with PyJWT, as in the bench. The report gives the wall time per
request without the profiler, then the top functions by cumulative and by own (total)
time, and own time summed by package.

    .venv/bin/python -m benchmarks.profile_rest                  # GET /v1/orders/{id}
    .venv/bin/python -m benchmarks.profile_rest --op create      # POST /v1/orders
    .venv/bin/python -m benchmarks.profile_rest --app fastapi    # the FastAPI baseline
    .venv/bin/python -m benchmarks.profile_rest --memory-storage # without SQLite

``--memory-storage`` replaces ``Repository.get``/``create`` by a dict of serialized
messages (both apps use that class), leaving only the framework's own work: transcoding,
validation, pipeline, routing. SQLite statements run on worker threads, which cProfile
does not see: the main thread waiting for them shows up as the event loop's select.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from benchmarks.run import ORDER, UNLIMITED_RATE, make_credentials

REPO = Path(__file__).resolve().parents[1]

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY = json.dumps(ORDER, separators=(",", ":")).encode()


#: Authorization header value sent with every request (``--authorization``).
AUTHORIZATION: list[bytes] = []


async def asgi_call(app: Asgi, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request through ``app`` as uvicorn would make it (wrk's headers); status, body."""
    headers = [(b"host", b"127.0.0.1:8080")]
    headers += [(b"authorization", value) for value in AUTHORIZATION]
    if method == "POST":
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }
    delivered = False

    async def receive() -> AsgiMessage:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # uvicorn answers further receives only when the client goes away.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    status = 0
    chunks: list[bytes] = []

    async def send(message: AsgiMessage) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def use_memory_storage() -> None:
    """Replace ``Repository.get``/``create`` by a dict of serialized messages."""
    from nexus_grpc.storage import Repository, index_document

    stored: dict[tuple[str, str], bytes] = {}

    async def create(self: Repository[Any], message: Message) -> Message:
        created = type(message)()
        created.CopyFrom(message)
        if not getattr(created, self.id_field):
            setattr(created, self.id_field, uuid.uuid4().hex)
        index_document(created)  # done on every real write too
        stored[(self.collection, getattr(created, self.id_field))] = created.SerializeToString(
            deterministic=True
        )
        return created

    async def get(self: Repository[Any], id: str, *, for_update: bool = False) -> Message | None:
        payload = stored.get((self.collection, id))
        return None if payload is None else self.message_type.FromString(payload)

    Repository.create = create  # type: ignore[method-assign,assignment]
    Repository.get = get  # type: ignore[method-assign,assignment]


@asynccontextmanager
async def nexus_app(data_dir: Path, secret_file: Path) -> AsyncIterator[Asgi]:
    """The gateway of a running host with the orders plugin, built as the host builds it.

    Configured as ``scripts/bench`` configures ``nexus serve``: tokens signed with
    ``secret_file``, rate limits that never throttle, access log off.
    """
    from nexus_grpc.config import (
        AuthConfig,
        Config,
        HttpConfig,
        LimitsConfig,
        LogConfig,
        PluginsConfig,
        ServerConfig,
    )
    from nexus_grpc.gateway import GatewayApp, GatewaySettings
    from nexus_grpc.host import Host

    rate_classes = {
        **LimitsConfig().rate_classes,
        "default": {"rate": UNLIMITED_RATE, "burst": UNLIMITED_RATE},
    }
    config = Config(
        data_dir=str(data_dir),
        server=ServerConfig(grpc_address="127.0.0.1:0", grace_period=1.0),
        http=HttpConfig(address=""),
        auth=AuthConfig(secret_file=str(secret_file)),
        limits=LimitsConfig(rate_classes=rate_classes),
        plugins=PluginsConfig(
            dirs=(str(REPO / "plugins"),), entry_points=False, enabled=("orders",)
        ),
        log=LogConfig(access=False),
    )
    host = Host(config)
    await host.start()
    try:
        yield GatewayApp(
            host.router, GatewaySettings.from_config(HttpConfig()), metrics=host.metrics
        )
    finally:
        await host.stop()


@asynccontextmanager
async def fastapi_app(data_dir: Path, secret_file: Path) -> AsyncIterator[Asgi]:
    """The FastAPI baseline app (verifying tokens signed with ``secret_file``), lifespan on."""
    from benchmarks.fastapi_orders import create_app

    app = create_app(data_dir, await asyncio.to_thread(secret_file.read_bytes))
    async with app.router.lifespan_context(app):
        yield app


async def drive(app: Asgi, op: str, count: int, path: str) -> None:
    """``count`` requests of ``op`` one after the other; AssertionError on a non-200."""
    for _ in range(count):
        if op == "get":
            status, body = await asgi_call(app, "GET", path)
        else:
            status, body = await asgi_call(app, "POST", "/v1/orders", BODY)
        if status != 200:
            raise AssertionError(f"{op} answered {status}: {body[:300]!r}")


def short(filename: str) -> str:
    """A file name without the virtualenv or repository prefix."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if filename.startswith(str(REPO)):
        return filename[len(str(REPO)) + 1 :]
    if "/lib/python3" in filename:
        return "stdlib/" + filename.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return filename


def area(filename: str) -> str:
    """The package a function belongs to, for the per-package summary."""
    if filename == "~":
        return "(built-in functions)"
    name = short(filename)
    parts = name.split("/")
    if parts[0] == "stdlib":
        return "stdlib/" + (parts[1].removesuffix(".py") if len(parts) > 1 else "?")
    if parts[0] in ("google", "nexus_grpc", "plugins") and len(parts) > 2:
        return "/".join(parts[:2]) + ("" if parts[1].endswith(".py") else "/")
    return parts[0]


#: This script's loops around the requests: their cumulative times say nothing.
_HARNESS = frozenset({"drive", "main_async"})


def report(profile: cProfile.Profile, count: int, top: int) -> None:
    """Print the top functions by cumulative and own time, and own time per package."""
    stats = pstats.Stats(profile)
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_cc, calls, own, cumulative, _callers) in entries.items():
        if filename == __file__ and function in _HARNESS:
            continue
        where = f"{short(filename)}:{line}" if filename != "~" else ""
        rows.append((function, where, calls, own, cumulative, filename))
    total = sum(row[3] for row in rows)
    print(
        f"profiled {count} requests: {total / count * 1e6:.0f} us per request under the profiler "
        "(main thread, including waits in epoll)"
    )
    for title, key in (("cumulative", 4), ("total (own)", 3)):
        print(f"\ntop {top} by {title} time (us per request; calls per request)")
        print(f"{'cum us':>8} {'own us':>8} {'calls':>7}  function")
        for function, where, calls, own, cumulative, _ in sorted(
            rows, key=lambda r: r[key], reverse=True
        )[:top]:
            print(
                f"{cumulative / count * 1e6:8.1f} {own / count * 1e6:8.1f} "
                f"{calls / count:7.2f}  {function}  {where}"
            )
    by_area: dict[str, float] = {}
    for row in rows:
        by_area[area(row[5])] = by_area.get(area(row[5]), 0.0) + row[3]
    print("\nown time by package (us per request, share)")
    for name, own in sorted(by_area.items(), key=lambda item: item[1], reverse=True)[:20]:
        print(f"{own / count * 1e6:8.1f} {100 * own / total:5.1f}%  {name}")


async def main_async(args: argparse.Namespace) -> None:
    """Seed, warm up, time, then profile the chosen app and operation."""
    if args.memory_storage:
        use_memory_storage()
    with tempfile.TemporaryDirectory(prefix="nexus-profile-") as tmp:
        credentials = await asyncio.to_thread(make_credentials, Path(tmp))
        if not AUTHORIZATION:
            AUTHORIZATION.append(credentials.authorization.encode("latin-1"))
        factory = nexus_app if args.app == "nexus" else fastapi_app
        async with factory(Path(tmp), credentials.secret_file) as app:
            status, body = await asgi_call(app, "POST", "/v1/orders", BODY)
            if status != 200:
                raise SystemExit(f"seeding failed: {status} {body[:300]!r}")
            path = f"/v1/orders/{json.loads(body)['id']}"
            await drive(app, args.op, args.warmup, path)
            started, cpu_started = time.perf_counter(), time.process_time()
            await drive(app, args.op, args.requests, path)
            wall = (time.perf_counter() - started) / args.requests
            # The process's CPU, threads included (SQLite's checkpoints run on one).
            cpu = (time.process_time() - cpu_started) / args.requests
            storage = "in-memory dict" if args.memory_storage else "SQLite"
            print(
                f"{args.app} {args.op}, storage {storage}: {wall * 1e6:.0f} us per request "
                f"(wall time), {cpu * 1e6:.0f} us of CPU (all threads); no profiler, "
                f"{args.requests} sequential requests"
            )
            profile = cProfile.Profile()
            profile.enable()
            await drive(app, args.op, args.requests, path)
            profile.disable()
    report(profile, args.requests, args.top)


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--op", choices=("get", "create"), default="get")
    parser.add_argument("--app", choices=("nexus", "fastapi"), default="nexus")
    parser.add_argument("--memory-storage", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--authorization",
        default="",
        help="Authorization header to send instead of the token minted for the run",
    )
    args = parser.parse_args()
    if args.authorization:
        AUTHORIZATION.append(args.authorization.encode("latin-1"))
    asyncio.run(main_async(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
