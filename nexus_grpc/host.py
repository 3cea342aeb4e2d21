"""The host's lifecycle: start the parts in order, serve, drain, stop them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from nexus_grpc.access.audit import AuditLog
from nexus_grpc.access.validation import ValidationStage
from nexus_grpc.admin.indexes import IndexesAdmin
from nexus_grpc.admin.service import AdminServicer
from nexus_grpc.auth import KeySet, SessionGuard, TokenIssuer, Tokens, TokenVerifier
from nexus_grpc.cache import CacheManager
from nexus_grpc.cache.metrics import CacheMetrics
from nexus_grpc.config import Config
from nexus_grpc.events import EventBus, EventOperations, MemoryBus
from nexus_grpc.events.metrics import EventMetrics
from nexus_grpc.events.outbox import Outbox
from nexus_grpc.events.redis_bus import RedisBus
from nexus_grpc.gateway import GatewayApp, GatewaySettings
from nexus_grpc.gateway.probes import LIVENESS, READINESS, Probes, ReadinessSources
from nexus_grpc.pipeline import Stage, build_stages
from nexus_grpc.pipeline.audit import AdminAuditStage
from nexus_grpc.pipeline.auth import AccessStage, AuthStage
from nexus_grpc.pipeline.deadline import DeadlineStage
from nexus_grpc.pipeline.metrics import Metrics
from nexus_grpc.pipeline.observe import ObserveStage
from nexus_grpc.pipeline.streams import StreamStage
from nexus_grpc.plugins.manager import PluginManager
from nexus_grpc.ratelimit import (
    Buckets,
    ConcurrencyStage,
    MemoryBuckets,
    RateLimitStage,
    RedisBuckets,
    parse_rate_classes,
)
from nexus_grpc.routing import InFlight, Router
from nexus_grpc.storage import Storage, make_private_dir
from nexus_grpc.storage.declared import indexable_types, loaded_message_types
from nexus_grpc.storage.metrics import StorageMetrics
from nexus_grpc.storage.opening import open_storage
from nexus_grpc.storage.retired_sweep import RetiredIndexSweep
from nexus_grpc.supervisor.channel import Broadcast
from nexus_grpc.tls import TLS_HEALTH, ClientDirectory, TlsExpiryMetrics, TlsService
from nexus_grpc.tls.material import check_config, plaintext_exposed
from nexus_grpc.tracing import enabled as tracing_enabled
from nexus_grpc.tracing.setup import Tracing, start_tracing
from nexus_grpc.transport.accept_guard import GuardedSocket
from nexus_grpc.transport.allow_list import NetworkStage, RefusedConnections
from nexus_grpc.transport.grpc_forwarded import ForwardedStage
from nexus_grpc.transport.grpc_server import create_server
from nexus_grpc.transport.health import OVERALL, HealthState
from nexus_grpc.transport.http_protocol import HttpLimits
from nexus_grpc.transport.http_server import HttpServer
from nexus_grpc.transport.netpolicy import NetworkPolicy, TrustedProxies, parse_networks
from nexus_grpc.transport.reflection import ReflectionServicer, reflection_bindings
from nexus_grpc.transport.servicers import bind_servicer, build_routes
from nexus_grpc.urls import unreachable

__all__ = ["CORE_PLUGIN", "Host"]

#: Plugin name under which the host's own services (health, reflection, admin) are routed.
CORE_PLUGIN = "nexus"
#: Health "service" name reporting the event bus.
EVENTS_HEALTH = "nexus.events"
#: Health "service" name reporting the storage (NOT_SERVING while it is unavailable).
STORAGE_HEALTH = "nexus.storage"
#: Storage namespace of the audit log: the host's own, out of every plugin's reach.
AUDIT_NAMESPACE = "core/audit"

_log = logging.getLogger("nexus.host")


class Host:
    """One nexus process: storage, plugins, the gRPC server, health."""

    def __init__(self, config: Config, *, http_socket: GuardedSocket | None = None) -> None:
        """``http_socket``: a bound socket to serve HTTP on instead of binding
        ``http.address`` (a worker's, kept by its supervisor across restarts)."""
        self.config = config
        self._http_socket = http_socket
        self.router = Router()
        self.health = HealthState()
        self._stages: list[Stage] = []
        self._storage: Storage | None = None
        self._server: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._plugins: PluginManager | None = None
        #: The OpenTelemetry SDK, while tracing is on (config.tracing).
        self._tracing: Tracing | None = None
        self._stopping: asyncio.Task[None] | None = None
        #: The plugin folder watcher (``nexus serve --reload``) and what stops it.
        self._watching: asyncio.Future[None] | None = None
        self._stop_watching = asyncio.Event()
        #: Drops indexes no contract declares once storage.index_drop_delay is over.
        self._index_sweep: RetiredIndexSweep | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._serving = False
        self._released = False
        #: Whether start() has published the overall status (storage may change it then).
        self._overall_published = False
        #: Prometheus metrics of every call, served at /metrics on the HTTP port.
        self.metrics = Metrics()
        #: Connections and calls the ports' allow/deny lists refused.
        self.refused = RefusedConnections()
        self.metrics.registry.register(self.refused)
        #: Domain events between plugins.
        self.bus: EventBus
        events = config.events
        self._redis_bus: RedisBus | None = None
        if events.backend == "redis":
            self._redis_bus = RedisBus(
                events.redis_url,
                prefix=events.redis_prefix,
                max_attempts=events.max_attempts,
                backoff=events.retry_backoff,
                claim_idle=events.claim_idle,
                maxlen=events.max_stream_length,
            )
            self._redis_bus.on_health(self._on_events_health)
            self.bus = self._redis_bus
        else:
            self.bus = MemoryBus(max_attempts=events.max_attempts, backoff=events.retry_backoff)
        if isinstance(self.bus, EventOperations):
            event_metrics = EventMetrics(self.bus)
            self.metrics.registry.register(event_metrics)
            self.metrics.on_scrape(event_metrics.refresh)
        cache = config.cache
        #: The cache plugins get as ``ctx.cache`` (L1 in process, Redis as L2 if set).
        self.cache = CacheManager(
            cache.redis_url if cache.backend == "redis" else None,
            prefix=cache.redis_prefix,
            max_entries=cache.max_entries,
            l1_ttl=cache.l1_ttl,
            default_ttl=cache.default_ttl,
        )
        self.metrics.registry.register(CacheMetrics(self.cache))
        #: Keeps events published in transactions until the bus has them.
        self.outbox = Outbox(
            self.bus,
            relay_after=events.outbox_relay_after,
            poll_interval=events.outbox_poll_interval,
        )
        self._buckets: RedisBuckets | None = None
        #: Open streams of every transport: capped, and ended when the drain starts.
        self.streams = StreamStage(
            config.limits.max_streams, config.limits.max_streams_per_principal
        )
        #: Token tools (available once started).
        self.tokens: Tokens | None = None
        #: TLS of both ports (available once started; ports without TLS are None in it).
        self.tls: TlsService | None = None
        #: Messages to every worker process (this one alone without a supervisor).
        self.broadcast = Broadcast()
        #: Whether stop() turns health NOT_SERVING and waits ``shutdown_delay`` first
        #: (False for a worker a rolling restart replaces while the others serve on).
        self.announce_shutdown = True
        #: Asked once, as stop() begins (or as a failed start releases what it took):
        #: whether to leave the HTTP socket given as ``http_socket`` listening for the
        #: others holding it (a worker's slot partner in a rolling restart accepts on
        #: it) when this host stops accepting, instead of ending its listening for
        #: every holder. None: never. A worker's question also tells its supervisor
        #: that it stops on its own.
        self.hand_over_http: Callable[[], Awaitable[bool]] | None = None
        self._handing_over: bool | None = None
        #: Liveness and readiness: /healthz, /readyz and their gRPC health services.
        self._probes = Probes(self._readiness_sources())

    @property
    def plugins(self) -> PluginManager:
        """The plugin manager (available once started)."""
        if self._plugins is None:
            raise RuntimeError("the host is not started")
        return self._plugins

    @property
    def grpc_address(self) -> str:
        """The address clients dial, with the real port when port 0 was configured."""
        host = self.config.server.grpc_address.rsplit(":", 1)[0]
        return f"{host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        """The HTTP address clients use, with the real port; "" when HTTP is off."""
        if self._http is None:
            return ""
        host = self.config.http.address.rsplit(":", 1)[0]
        return f"{host}:{self.http_port}"

    async def start(self) -> None:
        """Open storage, bind the ports, load plugins, start serving.

        When any step fails (or start is cancelled), what was already started is
        stopped again: ports released, started plugins' stop hooks run, storage closed.
        """
        started = time.perf_counter()
        try:
            await self._start_parts()
        except BaseException:
            await self._release(grace=0)
            raise
        records = self.plugins.records()
        _log.info(
            "nexus serving on %s",
            self.grpc_address + (f" (HTTP {self.http_address})" if self._http else ""),
            extra={
                "grpc_address": self.grpc_address,
                "http_address": self.http_address,
                "plugins_serving": [r.name for r in records if r.state == "SERVING"],
                "plugins_failed": [r.name for r in records if r.state == "FAILED"],
                "startup_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    async def _start_parts(self) -> None:
        try:
            await asyncio.to_thread(make_private_dir, Path(self.config.data_dir))
        except OSError as error:
            raise OSError(
                f"data_dir {self.config.data_dir}: cannot create or use it: "
                f"{error.strerror or error}"
            ) from error
        # Checked again (load_config did, but not the certificates' validity periods): a
        # Config built in code has not been, and the files may have changed since.
        await asyncio.to_thread(check_config, self.config)
        for exposed in plaintext_exposed(self.config):
            _log.warning(
                "%s listens beyond loopback without TLS: anyone on the network can read "
                "and alter its calls and tokens (set its tls.cert_file and tls.key_file; "
                "server.require_tls = true refuses to start like this)",
                exposed,
            )
        # Before the pipeline is built: its tracing stages are bound only when on.
        self._tracing = start_tracing(self.config.tracing)
        self.tls = tls = await asyncio.to_thread(TlsService, self.config)
        # Bind first: a taken port should fail before any plugin start hook runs.
        self._server, self.grpc_port = create_server(
            self.config.server,
            self.router,
            self.metrics.count_unknown,
            credentials=tls.grpc.credentials() if tls.grpc is not None else None,
        )
        if self.config.http.address:
            gateway = GatewayApp(
                self.router,
                GatewaySettings.from_config(self.config.http),
                metrics=self.metrics,
                probes=self._probes,
            )
            self._http = HttpServer(
                gateway,
                self.config.http.address,
                reuse_port=self.config.server.reuse_port,
                listening=self._http_socket,
                limits=HttpLimits.from_config(self.config.http),
                policy=NetworkPolicy.from_lists(
                    "http", self.config.http.allow, self.config.http.deny
                ),
                proxies=TrustedProxies(
                    parse_networks("http.trusted_proxies", self.config.http.trusted_proxies),
                    header=self.config.http.forwarded_header,
                ),
                refused=self.refused,
                ssl_context=tls.http.context() if tls.http is not None else None,
                # The header timer starts once the handshake is done: a client gets
                # the same time again for its TLS handshake.
                handshake_timeout=self.config.http.header_timeout,
            )
            self.http_port = self._http.bind()
        self._storage = await open_storage(self.config)
        self._storage.health.on_change(self._on_storage_health)
        self._storage.start_probing(
            interval=self.config.storage.probe_interval, timeout=self.config.storage.probe_timeout
        )
        self.metrics.registry.register(StorageMetrics(self._storage.health))
        if tls.ports:
            self.metrics.registry.register(TlsExpiryMetrics(tls))
        await self.cache.start()
        keys = await KeySet.load(self.config.auth, Path(self.config.data_dir))
        audit = AuditLog(self._storage.namespace(AUDIT_NAMESPACE))
        verifier = TokenVerifier(keys, self.config.auth)
        sessions = SessionGuard(
            ttl=self.config.auth.session_check_ttl, prefix=self.config.cache.redis_prefix
        )
        # Session changes travel on the cache's invalidation channel (Redis mode).
        self.cache.watch(sessions.on_key, sessions.forget_all)
        sessions.connect(None if self.cache.memory_only else self.cache.announce)
        self.tokens = Tokens(
            TokenIssuer(keys, self.config.auth), verifier, sessions, self.config.auth
        )
        self._stages = self._build_stages(verifier, sessions, audit)
        await self._check_rate_limiter()
        self._plugins = PluginManager(
            self.config,
            storage=self._storage,
            router=self.router,
            stages=self._stages,
            health=self.health,
            audit=audit,
            tokens=self.tokens,
            bus=self.bus,
            outbox=self.outbox,
            cache=self.cache,
        )
        self._install_core_services(self._plugins, audit)
        # A swap asked of one worker applies to all of them.
        self._plugins.swap.share(self.broadcast)
        # A plugin loaded or reloaded at runtime gets its contract's storage indexes.
        self._plugins.swap.index_with(self._storage, self.config.storage.index_drop_delay)
        await self._plugins.load_all()
        await self._apply_declared_indexes()
        self._index_sweep = RetiredIndexSweep(
            self._storage,
            self.config.storage.index_drop_delay,
            # The contracts loaded now (hot swaps included): their indexes are kept.
            declared=lambda: indexable_types(loaded_message_types())[0],
        )
        self._index_sweep.start()
        await self.bus.start()
        await self.outbox.start()
        # A Redis bus that cannot reach Redis yet starts NOT_SERVING and flips when it can.
        await self.health.set(EVENTS_HEALTH, self._redis_bus.healthy() if self._redis_bus else True)
        await self.health.set(STORAGE_HEALTH, self._storage.health.healthy)
        # The HTTP probes' verdicts on the gRPC port, evaluated on every Check: the
        # kubelet's native gRPC probes and ``nexus health --service`` see what /healthz
        # and /readyz answer.
        await self.health.compute(LIVENESS, self._probes.alive)
        await self.health.compute(READINESS, self._probes.ready)
        if tls.ports:
            await tls.start(self._on_tls_health)
        await self._server.start()
        self._serving = True
        if self._http is not None:
            await self._http.start()
        await self.health.set(OVERALL, self._overall_serving())
        self._overall_published = True
        self._start_watching()

    def _start_watching(self) -> None:
        """Development mode (``plugins.hot_swap.watch``): reload plugins on file changes."""
        settings = self.config.plugins.hot_swap
        if not settings.watch:
            return
        if not settings.enabled:
            _log.warning(
                "plugins.hot_swap.watch is on but hot swap is off: set "
                "plugins.hot_swap.enabled = true (nexus serve --reload sets both)"
            )
            return
        from nexus_grpc.cli._project import find_project_root
        from nexus_grpc.plugins.watch import PluginWatcher

        root = find_project_root(Path.cwd())
        contracts = (root / "proto", root / "generated") if root is not None else None
        watcher = PluginWatcher(
            self.plugins,
            [Path(d) for d in self.config.plugins.dirs],
            contracts=contracts,
            debounce=settings.watch_debounce,
        )
        self._watching = asyncio.ensure_future(watcher.run(self._stop_watching))

    async def _apply_declared_indexes(self) -> None:
        """Build the storage indexes the loaded contracts declare (the plugins imported
        theirs while loading), and retire those no longer declared. A failure is logged,
        not fatal: lists stay correct without an index, only slower."""
        assert self._storage is not None
        types, invalid = indexable_types(loaded_message_types())
        for descriptor, error in invalid:
            _log.error("storage indexes of %s not built: %s", descriptor.full_name, error)
        try:
            await self._storage.apply_indexes(
                types, drop_delay=self.config.storage.index_drop_delay
            )
        except Exception as error:
            _log.error(
                "storage indexes declared by the contracts were not applied: %s: %s",
                type(error).__name__,
                error,
            )

    def _readiness_sources(self) -> ReadinessSources:
        """What ``/readyz`` reads: this host's health, drain, plugins and storage."""

        def plugins() -> list[tuple[str, str, tuple[str, ...]]]:
            if self._plugins is None:
                return []
            return [
                (record.name, record.state, record.services) for record in self._plugins.records()
            ]

        def storage_probe() -> Callable[[], Awaitable[bool]] | None:
            return None if self._storage is None else self._storage.probe

        return ReadinessSources(
            health=self.health,
            draining=lambda: self._stopping is not None or self._released,
            plugins=plugins,
            storage_probe=storage_probe,
            probe_interval=self.config.storage.probe_interval,
            strict_plugins=self.config.plugins.strict,
        )

    async def _check_rate_limiter(self) -> None:
        """Say at start that the rate limiter's Redis does not answer: it fails closed,
        so every call is refused until it does (the events bus and the cache say so
        themselves when they first miss Redis)."""
        if self._buckets is None:
            return
        cause = await self._buckets.unreachable()
        if cause is not None:
            _log.warning(
                "%s; every call is refused UNAVAILABLE until it answers",
                unreachable("rate limiter Redis", self.config.limits.redis_url, cause),
            )

    def _build_stages(
        self, verifier: TokenVerifier, sessions: SessionGuard, audit: AuditLog
    ) -> list[Stage]:
        limits = self.config.limits
        if limits.backend == "redis":
            self._buckets = RedisBuckets.from_url(limits.redis_url)
            buckets: Buckets = self._buckets
        else:
            buckets = MemoryBuckets()
        server = self.config.server
        grpc_policy = NetworkPolicy.from_lists("server", server.allow, server.deny)
        return build_stages(
            forwarded=ForwardedStage(
                TrustedProxies(
                    parse_networks("server.trusted_proxies", server.trusted_proxies),
                    header=server.forwarded_header,
                ),
                policy_active=grpc_policy.active,
            ),
            observe=ObserveStage(access_log=self.config.log.access),
            metrics=self.metrics.stage(),
            network=NetworkStage(grpc_policy, self.refused),
            concurrency=ConcurrencyStage(limits.max_concurrent_calls),
            deadline=DeadlineStage(),
            auth=AuthStage(
                verifier,
                audit,
                sessions=sessions,
                clients=self._client_directory(),
                certificate_first=self.config.auth.identity_precedence == "certificate",
            ),
            rate_limit=RateLimitStage(buckets, parse_rate_classes(limits.rate_classes)),
            streams=self.streams,
            access=AccessStage(audit, shadow=self.config.auth.shadow_mode),
            admin_audit=AdminAuditStage(audit),
            validation=ValidationStage(),
            tracing=tracing_enabled(),
        )

    def _client_directory(self) -> ClientDirectory | None:
        """``[auth.clients]``, when some port verifies client certificates."""
        config = self.config
        if not config.auth.clients:
            return None
        verifying = config.server.tls.client_auth != "none" or (
            bool(config.http.address) and config.http.tls.client_auth != "none"
        )
        if not verifying:
            # No connection can carry a verified certificate: no call looks for one.
            _log.warning(
                "auth.clients lists %d identities but no port verifies client certificates "
                "(server.tls.client_auth and http.tls.client_auth are 'none')",
                len(config.auth.clients),
            )
            return None
        return ClientDirectory(config.auth.clients)

    def _install_core_services(self, manager: PluginManager, audit: AuditLog) -> None:
        in_flight = InFlight()
        assert self._storage is not None  # opened before the services are installed
        bindings = [
            *bind_servicer(self.health.servicer),
            *reflection_bindings(ReflectionServicer(self.router)),
            *bind_servicer(
                AdminServicer(
                    manager,
                    self.health,
                    audit,
                    bus=self.bus,
                    indexes=IndexesAdmin(
                        self._storage,
                        drop_delay=self.config.storage.index_drop_delay,
                        declared=lambda: (t.full_name for t in loaded_message_types()),
                    ),
                    restart_workers=self.broadcast.restart_workers,
                )
            ),
        ]
        routes = []
        for binding in bindings:
            routes.extend(
                build_routes(binding, plugin=CORE_PLUGIN, stages=self._stages, in_flight=in_flight)
            )
        self.router.add(routes)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping is not None

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, keep serving for ``shutdown_delay``, drain for ``grace``, stop."""
        if self._plugins is not None:
            # From the first moment: a swap accepted now would be cut by the plugins' stop.
            self._plugins.swap.refuse()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        settings = self.config.server
        grace = settings.grace_period if grace is None else grace
        # Asked as the stop begins: a worker's supervisor learns at once that this one
        # is on its way out (and gives the slot's next worker a socket of its own).
        await self._hands_over()
        # A worker replaced in a rolling restart does not announce it: the others serve
        # on, so health stays SERVING and its clients move over as its connections close.
        if self.announce_shutdown:
            await self.health.shut_down()
            if self._server is not None and settings.shutdown_delay > 0:
                # Load balancers polling health stop sending before new calls are refused.
                await asyncio.sleep(settings.shutdown_delay)
        _log.info("draining calls for up to %.1fs", grace, extra={"grace_period": grace})
        await self._release(grace)
        _log.info("nexus stopped")

    async def _hands_over(self) -> bool:
        if self._handing_over is None:
            self._handing_over = self.hand_over_http is not None and await self.hand_over_http()
        return self._handing_over

    async def _release(self, grace: float) -> None:
        """Stop the listeners (draining for ``grace``), the plugins, then storage; once
        (a stop after a failed start finds everything released already)."""
        if self._released:
            return
        self._released = True
        if self._index_sweep is not None:
            # First: a PostgreSQL DROP INDEX CONCURRENTLY has no place in a drain.
            await self._index_sweep.stop()
        if self._watching is not None:
            self._stop_watching.set()
            await asyncio.wait([self._watching], timeout=5)
            # Still busy (a swap taking its time): stop waiting for it; the swap itself
            # goes on to its end, and stopping the plugins waits for it.
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        # Streams never end by themselves: waiting for them would use up the whole grace
        # period and then cut them. Each ends now, in band, with UNAVAILABLE, so its
        # client reconnects elsewhere while unary calls in flight finish.
        if self.tls is not None:
            await self.tls.stop()
        ended = self.streams.end_all()
        if ended:
            _log.info("ended %d open stream(s): server shutting down", ended)
        # Asked first: the gRPC stop below must not wait for the answer to begin.
        hand_over = await self._hands_over()
        stopping = []
        if self._server is not None:
            if not self._serving:
                # grpc.aio keeps a bound port until the server has started and stopped;
                # a start that failed half-way must still give the port back.
                await self._server.start()
            stopping.append(self._server.stop(grace))
        if self._http is not None:
            stopping.append(self._http.stop(grace, hand_over=hand_over))
        await asyncio.gather(*stopping)
        # Events raised by the last calls are delivered before the plugins stop.
        await self.bus.stop(grace)
        # After the bus: handlers finishing during its stop may still publish.
        await self.outbox.stop()
        if self._plugins is not None:
            await self._plugins.stop_all()
        if self._storage is not None:
            await self._storage.close()
        await self.cache.close()
        if self.tokens is not None:
            self.tokens.sessions.close()
        if self._buckets is not None:
            await self._buckets.aclose()
        if self._tracing is not None:
            # Last: the spans of the drain and of the plugins' stop hooks are exported too.
            await asyncio.to_thread(self._tracing.shutdown)
            self._tracing = None

    def _overall_serving(self) -> bool:
        if self._storage is None or not self.config.storage.gates_overall_health:
            return True
        return self._storage.health.healthy

    async def _on_storage_health(self, healthy: bool) -> None:
        # After shut_down() everything stays NOT_SERVING, whatever the storage does.
        if self._stopping is not None or self._released:
            return
        await self.health.set(STORAGE_HEALTH, healthy)
        if self._overall_published:
            await self.health.set(OVERALL, self._overall_serving())

    async def _on_tls_health(self, healthy: bool) -> None:
        # Certificates close to expiry: a warning under nexus.tls only, the host keeps
        # serving (see nexus_grpc.tls.service).
        if self._stopping is None:
            await self.health.set(TLS_HEALTH, healthy)

    async def reload_tls(self) -> int:
        """Read the certificate files of both ports again (SIGHUP); ports changed."""
        if self.tls is None:
            return 0
        return await self.tls.reload()

    async def _on_events_health(self, healthy: bool) -> None:
        # After shut_down() everything stays NOT_SERVING, whatever Redis does.
        if self._stopping is None:
            await self.health.set(EVENTS_HEALTH, healthy)

    async def force_stop(self) -> None:
        """Cancel in-flight calls now, gRPC and HTTP (a second SIGTERM during a drain)."""
        if self._http is not None:
            self._http.force_stop()
        if self._server is not None:
            await self._server.stop(0)

    async def run_until_signalled(
        self, on_started: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully (a second signal forces).

        A signal during start-up cancels the start: plugins already started are stopped.
        ``on_started`` is awaited once the host serves (a worker tells its supervisor).
        """
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        starting = asyncio.ensure_future(self.start())
        forced: list[asyncio.Task[None]] = []

        def on_signal(number: signal.Signals) -> None:
            if not starting.done():
                _log.info("%s received during start-up: cancelling", number.name)
                starting.cancel()
                return
            if signalled.is_set():
                _log.warning("%s again: cancelling in-flight calls", number.name)
                forced.append(loop.create_task(self.force_stop()))
                return
            _log.info("%s received: shutting down", number.name)
            signalled.set()

        reloads: set[asyncio.Task[int]] = set()

        def on_hangup() -> None:
            _log.info("SIGHUP received: reloading TLS certificates")
            task = loop.create_task(self.reload_tls())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, on_signal, number)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            try:
                await starting
            except asyncio.CancelledError:
                _log.info("nexus stopped before it started")
                return
            if on_started is not None:
                # Raced with the signal: on_started may wait long (a worker waits for
                # its health to turn SERVING) and a stop must not wait for it.
                reporting = asyncio.ensure_future(on_started())
                stopping = loop.create_task(signalled.wait())
                await asyncio.wait({reporting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if reporting.done():
                    reporting.result()  # its failure stops the host as before
                else:
                    reporting.cancel()
                    await asyncio.gather(reporting, return_exceptions=True)
            await signalled.wait()
            await self.stop()
        finally:
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(number)
