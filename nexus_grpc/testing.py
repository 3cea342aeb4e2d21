"""Test harness for plugin authors: a real host on port 0 inside a test.

Example (pytest-asyncio)::

    from nexus_grpc.testing import running_host

    async def test_create_order(tmp_path):
        async with running_host(plugins=["orders"], data_dir=tmp_path) as host:
            stub = OrdersServiceStub(host.channel())
            order = await stub.CreateOrder(...)

The host is the production one: same dispatcher, pipeline, reflection and health,
with its storage in ``data_dir`` (SQLite unless ``storage_url`` is given).

Over TLS and mutual TLS, with a throwaway CA (:class:`nexus_grpc.tls.certs.TestCA`)::

    ca = TestCA.create(tmp_path / "pki")
    async with running_host(data_dir=tmp_path, tls=ca, client_auth="require") as host:
        client = ca.issue("orders", uris=("spiffe://acme/orders",), client=True)
        stub = OrdersServiceStub(host.channel(client_cert=client))
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import redis.asyncio as aioredis
from google.protobuf.message import Message
from redis.exceptions import RedisError

from nexus_grpc.auth.principal import Grant, Principal
from nexus_grpc.config import (
    AuthConfig,
    CacheConfig,
    Config,
    EventsConfig,
    HotSwapConfig,
    HttpConfig,
    LimitsConfig,
    LogConfig,
    PluginsConfig,
    ServerConfig,
    StorageConfig,
    TlsConfig,
    TracingConfig,
)
from nexus_grpc.events._redis_streams import Keys, is_busy_group
from nexus_grpc.events.redis_bus import RedisBus
from nexus_grpc.host import Host
from nexus_grpc.tls.certs import IssuedCert, TestCA

__all__ = ["EventCapture", "RunningHost", "running_host"]


_E = TypeVar("_E", bound=Message)

_log = logging.getLogger("nexus.testing")


class EventCapture(Generic[_E]):
    """The events of one type the host delivered since :meth:`RunningHost.events` was
    called, in delivery order.

    Awaiting it (``capture = await host.events(T)``) returns it once its consumer group
    is in place, so every event published afterwards reaches it; on the Redis bus that
    is required before :meth:`next`, on the memory bus it is in place at once.
    """

    def __init__(self, prepare: Callable[[], Awaitable[None]] | None = None) -> None:
        #: Every event received so far.
        self.received: list[_E] = []
        self._queue: asyncio.Queue[_E] = asyncio.Queue()
        self._prepare = prepare  # what is left to do before the group exists

    def __await__(self) -> Generator[Any, None, EventCapture[_E]]:
        return self._ready().__await__()

    async def _ready(self) -> EventCapture[_E]:
        if self._prepare is not None:
            await self._prepare()
            self._prepare = None
        return self

    async def next(self, within: float = 10.0) -> _E:
        """The next event not yet returned by ``next``; waits up to ``within`` seconds
        (then ``TimeoutError``), so a missing event fails the test instead of hanging it."""
        if self._prepare is not None:
            raise RuntimeError(
                "this event capture was never awaited: on the Redis bus write "
                "`capture = await host.events(EventType)` before the call that publishes, "
                "so its consumer group exists before the event does"
            )
        async with asyncio.timeout(within):
            return await self._queue.get()

    async def _deliver(self, event: Message, delivery: Any) -> None:
        self.received.append(event)  # type: ignore[arg-type]  # the bus decodes _E
        self._queue.put_nowait(event)  # type: ignore[arg-type]


@dataclass
class RunningHost:
    """A started host and the channels opened to it."""

    host: Host
    #: PEM CA certificate(s) clients trust when the host speaks TLS (None: plaintext).
    trust: bytes | None = None
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    #: (group, stream) of every capture on the Redis bus, removed when the host stops.
    _capture_groups: list[tuple[str, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port the server listens on."""
        return self.host.grpc_address

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP gateway (``http=True`` hosts only); https with TLS."""
        scheme = "https" if self.host.config.http.tls.enabled else "http"
        return f"{scheme}://{self.host.http_address}"

    def token(
        self,
        subject: str = "tester",
        *,
        grants: Sequence[str] = ("*.*:all",),
        roles: Sequence[str] = (),
        team: str = "",
    ) -> str:
        """An access token signed by the host, for ``subject`` with ``grants``.

        Grants are ``resource.action:scope`` strings; the default allows everything.
        """
        if self.host.tokens is None:
            raise RuntimeError("the host is not started")
        principal = Principal(
            subject=subject,
            roles=tuple(roles),
            grants=frozenset(Grant.parse(grant) for grant in grants),
            team=team,
        )
        token, _ = self.host.tokens.issuer.issue_access(principal)
        return token

    def events(self, event_type: type[_E]) -> EventCapture[_E]:
        """Capture every ``event_type`` event published from now on, as a consumer group
        of its own would receive it (after the publishing transaction commits): write
        ``capture = await host.events(T)`` before the call that publishes, then
        ``await capture.next()``.

        Each capture is a new group (a random name, so none meets a group of an earlier
        run on a shared Redis); on the Redis bus awaiting creates it on the stream at
        once, and the host's stop removes it with its retry and dead-letter streams.
        """
        event_name = event_type.DESCRIPTOR.full_name
        group = f"nexus-testing-{uuid.uuid4().hex}"
        bus = self.host.bus
        prepare = None
        if isinstance(bus, RedisBus):
            stream = Keys(self.host.config.events.redis_prefix).events(event_name)
            self._capture_groups.append((group, stream))

            async def prepare() -> None:
                # At "$" like the worker's own creation: whichever comes first wins.
                try:
                    await bus.client.xgroup_create(stream, group, id="$", mkstream=True)
                except RedisError as error:
                    if not is_busy_group(error):
                        raise

        capture: EventCapture[_E] = EventCapture(prepare)
        bus.subscribe(group, event_name, capture._deliver)
        return capture

    def channel(
        self, token: str | None = None, *, client_cert: IssuedCert | None = None
    ) -> grpc.aio.Channel:
        """A new channel to the host (sending ``token`` on every call), closed when the
        host stops: TLS trusting :attr:`trust` when the gRPC port speaks TLS (presenting
        ``client_cert`` for mutual TLS), else plaintext."""
        interceptors = _token_interceptors(token) if token else None
        if not self.host.config.server.tls.enabled:
            channel = grpc.aio.insecure_channel(self.address, interceptors=interceptors)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.trust,
                private_key=client_cert.key_pem if client_cert else None,
                certificate_chain=client_cert.cert_pem if client_cert else None,
            )
            channel = grpc.aio.secure_channel(self.address, credentials, interceptors=interceptors)
        self._channels.append(channel)
        return channel

    def ssl_context(self, client_cert: IssuedCert | None = None) -> ssl.SSLContext:
        """A client context for the HTTP port (``httpx.AsyncClient(verify=...)``):
        trusting :attr:`trust`, presenting ``client_cert`` for mutual TLS."""
        context = ssl.create_default_context(
            cadata=self.trust.decode("ascii") if self.trust else None
        )
        if client_cert is not None:
            context.load_cert_chain(client_cert.cert_file, client_cert.key_file)
        return context


class _WithToken:
    """Adds ``authorization: Bearer <token>`` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), self._header))


# grpc.aio files each interceptor under the first call type it implements, so each call
# type needs an object of its own.
class _UnaryUnaryToken(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamToken(_WithToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryToken(_WithToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStreamToken(_WithToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _token_interceptors(token: str) -> list[Any]:
    return [
        kind(token)
        for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]


@asynccontextmanager
async def running_host(
    *,
    plugins: Sequence[str] | None = None,
    plugin_dirs: Sequence[str | Path] = ("plugins",),
    bundled: Sequence[str] = (),
    data_dir: str | Path,
    storage_url: str = "",
    plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
    entry_points: bool = False,
    strict: bool = False,
    grace_period: float = 1.0,
    http: bool | HttpConfig = False,
    auth: AuthConfig | None = None,
    limits: LimitsConfig | None = None,
    events: EventsConfig | None = None,
    cache: CacheConfig | None = None,
    access_log: bool = False,
    server: ServerConfig | None = None,
    storage: StorageConfig | None = None,
    tls: TestCA | TlsConfig | None = None,
    client_auth: str = "none",
    trust: bytes | None = None,
    tracing: TracingConfig | None = None,
    hot_swap: HotSwapConfig | None = None,
) -> AsyncIterator[RunningHost]:
    """Start a host on a free port with ``plugins`` (None: every plugin found); stop it after.

    ``bundled`` names plugins shipped with nexus-grpc to load too (e.g. ``["auth"]``).

    ``http=True`` (or an :class:`HttpConfig`) also starts the REST gateway on a free port;
    ``access_log=True`` logs a ``nexus.access`` line per call; ``server`` sets the gRPC
    listener's limits (its address is always a free port); ``storage`` sets the storage
    options (its url is replaced by ``storage_url`` if given).

    ``tls`` turns TLS on for both ports: a :class:`TestCA` issues the server certificate
    (localhost, 127.0.0.1) and is what channels trust, and ``client_auth`` ("none",
    "require"; "optional" is for the HTTP port only) makes the CA the client CA too; a
    :class:`TlsConfig` is used as it is, with ``trust`` the CA PEM clients trust. A
    ``server`` or ``http`` config with its own ``tls`` keeps it. ``tracing`` turns the
    host's OpenTelemetry export on (off by default); ``hot_swap`` sets
    ``[plugins.hot_swap]`` (off by default).
    """
    tls_config, trust = _tls_setup(tls, client_auth, trust)
    server = server or ServerConfig()
    if tls_config is not None and not server.tls.enabled:
        server = replace(server, tls=tls_config)
    http_config = _http_config(http)
    if tls_config is not None and http_config.address and not http_config.tls.enabled:
        http_config = replace(http_config, tls=tls_config)
    storage = storage or StorageConfig()
    if storage_url:
        storage = replace(storage, url=storage_url)
    config = Config(
        data_dir=str(data_dir),
        server=replace(server, grpc_address="127.0.0.1:0", grace_period=grace_period),
        plugins=PluginsConfig(
            dirs=tuple(str(d) for d in plugin_dirs),
            bundled=tuple(bundled),
            entry_points=entry_points,
            enabled=tuple(plugins or ()),
            strict=strict,
            hot_swap=hot_swap or HotSwapConfig(),
        ),
        http=http_config,
        auth=auth or AuthConfig(),
        limits=limits or LimitsConfig(),
        events=events or EventsConfig(),
        cache=cache or CacheConfig(),
        storage=storage,
        log=LogConfig(access=access_log),
        tracing=tracing or TracingConfig(),
        plugin=dict(plugin_config or {}),
    )
    host = Host(config)
    await host.start()
    running = RunningHost(host, trust=trust)
    try:
        yield running
    finally:
        for channel in running._channels:
            await channel.close(None)
        await host.stop()
        await _remove_capture_groups(config.events, running._capture_groups)


async def _remove_capture_groups(events: EventsConfig, groups: Sequence[tuple[str, str]]) -> None:
    """Delete the Redis consumer groups of the captures, and their retry and dead-letter
    streams: the captures are gone, and a group left behind would hold events forever."""
    if not groups:
        return
    keys = Keys(events.redis_prefix)
    client = aioredis.Redis.from_url(events.redis_url, socket_timeout=5.0)
    try:
        for group, stream in groups:
            await client.xgroup_destroy(stream, group)
            await client.delete(keys.retry(group), keys.dead(group))
    except (RedisError, OSError) as error:
        _log.warning("could not remove the event capture groups from Redis: %s", error)
    finally:
        await client.aclose()


def _tls_setup(
    tls: TestCA | TlsConfig | None, client_auth: str, trust: bytes | None
) -> tuple[TlsConfig | None, bytes | None]:
    if not isinstance(tls, TestCA):
        return tls, trust
    # A name of its own: hosts sharing a CA must not rewrite each other's files.
    issued = tls.issue(f"server-{secrets.token_hex(4)}", dns=("localhost",), ips=("127.0.0.1",))
    config = TlsConfig(
        cert_file=str(issued.cert_file),
        key_file=str(issued.key_file),
        client_ca_file=str(tls.cert_file) if client_auth != "none" else "",
        client_auth=client_auth,
    )
    return config, trust or tls.cert_file.read_bytes()


def _http_config(http: bool | HttpConfig) -> HttpConfig:
    if isinstance(http, HttpConfig):
        return replace(http, address="127.0.0.1:0")
    return HttpConfig(address="127.0.0.1:0" if http else "")
