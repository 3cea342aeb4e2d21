"""Host configuration: embedded defaults, then a TOML file, then ``NEXUS_*`` variables.

Every key has a default, so ``nexus serve`` runs with no file at all. A wrong value is
reported with its key, where it came from and what was expected, before anything
starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_grpc.config_env import NOT_CONFIG, check_env_names

__all__ = [
    "AuthConfig",
    "ClientIdentityConfig",
    "Config",
    "ConfigError",
    "EventsConfig",
    "HotSwapConfig",
    "HttpConfig",
    "LimitsConfig",
    "LogConfig",
    "PluginsConfig",
    "ServerConfig",
    "StorageConfig",
    "TlsConfig",
    "TracingConfig",
    "load_config",
]

ENV_PREFIX = "NEXUS_"
# Sizes and counts end up in gRPC channel arguments, which are C ints.
_MAX_INT = 2**31 - 1
#: Separates nesting levels in variable names: NEXUS_SERVER__GRPC_ADDRESS.
ENV_NESTING = "__"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS on one listening port (``[server.tls]``, ``[http.tls]``), from PEM files.

    The port speaks plaintext while ``cert_file`` is empty. The files are read again when
    they change (every ``reload_interval`` seconds) or on SIGHUP: new connections get the
    new certificate, open ones keep theirs.
    """

    #: PEM certificate chain, the server's certificate first; empty: plaintext.
    cert_file: str = ""
    #: PEM private key of that certificate (not encrypted).
    key_file: str = ""
    #: PEM CA certificate(s) client certificates must chain to (mutual TLS).
    client_ca_file: str = ""
    #: Client certificates: "none" (not asked for), "optional" (asked for, verified when
    #: sent; HTTP port only) or "require" (handshakes without a valid one fail).
    client_auth: str = "none"
    #: Oldest TLS version accepted: "1.2" or "1.3" (HTTP port only; grpcio cannot raise it).
    min_version: str = "1.2"
    #: Seconds between checks of the files for a rotated certificate; 0: SIGHUP only.
    reload_interval: float = 10.0
    #: Days before the certificate expires from which a warning is logged (and the
    #: ``nexus.tls`` health entry says so); 0 for no warning.
    expiry_warning_days: float = 14.0

    @property
    def enabled(self) -> bool:
        """Whether the port speaks TLS."""
        return bool(self.cert_file)


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC listener."""

    #: host:port to listen on; port 0 picks a free port (tests).
    grpc_address: str = "127.0.0.1:50051"
    #: Seconds in-flight calls may take to finish after SIGTERM before they are cancelled.
    grace_period: float = 10.0
    #: Share the port with other processes (multi-worker mode). Off by default because
    #: grpcio turns SO_REUSEPORT on silently, letting two hosts bind the same port.
    reuse_port: bool = False
    #: Worker processes serving both ports ("auto": one per usable core). Above 1 a
    #: supervisor starts them, they share the ports with SO_REUSEPORT (the HTTP port on
    #: listening sockets the supervisor keeps, one per worker slot), and the limits,
    #: the events and the cache must be on Redis (state every worker shares).
    workers: int = 1
    #: Seconds to keep serving after health turns NOT_SERVING on shutdown, so load
    #: balancers polling health stop routing here before new calls are refused.
    shutdown_delay: float = 0.0
    #: Largest message accepted or sent, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    #: Seconds a gRPC call without a deadline may take to send its request message
    #: (unary-request methods) before it ends DEADLINE_EXCEEDED; 0 for no limit. Like
    #: nginx's client_body_timeout (60s): the handler cannot start before the message.
    request_read_timeout: float = 60.0
    #: Most calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS);
    #: more are refused. Envoy's edge guidance and nginx use 100 and 128; grpcio has no cap.
    max_concurrent_streams: int = 100
    #: Seconds a connection may stay without calls before it is closed (GOAWAY); 0 for
    #: never. Idle clients reconnect on their next call.
    max_connection_idle: float = 900.0
    #: Seconds a connection may live before it is asked to go away (GOAWAY, ±10% jitter);
    #: 0 for no limit. With ``max_connection_age_grace`` it bounds every call on the
    #: connection, including one whose request message never arrives.
    max_connection_age: float = 3600.0
    #: Seconds calls may go on after ``max_connection_age``'s GOAWAY before the
    #: connection is closed under them.
    max_connection_age_grace: float = 300.0
    #: Seconds between the server's keepalive pings on a quiet connection (finds dead
    #: peers); grpc-go's and grpc core's default.
    keepalive_time: float = 7200.0
    #: Seconds to wait for a keepalive ping's answer before closing the connection.
    keepalive_timeout: float = 20.0
    #: Least seconds between a client's pings when it sends no data; faster pings are
    #: strikes (grpc-go's ``EnforcementPolicy.MinTime`` default).
    keepalive_min_ping_interval: float = 300.0
    #: Accept client pings on a connection with no calls.
    keepalive_permit_without_calls: bool = False
    #: Ping strikes before the connection is closed with GOAWAY ENHANCE_YOUR_CALM.
    max_ping_strikes: int = 2
    #: Seconds a new connection has to complete its handshake.
    handshake_timeout: float = 20.0
    #: Largest request header list (metadata), in bytes; larger calls are refused.
    max_metadata_bytes: int = 8 * 1024
    #: Open gRPC connections at most; new ones beyond it are closed at once (0 for no
    #: cap). Lowered to 3/8 of the open-file limit at start, so that connections on this
    #: port cannot use up the descriptors the HTTP port, storage and Redis need.
    max_connections: int = 4096
    #: Networks (CIDR, IPv4 or IPv6, or single addresses) that may connect; empty allows
    #: everyone. Enforced in the kernel on Linux: a refused client's SYN is dropped.
    allow: tuple[str, ...] = ()
    #: Networks that may not connect, even when also in ``allow`` (deny wins).
    deny: tuple[str, ...] = ()
    #: Proxies (CIDRs) in front of the gRPC port whose ``forwarded_header`` metadata
    #: names the client: only for calls from these peers is the client address taken
    #: from it (rightmost hop not a trusted proxy), for rate limits, the login
    #: throttle, logs, audit and ``allow``/``deny`` (which must then let the proxies
    #: connect). Without it every client behind a balancer shares its address.
    trusted_proxies: tuple[str, ...] = ()
    #: The one metadata key trusted proxies name the client in: "x-forwarded-for"
    #: (default) or "forwarded" (RFC 7239); the other is ignored, never a fallback.
    forwarded_header: str = "x-forwarded-for"
    #: Refuse to start when a port listens on a non-loopback address without TLS
    #: (both ports). Off, such a port starts with a warning in the log.
    require_tls: bool = False
    #: TLS on the gRPC port (ALPN h2); plaintext while ``tls.cert_file`` is empty.
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP listener: REST/JSON transcoding, gRPC-Web, OpenAPI."""

    #: host:port to listen on; empty turns HTTP off; port 0 picks a free port.
    address: str = "127.0.0.1:8080"
    #: Largest request body accepted, in bytes (413 beyond).
    max_body_bytes: int = 4 * 1024 * 1024
    #: Longest query string accepted, in bytes (414 beyond; 0 for no limit). nginx
    #: allows an 8 KiB request line, Envoy 60 KiB of headers in all.
    max_query_bytes: int = 16 * 1024
    #: Request bodies at least this large are decoded into messages in a worker thread,
    #: so a large JSON body does not stall every other call on the event loop for the
    #: ~50 ms/MB the decoding takes; 0 decodes every body on the loop.
    thread_parse_bytes: int = 64 * 1024
    #: Origins allowed to call from a browser ("*" for any); none by default.
    cors_origins: tuple[str, ...] = ()
    #: Headers passed to handlers as metadata, besides Authorization and Grpc-Metadata-*.
    forward_headers: tuple[str, ...] = ("x-request-id", "accept-language", "user-agent")
    #: Reject query parameters that name no field, instead of ignoring them.
    strict_query: bool = False
    #: Write fields that hold their default value.
    emit_defaults: bool = False
    #: Write proto field names (customer_id) instead of lowerCamel (customerId).
    proto_names: bool = False
    #: Deadline in seconds of calls without a Grpc-Timeout header; 0 for none.
    default_timeout: float = 0.0
    #: Seconds a client has to send a request's line and headers, from its first byte (or
    #: from accept for a connection's first request); 408 or a close after. nginx's
    #: client_header_timeout is 60 s; an API client sends its headers in one packet.
    header_timeout: float = 10.0
    #: Seconds allowed between two pieces of a request body (each chunk restarts it);
    #: 408 or a close after. nginx's client_body_timeout is 60 s.
    body_timeout: float = 30.0
    #: Seconds a response may wait for a client that stopped reading it (its socket
    #: buffers full): the call then ends DEADLINE_EXCEEDED and the connection is closed,
    #: instead of a handler held for good. nginx's send_timeout is 60 s; 0 for none.
    send_timeout: float = 60.0
    #: Seconds an idle keep-alive connection stays open between requests: nginx's 75 s,
    #: above the 60 s idle timeout of common load balancers (else they reuse connections
    #: the host is closing: sporadic 502s). Idle connections are the first the cap closes.
    keepalive_timeout: float = 75.0
    #: Open HTTP connections at most; beyond it the oldest idle connection (or the new
    #: one, when none is idle) is closed. Lowered to 3/4 of the open-file limit at start.
    max_connections: int = 4096
    #: Largest request line plus headers (and, separately, a chunked request's trailers),
    #: in bytes (431 beyond). nginx allows 4 x 8 KiB.
    max_header_bytes: int = 32 * 1024
    #: Most header fields in a request, and trailer fields after a chunked body (431
    #: beyond); Envoy's headers_count default is 100.
    max_headers: int = 100
    #: Networks (CIDR, IPv4 or IPv6, or single addresses) that may connect; empty allows
    #: everyone. A refused connection is reset as it is accepted, before a byte is read.
    allow: tuple[str, ...] = ()
    #: Networks that may not connect, even when also in ``allow`` (deny wins).
    deny: tuple[str, ...] = ()
    #: Proxies (CIDRs) whose ``forwarded_header`` names the client: only
    #: from these peers is the client address taken from the headers (rightmost hop not
    #: a trusted proxy), for rate limits, the login throttle, logs and ``allow``/``deny``.
    trusted_proxies: tuple[str, ...] = ()
    #: The one header trusted proxies name the client in: "x-forwarded-for" (default) or
    #: "forwarded" (RFC 7239). The other is ignored, never a fallback: a proxy that writes
    #: one and passes the other through from the client would let the client pick.
    forwarded_header: str = "x-forwarded-for"
    #: TLS on the HTTP port (ALPN http/1.1); plaintext while ``tls.cert_file`` is empty.
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class ClientIdentityConfig:
    """What a client certificate's identity may do: ``[auth.clients."spiffe://acme/orders"]``."""

    #: Role names the principal carries (labels for handlers and audit records).
    roles: tuple[str, ...] = ()
    #: Grants ``resource.action:scope`` the principal holds (what policies check).
    grants: tuple[str, ...] = ()
    #: The principal's team (for ``team``-scoped grants).
    team: str = ""


@dataclass(frozen=True)
class AuthConfig:
    """Token verification and issuing."""

    #: Required ``iss`` of tokens, and the issuer of the tokens the auth plugin makes.
    issuer: str = "nexus"
    #: Required ``aud`` of tokens (exact match).
    audience: str = "nexus"
    #: Accepted algorithms, all of one family: HS256/384/512, or asymmetric
    #: (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA). Never "none".
    algorithms: tuple[str, ...] = ("HS256",)
    #: HMAC secret file for HS* algorithms; empty means ``<data_dir>/jwt-hs256.key``,
    #: generated on first run (development default).
    secret_file: str = ""
    #: PEM public key for asymmetric algorithms (verification).
    public_key_file: str = ""
    #: PEM private key for asymmetric algorithms (issuing, by the auth plugin).
    private_key_file: str = ""
    #: JWKS URL to fetch verification keys from (asymmetric algorithms).
    jwks_url: str = ""
    #: Least seconds between two JWKS fetches (unknown ``kid``s do not force more).
    jwks_refresh_interval: float = 300.0
    #: Clock skew tolerated on exp, nbf and iat, in seconds (at most 60).
    leeway: float = 30.0
    #: Lifetime of access tokens, seconds.
    access_token_ttl: int = 900
    #: Lifetime of refresh tokens, seconds.
    refresh_token_ttl: int = 7 * 24 * 3600
    #: Longest token accepted, in bytes; longer ones are refused unparsed.
    max_token_bytes: int = 8192
    #: Longest seconds a host trusts its cached copy of a user's token epoch (roles
    #: changed, disabled, deleted, logged out everywhere). With ``[cache] backend =
    #: "redis"`` changes reach every instance at once and this only bounds a lost
    #: message; without Redis it is how long other instances may accept a revoked token.
    session_check_ttl: float = 5.0
    #: Failed logins of one user name that are let through before throttling starts.
    login_free_failures: int = 5
    #: First lockout of a user name after ``login_free_failures`` failures, seconds;
    #: each further failure doubles it.
    login_lockout_base: float = 1.0
    #: Longest lockout, seconds: the most an attacker can keep a real user out.
    login_lockout_max: float = 300.0
    #: Seconds without a failure after which a user name's failures are forgotten.
    login_failure_window: float = 900.0
    #: Log would-be denials without enforcing them (rolling out a new policy).
    shadow_mode: bool = False
    #: Plugins handed the token issuer besides the bundled ``auth`` plugin (found in the
    #: nexus-grpc package itself, which always gets it), by name, from wherever they are
    #: installed; each one not bundled is warned about at start. An installed
    #: distribution that merely calls its plugin "auth" cannot mint tokens unless listed.
    #: A manifest's name and category are the plugin's own claim; the operator decides.
    issuer_plugins: tuple[str, ...] = ()
    #: Grants each plugin's own identity may hold: a manifest's ``permissions`` are
    #: the plugin's request, and one asking for a grant not listed here fails to load.
    #: ``[auth.plugin_permissions] shop = ["inventory.manage:all"]``.
    plugin_permissions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Client certificate identities (a SAN URI such as a SPIFFE ID, or a SAN DNS name)
    #: that are principals, with their grants. A verified certificate naming none of
    #: these is no identity: the call needs a token.
    clients: Mapping[str, ClientIdentityConfig] = field(default_factory=dict)
    #: Which identity a call carrying both a bearer token and a listed client
    #: certificate runs as: "token" or "certificate".
    identity_precedence: str = "token"


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits and concurrency."""

    #: Token-bucket classes: ``{"default": {"rate": 50, "burst": 100}}`` — tokens
    #: added per second and bucket size, per principal (or peer when anonymous).
    rate_classes: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: {
            "default": {"rate": 100.0, "burst": 200.0},
            "login": {"rate": 1.0, "burst": 10.0},
        }
    )
    #: "memory" (one process) or "redis" (shared by every instance).
    backend: str = "memory"
    #: Redis URL for the redis backend.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Calls served at once, all transports together; 0 for no limit.
    max_concurrent_calls: int = 0
    #: Streaming calls open at once, all callers and transports together; 0 for no
    #: limit. Each holds a task and a bounded queue for as long as its client likes;
    #: 1000 is ten HTTP/2 connections at the per-connection stream limits of nginx
    #: (128) and grpc-go/Envoy edge configurations (100).
    max_streams: int = 1000
    #: Streaming calls one principal (or one peer address, when anonymous) may have
    #: open at once; 0 for no limit. A browser opens at most 6 EventSource streams per
    #: host over HTTP/1.1; 16 leaves room for several tabs and devices and keeps one
    #: caller to a small share of ``max_streams``.
    max_streams_per_principal: int = 16


@dataclass(frozen=True)
class EventsConfig:
    """The event bus between plugins."""

    #: "memory": in process, at most once across a crash. "redis": Redis Streams, at
    #: least once, shared by every instance.
    backend: str = "memory"
    #: Deliveries of one event to one consumer before it is set aside as a dead letter.
    max_attempts: int = 5
    #: Seconds before the first retry; doubles each time.
    retry_backoff: float = 0.1
    #: Redis URL for the redis backend.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Key prefix: {prefix}:events:<type>, {prefix}:dead:<group>, {prefix}:retry:<group>.
    redis_prefix: str = "nexus"
    #: Seconds an unacknowledged event waits before another instance takes it over.
    claim_idle: float = 30.0
    #: Approximate entries kept per event stream (also how far replay reaches back).
    max_stream_length: int = 1_000_000
    #: Seconds an outbox row is left to the process that wrote it before any relays it.
    outbox_relay_after: float = 5.0
    #: Seconds between two outbox relays of due rows (what was published is deleted in
    #: batches of 100 in between).
    outbox_poll_interval: float = 1.0
    #: Seconds a consumer's inbox remembers a handled event (after the event's time).
    inbox_retention: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class CacheConfig:
    """The cache plugins get as ``ctx.cache``."""

    #: "memory": in process only. "redis": in-process L1 in front of Redis, shared and
    #: invalidated across instances.
    backend: str = "memory"
    #: Redis URL for the redis backend.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Key prefix: {prefix}:cache:<namespace>:<key>.
    redis_prefix: str = "nexus"
    #: Entries kept in each process's L1 (least recently used go first).
    max_entries: int = 10_000
    #: Longest seconds an L1 copy of a Redis entry is used (the staleness bound when an
    #: invalidation is lost).
    l1_ttl: float = 5.0
    #: Seconds an entry lives when ``set`` is given no ttl.
    default_ttl: float = 300.0


@dataclass(frozen=True)
class HotSwapConfig:
    """Loading, unloading and reloading plugins in a running host (``[plugins.hot_swap]``).

    Off by default: loading code is the most dangerous thing an admin call can do, so an
    operator turns it on knowingly (and can narrow it with ``allowed_hashes``).
    """

    #: Accept LoadPlugin, UnloadPlugin and ReloadPlugin (callers also need the
    #: ``plugins.load`` / ``plugins.unload`` permission); off: FAILED_PRECONDITION.
    enabled: bool = False
    #: Seconds an unload or reload waits for the old code's calls to finish; the calls
    #: still running then end with UNAVAILABLE.
    drain_timeout: float = 10.0
    #: Seconds a new version may take, once its start hook returned (bounded by
    #: ``plugins.hook_timeout``), to report healthy (``Plugin(health=...)`` True);
    #: past it the swap is rolled back.
    start_timeout: float = 10.0
    #: When not empty, only plugins whose code hash (sha256 over the plugin's files, as
    #: ``nexus plugins`` and the admin API show it) is listed may be loaded or reloaded.
    allowed_hashes: tuple[str, ...] = ()
    #: Development: watch the plugin folders and reload a plugin whose files change
    #: (``nexus serve --reload`` turns it on; needs ``enabled``).
    watch: bool = False
    #: Seconds the watcher waits for edits to settle before reloading.
    watch_debounce: float = 0.3


@dataclass(frozen=True)
class PluginsConfig:
    """Where plugins come from and which ones run."""

    #: Folders whose sub-folders holding a ``manifest.toml`` are plugins. A missing
    #: "plugins" (this default) is no warning: it is there in the nexus repository only.
    dirs: tuple[str, ...] = ("plugins",)
    #: Plugins shipped in the nexus-grpc package to load (auth, orders, inventory), or
    #: ["*"] for all; none by default. A plugin also found in ``dirs`` (the same
    #: folder, as in the repository) is loaded once.
    bundled: tuple[str, ...] = ()
    #: Also load plugins installed through the ``nexus.plugins`` entry-point group.
    entry_points: bool = True
    #: Only these plugins (by name); empty means every plugin discovered.
    enabled: tuple[str, ...] = ()
    #: Never these plugins.
    disabled: tuple[str, ...] = ()
    #: Refuse to start when any plugin fails, instead of starting without it.
    strict: bool = False
    #: Seconds a plugin's start or stop hook may take.
    hook_timeout: float = 30.0
    #: Changing plugins while the host runs.
    hot_swap: HotSwapConfig = field(default_factory=HotSwapConfig)


@dataclass(frozen=True)
class StorageConfig:
    """The database behind plugin repositories."""

    #: SQLAlchemy async URL; empty means SQLite in ``<data_dir>/nexus.db``.
    url: str = ""
    #: Seconds connecting to PostgreSQL (or finding a MongoDB server) may take before
    #: the call fails UNAVAILABLE; a ``timeout`` / ``serverSelectionTimeoutMS`` in the
    #: URL wins.
    connect_timeout: float = 5.0
    #: Seconds between two health probes (a one-row write) while the storage is
    #: unavailable; health ``nexus.storage`` turns SERVING on the first that succeeds.
    probe_interval: float = 2.0
    #: Seconds one health probe may take before it counts as failed.
    probe_timeout: float = 2.0
    #: An unavailable storage turns the overall health ("") NOT_SERVING too, so load
    #: balancers stop sending calls that could only fail; False reports it only under
    #: ``nexus.storage``.
    gates_overall_health: bool = True
    #: Seconds an index nexus built is kept once no loaded contract declares it, before
    #: it is dropped: during a rolling upgrade the processes still on the previous
    #: release list from it, and a release rolled back within this time needs no
    #: rebuild. Make it longer than a rolling upgrade takes; 0 drops it at start.
    index_drop_delay: float = 900.0
    #: SQLite: units of work of concurrent writers that share one COMMIT at most
    #: (group commit, see docs/storage.md); 1 commits each alone. The storage layer's
    #: GROUP_COMMIT_UNITS, written here too so that reading a config imports no storage.
    group_commit_units: int = 8


#: Most units of work one SQLite COMMIT may take (``storage.group_commit_units``).
MAX_GROUP_COMMIT_UNITS = 64


@dataclass(frozen=True)
class LogConfig:
    """Log output."""

    #: debug, info, warning or error.
    level: str = "info"
    #: json (one object per line), text, or auto (text on a terminal, else json).
    format: str = "auto"
    #: One access-log line per call (method, code, duration, request id).
    access: bool = True


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing, off by default. The standard ``OTEL_*`` variables
    (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...) win over these keys;
    see :mod:`nexus_grpc.tracing.otel_env`."""

    #: Record and export a span per call (OTEL_TRACES_EXPORTER=otlp|console turns it on
    #: too; OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true turn it off).
    enabled: bool = False
    #: otlp (an OpenTelemetry collector, Jaeger, Tempo...), console (stdout) or none.
    exporter: str = "otlp"
    #: OTLP base URL: for grpc the collector itself (default http://localhost:4317), for
    #: http/protobuf the base that /v1/traces is appended to (default http://localhost:4318).
    endpoint: str = ""
    #: Full OTLP traces URL, used as given; overrides endpoint.
    traces_endpoint: str = ""
    #: OTLP transport: grpc or http/protobuf.
    protocol: str = "grpc"
    #: Export request headers as "name=value" (an API key of a hosted backend, ...).
    headers: tuple[str, ...] = ()
    #: Seconds one export may take.
    timeout: float = 10.0
    #: service.name of every span; empty: the service.name of resource_attributes (or
    #: OTEL_RESOURCE_ATTRIBUTES), else "nexus". OTEL_SERVICE_NAME wins over both.
    service_name: str = ""
    #: More resource attributes as "key=value" (deployment.environment.name=prod, ...).
    resource_attributes: tuple[str, ...] = ()
    #: always_on, always_off, traceidratio, or parentbased_ + one of them.
    sampler: str = "parentbased_always_on"
    #: Fraction of traces kept by the traceidratio samplers, 0 to 1.
    sampler_arg: float = 1.0


@dataclass(frozen=True)
class Config:
    """Everything the host reads at start-up."""

    #: Folder for the embedded database and generated keys.
    data_dir: str = ".nexus"
    server: ServerConfig = field(default_factory=ServerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    #: Per-plugin settings: ``[plugin.orders]`` becomes the orders plugin's config.
    plugin: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def storage_url(self) -> str:
        """The storage URL, defaulting to the embedded SQLite file."""
        if self.storage.url:
            return self.storage.url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'nexus.db'}"


_CHOICES: dict[str, tuple[str, ...]] = {
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("auto", "json", "text"),
    "limits.backend": ("memory", "redis"),
    "events.backend": ("memory", "redis"),
    "cache.backend": ("memory", "redis"),
    "auth.identity_precedence": ("token", "certificate"),
    "server.tls.client_auth": ("none", "optional", "require"),
    "http.tls.client_auth": ("none", "optional", "require"),
    "http.forwarded_header": ("x-forwarded-for", "forwarded"),
    "server.forwarded_header": ("x-forwarded-for", "forwarded"),
    "server.tls.min_version": ("1.2", "1.3"),
    "http.tls.min_version": ("1.2", "1.3"),
    "tracing.exporter": ("otlp", "console", "none"),
    "tracing.protocol": ("grpc", "http/protobuf"),
    "tracing.sampler": (
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ),
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults, the TOML file at ``path`` and ``environ``."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    env = os.environ if environ is None else environ
    # Every NEXUS_* variable is ours (but NOT_CONFIG): a misspelt one is an error, as
    # an unknown key in the file is, instead of a setting silently left at its default.
    problems = check_env_names(env, Config, prefix=ENV_PREFIX, nesting=ENV_NESTING)
    if problems:
        raise ConfigError("; ".join(problems))
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in NOT_CONFIG:
            _apply_env(raw, name, value)
    # The standard OTEL_* variables configure tracing over [tracing] and NEXUS_TRACING__*.
    from nexus_grpc.tracing.otel_env import otel_overrides

    try:
        overrides = otel_overrides(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if overrides:
        tracing = raw.setdefault("tracing", {})
        if not isinstance(tracing, dict):
            raise ConfigError("tracing: expected a table")
        for key, (variable, text) in overrides.items():
            tracing[key] = _EnvText(variable, text)
    config = _build(Config, raw, "")
    assert isinstance(config, Config)
    _check_networks(config)
    _check_tracing(config.tracing)
    check_workers(config)
    _check_hot_swap(config.plugins.hot_swap)
    _check_storage(config.storage)
    # Imported here: the tls package reads this module's TlsConfig.
    from nexus_grpc.tls.material import check_config

    # Certificates, keys and listen addresses are checked now, so that a wrong path or a
    # key of another certificate is reported before anything starts. Not the validity
    # period: commands that only read the configuration (users create, policy explain)
    # serve no TLS; Host.start and every reload check it.
    check_config(config, validity=False)
    return config


#: Most worker processes ``server.workers`` accepts (each is a whole host).
MAX_WORKERS = 256


def parse_workers(value: object) -> int:
    """``server.workers`` / ``--workers``: a count from 1 to :data:`MAX_WORKERS`, or
    "auto" for the cores this process may use (:func:`usable_cpus`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, min(usable_cpus(), MAX_WORKERS))
    try:
        count = int(value) if isinstance(value, str) else value
    except ValueError:
        count = None
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_WORKERS:
        raise ConfigError(
            f'server.workers: expected a count from 1 to {MAX_WORKERS} or "auto", got {value!r}'
        )
    return count


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """The cores this process may use: those it may run on (``sched_getaffinity``),
    fewer when its cgroup's CPU quota is lower (a container limited to 1.5 CPUs on a
    64-core node gets 2, not 64)."""
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    return cores if quota is None else max(1, min(cores, quota))


def cgroup_cpu_quota(cgroup_root: Path, self_cgroup: Path) -> int | None:
    """``ceil(quota / period)`` of this process's cgroup and its ancestors (the lowest
    applies), from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``; None without a quota or when none can be read."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[Path] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        relative = path.strip().lstrip("/")
        if controllers == "":  # v2: "0::/path"
            folders += _ancestors(cgroup_root, relative)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                folders += _ancestors(cgroup_root / mount, relative)
    limits = [limit for folder in folders if (limit := _quota_in(folder)) is not None]
    return min(limits) if limits else None


def _ancestors(base: Path, relative: str) -> list[Path]:
    """``base/relative`` and each parent up to ``base`` (a container sees its own
    cgroup mounted at ``base``; the path in /proc then names the host's, absent here)."""
    parts = [part for part in relative.split("/") if part and part != ".."]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _quota_in(folder: Path) -> int | None:
    try:
        fields = (folder / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return _ceil_ratio(int(fields[0]), int(fields[1]) if len(fields) > 1 else 100000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _ceil_ratio(quota, period) if quota > 0 else None


def _ceil_ratio(quota: int, period: int) -> int | None:
    return -(-quota // period) if quota > 0 and period > 0 else None


def check_workers(config: Config) -> None:
    """With more than one worker, what each process would otherwise keep to itself
    must be shared: rate-limit buckets (a memory limiter would let N times the rate
    through), the event bus (an event would reach only the worker that published it)
    and the cache (its invalidations, which also carry session revocations)."""
    if config.server.workers <= 1:
        return
    if config.plugins.hot_swap.watch:
        raise ConfigError(
            f"plugins.hot_swap.watch (nexus serve --reload) is a development mode for one "
            f"process; it cannot run with server.workers = {config.server.workers}"
        )
    missing = [
        f'{key} = "redis"'
        for key, backend in (
            ("limits.backend", config.limits.backend),
            ("events.backend", config.events.backend),
            ("cache.backend", config.cache.backend),
        )
        if backend != "redis"
    ]
    if missing:
        raise ConfigError(
            f"server.workers = {config.server.workers} needs the state the workers share on "
            f"Redis: set {', '.join(missing)} (in memory each worker process would keep its "
            "own rate limits, events and cache)"
        )


def _check_networks(config: Config) -> None:
    """Every allow/deny/trusted_proxies entry is a network, and the lists fit a filter."""
    # Imported here: the transport package reads this module.
    from nexus_grpc.transport.netpolicy import NetworkPolicy, parse_networks

    try:
        NetworkPolicy.from_lists("server", config.server.allow, config.server.deny)
        NetworkPolicy.from_lists("http", config.http.allow, config.http.deny)
        parse_networks("http.trusted_proxies", config.http.trusted_proxies)
        parse_networks("server.trusted_proxies", config.server.trusted_proxies)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_storage(storage: StorageConfig) -> None:
    """A group of units of work holds at least one and at most a few dozen."""
    units = storage.group_commit_units
    if not 1 <= units <= MAX_GROUP_COMMIT_UNITS:
        raise ConfigError(
            f"storage.group_commit_units: expected a count from 1 (each unit commits "
            f"alone) to {MAX_GROUP_COMMIT_UNITS}, got {units!r}"
        )


def _check_hot_swap(settings: HotSwapConfig) -> None:
    """Timeouts are bounded and positive; allowed hashes are sha256 hex digests."""
    for key in ("drain_timeout", "start_timeout", "watch_debounce"):
        value = getattr(settings, key)
        if not 0 < value <= 3600:
            raise ConfigError(
                f"plugins.hot_swap.{key}: expected seconds above 0 and at most 3600, got {value!r}"
            )
    for position, digest in enumerate(settings.allowed_hashes, start=1):
        text = digest.removeprefix("sha256:")
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ConfigError(
                f"plugins.hot_swap.allowed_hashes: entry {position} is not a sha256 hex "
                "digest (64 lower-case hex digits, as `nexus plugins` shows them)"
            )


def _check_tracing(tracing: TracingConfig) -> None:
    """Pairs are "key=value", the ratio is a fraction, endpoints are URLs."""
    for key in ("headers", "resource_attributes"):
        for position, pair in enumerate(getattr(tracing, key), start=1):
            name, sep, _ = pair.partition("=")
            if not sep or not name.strip():
                # Its position, not its text: a malformed header entry may be a token.
                raise ConfigError(
                    f'tracing.{key}: entry {position} is not "key=value" '
                    "(a name, '=', then the value)"
                )
    if not 0.0 <= tracing.sampler_arg <= 1.0:
        raise ConfigError(
            f"tracing.sampler_arg: expected a fraction from 0 to 1, got {tracing.sampler_arg!r}"
        )
    for key in ("endpoint", "traces_endpoint"):
        url = getattr(tracing, key)
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"tracing.{key}: expected an http:// or https:// URL "
                f"(e.g. http://localhost:4317), got {url!r}"
            )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None


def _apply_env(raw: dict[str, Any], name: str, value: str) -> None:
    keys = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
    if not all(keys):
        raise ConfigError(f"environment variable {name}: empty key segment")
    target = raw
    for key in keys[:-1]:
        child = target.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment variable {name}: {key} is not a table")
        target = child
    # Mark the value as text from the environment; _coerce parses it by the field's type.
    target[keys[-1]] = _EnvText(name, value)


@dataclass(frozen=True)
class _EnvText:
    variable: str
    text: str


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> object:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (known keys in {where}: "
            f"{', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name not in raw:
            continue
        key = prefix + item.name
        hint = hints[item.name]
        value = raw[item.name]
        if dataclasses.is_dataclass(hint):
            values[item.name] = _build(typing.cast(type, hint), value, key + ".")
        elif key == "plugin":
            values[item.name] = _plugin_tables(value)
        elif key == "auth.plugin_permissions":
            values[item.name] = _plugin_permissions(value)
        elif key == "auth.clients":
            values[item.name] = _client_identities(value)
        elif key == "limits.rate_classes":
            values[item.name] = _rate_classes(value, LimitsConfig().rate_classes)
        elif key == "server.workers":
            values[item.name] = parse_workers(value.text if isinstance(value, _EnvText) else value)
        elif key == "plugins.bundled":
            values[item.name] = _bundled(key, _coerce(key, hint, value), value)
        else:
            values[item.name] = _coerce(key, hint, value)
    return cls(**values)


def _plugin_tables(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise ConfigError("plugin: expected a table of per-plugin tables, e.g. [plugin.orders]")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"plugin.{name}: expected a table")
        tables[name] = _unwrap(table)
    return tables


def _plugin_permissions(value: Any) -> dict[str, tuple[str, ...]]:
    # Imported here: the auth package reads this module's AuthConfig.
    from nexus_grpc.auth.principal import Grant

    if not isinstance(value, Mapping):
        raise ConfigError(
            'auth.plugin_permissions: expected a table, e.g. shop = ["inventory.manage:all"]'
        )
    granted: dict[str, tuple[str, ...]] = {}
    for name, grants in value.items():
        key = f"auth.plugin_permissions.{name}"
        granted[name] = _coerce(key, tuple[str, ...], grants)
        for grant in granted[name]:
            try:
                Grant.parse(grant)
            except ValueError as error:
                raise ConfigError(f"{key}: {error}") from None
    return granted


def _client_identities(value: Any) -> dict[str, ClientIdentityConfig]:
    from nexus_grpc.auth.principal import Grant
    from nexus_grpc.tls.identity import check_client_name

    if not isinstance(value, Mapping):
        raise ConfigError(
            'auth.clients: expected a table of identities, e.g. [auth.clients."spiffe://acme/app"]'
        )
    clients: dict[str, ClientIdentityConfig] = {}
    for name, table in value.items():
        key = f'auth.clients."{name}"'
        problem = check_client_name(name)
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")
        identity = _build(ClientIdentityConfig, table, key + ".")
        assert isinstance(identity, ClientIdentityConfig)
        for grant in identity.grants:
            try:
                Grant.parse(grant)
            except ValueError as error:
                raise ConfigError(f"{key}.grants: {error}") from None
        clients[name] = identity
    return clients


def _rate_classes(
    value: Any, defaults: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            "limits.rate_classes: expected a table of classes, e.g. [limits.rate_classes.default]"
        )
    classes = {name: dict(settings) for name, settings in defaults.items()}
    for name, settings in value.items():
        if not isinstance(settings, Mapping):
            raise ConfigError(f"limits.rate_classes.{name}: expected a table with rate and burst")
        merged = classes.setdefault(name, {})
        for setting, raw in settings.items():
            key = f"limits.rate_classes.{name}.{setting}"
            if setting not in ("rate", "burst"):
                raise ConfigError(f"unknown config key {key} (known: burst, rate)")
            merged[setting] = _coerce(key, float, raw)
        if merged.get("rate", 0) <= 0 or merged.get("burst", 0) < 1:
            raise ConfigError(
                f"limits.rate_classes.{name}: needs rate > 0 (tokens per second) and burst >= 1"
            )
    return classes


def _bundled(key: str, names: tuple[str, ...], raw: Any) -> tuple[str, ...]:
    # Imported here: it looks for the installed package's plugin folder.
    from nexus_grpc.plugins.bundled import check_selection

    problem = check_selection(names)
    if problem:
        source = f" (from {raw.variable})" if isinstance(raw, _EnvText) else ""
        raise ConfigError(f"{key}{source}: {problem}")
    return names


def _unwrap(table: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _unwrap(value)
        if isinstance(value, Mapping)
        else (value.text if isinstance(value, _EnvText) else value)
        for key, value in table.items()
    }


def _coerce(key: str, hint: Any, value: Any) -> Any:
    source = f" (from {value.variable})" if isinstance(value, _EnvText) else ""
    text = value.text if isinstance(value, _EnvText) else None
    expected = _describe(hint)
    try:
        result = _parse(hint, value, text)
    except (TypeError, ValueError):
        shown = text if text is not None else value
        raise ConfigError(f"{key}{source}: expected {expected}, got {shown!r}") from None
    choices = _CHOICES.get(key)
    if choices and result not in choices:
        raise ConfigError(f"{key}{source}: expected one of {', '.join(choices)}, got {result!r}")
    if isinstance(result, int | float) and not isinstance(result, bool):
        if not math.isfinite(result) or result < 0:
            raise ConfigError(f"{key}{source}: expected {expected} >= 0, got {result!r}")
        if isinstance(result, int) and result > _MAX_INT:
            raise ConfigError(f"{key}{source}: expected {expected} <= {_MAX_INT}, got {result!r}")
    return result


def _parse(hint: Any, value: Any, text: str | None) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if text is not None:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint is int:
        if text is not None:
            return int(text)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint is float:
        if text is not None:
            return float(text)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError(value)
    if hint is str:
        if text is not None:
            return text
        if isinstance(value, str):
            return value
        raise TypeError(value)
    if origin is tuple:
        if text is not None:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError(value)
    raise TypeError(f"unsupported config type {hint!r}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings (comma-separated in environment variables)"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if isinstance(hint, type) and hint in names:
        return names[hint]
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    return str(hint)
