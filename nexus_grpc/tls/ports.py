"""TLS of one listening port: the credentials it serves with, and swapping them.

A reload reads the files again; when they changed and pass the checks, new handshakes
use them while open connections keep the certificate they began with. A broken file
(half written, a key of another certificate) changes nothing: the port goes on with
what it has and the log says why.

- gRPC: ``grpc.dynamic_ssl_server_credentials``. grpc core asks its fetcher for a new
  configuration at every handshake; the fetcher hands over the staged one once.
- HTTP: an ``ssl.SSLContext`` per set of files. The listener keeps the first one, whose
  SNI callback (called for every ClientHello, SNI sent or not) moves the handshake to
  the newest context.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import grpc

from nexus_grpc.config import ConfigError, TlsConfig
from nexus_grpc.tls.material import TlsMaterial, load_material

__all__ = ["GrpcTls", "HttpTls", "PortTls", "http_context"]

_log = logging.getLogger("nexus.tls")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}


class PortTls:
    """The certificate a port serves now, and its reload."""

    def __init__(self, port: str, where: str, config: TlsConfig) -> None:
        #: "grpc" or "http" (the metric's label).
        self.port = port
        #: The config table, e.g. "server.tls" (for messages).
        self.where = where
        self.config = config
        #: What the port serves now (files as last loaded successfully).
        self.material = load_material(config, where)
        self._stage_now(self.material)
        self._last_error = ""

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the served certificate expires (negative once it has)."""
        return self.material.not_after - (time.time() if now is None else now)

    async def reload(self) -> bool:
        """Read the files again; True when a new certificate is now served."""
        try:
            material = await asyncio.to_thread(load_material, self.config, self.where)
            if material.digest == self.material.digest:
                self._last_error = ""
                return False
            staged = await asyncio.to_thread(self._build, material)
        except (ConfigError, ssl.SSLError, OSError, ValueError) as error:
            message = str(error)
            # Polled every few seconds: a file that stays broken is reported once.
            if message != self._last_error:
                self._last_error = message
                _log.warning(
                    "%s: new certificate files not used, still serving serial %x: %s",
                    self.where,
                    self.material.serial,
                    message,
                    extra={"port": self.port},
                )
            return False
        self._last_error = ""
        self._apply(staged)
        previous, self.material = self.material, material
        _log.info(
            "%s: serving certificate serial %x (%s, expires %s) to new connections; was serial %x",
            self.where,
            material.serial,
            material.subject,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(material.not_after)),
            previous.serial,
            extra={"port": self.port, "serial": f"{material.serial:x}"},
        )
        return True

    def _stage_now(self, material: TlsMaterial) -> None:
        self._apply(self._build(material))

    def _build(self, material: TlsMaterial) -> Any:
        raise NotImplementedError

    def _apply(self, staged: Any) -> None:
        raise NotImplementedError


class GrpcTls(PortTls):
    """The gRPC port's TLS (ALPN h2 is grpc core's own)."""

    def __init__(self, config: TlsConfig, where: str = "server.tls") -> None:
        self._initial: grpc.ServerCertificateConfiguration | None = None
        self._pending: grpc.ServerCertificateConfiguration | None = None
        super().__init__("grpc", where, config)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up reloaded certificates at the next handshake."""
        assert self._initial is not None
        self._pending = None
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            # grpc-stubs types the fetcher without its documented None ("unchanged").
            self._fetch,  # type: ignore[arg-type]
            # False means "do not ask for a client certificate" to grpcio (see
            # material.check_tls_config: "optional" is refused on this port).
            require_client_authentication=self.config.client_auth == "require",
        )

    def _build(self, material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert_chain)],
            root_certificates=material.client_ca if self.config.client_auth != "none" else None,
        )

    def _apply(self, staged: grpc.ServerCertificateConfiguration) -> None:
        if self._initial is None:
            self._initial = staged
        else:
            self._pending = staged

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by grpc core (with the GIL) before each handshake; None: unchanged.
        staged, self._pending = self._pending, None
        return staged


class HttpTls(PortTls):
    """The HTTP port's TLS (ALPN http/1.1)."""

    def __init__(self, config: TlsConfig, where: str = "http.tls") -> None:
        self._base: ssl.SSLContext | None = None
        self._current: ssl.SSLContext | None = None
        super().__init__("http", where, config)

    def context(self) -> ssl.SSLContext:
        """The listener's context; its handshakes move to the newest loaded one."""
        assert self._base is not None
        return self._base

    def _build(self, material: TlsMaterial) -> ssl.SSLContext:
        return http_context(self.config, material)

    def _apply(self, staged: ssl.SSLContext) -> None:
        if self._base is None:
            self._base = staged
            staged.sni_callback = self._select
        self._current = staged

    def _select(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and current is not context:
            connection.context = current


def http_context(config: TlsConfig, material: TlsMaterial) -> ssl.SSLContext:
    """A server-side context for the HTTP port from ``config``'s files.

    The certificate chain and key are loaded from the files (Python's ssl cannot take
    them from memory); ``material`` is what the checks read from them a moment before,
    and a file replaced in between fails here (key and certificate must match) or is
    loaded by the next reload.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    context.set_alpn_protocols(["http/1.1"])
    # Renegotiation lets a client make the server redo expensive handshake work on an
    # open connection; nothing here needs it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(config.cert_file, config.key_file)
    context.verify_mode = _VERIFY[config.client_auth]
    if config.client_auth != "none":
        if material.client_ca is not None:
            context.load_verify_locations(cadata=material.client_ca.decode("ascii"))
        # A resumed session skips certificate verification and brings back the peer
        # certificate of its first handshake, kept in the listener's first context (the
        # SNI swap does not move the session cache): a client certificate whose CA was
        # rotated away, or that expired, would keep its identity. No tickets (TLS 1.3's
        # only resumption, and TLS 1.2's stateless one; CPython's server contexts then
        # resume no TLS 1.2 session ID either): every connection verifies its certificate,
        # and auth_context_from_ssl ignores a resumed session's certificate regardless.
        # Keep-alive connections make the extra handshakes rare.
        context.num_tickets = 0
        context.options |= ssl.OP_NO_TICKET
    return context
