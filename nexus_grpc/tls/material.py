"""A port's certificate, key and client CA read from their PEM files, checked together.

:func:`load_material` is what start-up and every reload use: a file that is missing,
unreadable, not PEM, an encrypted key, a key that is not the certificate's, or a
certificate expired or not yet valid is a
:class:`~nexus_grpc.config.ConfigError` naming the key and the file. :func:`check_config`
runs the same checks (and the rules about listen addresses) when the configuration loads,
without the validity period: commands that read the configuration but serve no TLS
(``nexus users create``, ``nexus policy explain``) must not fail on a certificate's dates;
``Host.start`` checks them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from nexus_grpc.config import Config, ConfigError, TlsConfig
from nexus_grpc.loopback import is_loopback_address

__all__ = [
    "NOT_BEFORE_LEEWAY",
    "TlsMaterial",
    "check_config",
    "check_tls_config",
    "load_material",
    "plaintext_exposed",
]


#: Seconds a certificate's notBefore may lie ahead of this machine's clock: a certificate
#: issued a moment ago by a machine whose clock runs slightly ahead is not refused.
NOT_BEFORE_LEEWAY = 60.0


@dataclass(frozen=True)
class TlsMaterial:
    """One port's PEM files as read, and what the checks learned of them."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    #: The server certificate's notAfter, seconds since the epoch.
    not_after: float
    serial: int
    subject: str
    #: Digest of the three files' contents: a reload with the same digest changes nothing.
    digest: str


def load_material(tls: TlsConfig, where: str, *, validity: bool = True) -> TlsMaterial:
    """Read and check the files of ``tls`` (the ``where`` table, e.g. "server.tls");
    ``validity=False`` skips the check of the certificate's validity period."""
    chain_pem = _read(tls.cert_file, f"{where}.cert_file")
    key_pem = _read(tls.key_file, f"{where}.key_file")
    ca_pem = _read(tls.client_ca_file, f"{where}.client_ca_file") if tls.client_ca_file else None
    chain = _certificates(chain_pem, f"{where}.cert_file {tls.cert_file}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"{where}.key_file {tls.key_file}: the key is encrypted; nexus needs it unencrypted "
            "(protect it with file mode 0600 instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigError(
            f"{where}.key_file {tls.key_file}: not a PEM private key ({error})"
        ) from None
    leaf = chain[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ConfigError(
            f"{where}.key_file {tls.key_file} is not the key of the certificate in "
            f"{where}.cert_file {tls.cert_file} (the first certificate of the chain must be "
            "the server's)"
        )
    if validity:
        _check_validity(leaf, f"{where}.cert_file {tls.cert_file}")
    if ca_pem is not None:
        _certificates(ca_pem, f"{where}.client_ca_file {tls.client_ca_file}")
    digest = hashlib.sha256()
    for part in (chain_pem, key_pem, ca_pem or b""):
        digest.update(hashlib.sha256(part).digest())
    return TlsMaterial(
        cert_chain=chain_pem,
        key=key_pem,
        client_ca=ca_pem,
        not_after=leaf.not_valid_after_utc.timestamp(),
        serial=leaf.serial_number,
        subject=leaf.subject.rfc4514_string(),
        digest=digest.hexdigest(),
    )


def _read(path: str, key: str) -> bytes:
    if not path:
        raise ConfigError(f"{key} is empty; TLS needs it")
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key} {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{key} {path} cannot be read: {error.strerror}") from None


def _certificates(pem: bytes, where: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{where}: no PEM certificate in the file") from None
    return certificates


def _check_validity(leaf: x509.Certificate, where: str) -> None:
    """Refuse a server certificate outside its validity period: every client would refuse
    the handshake, so serving it (at start, or in place of a good one on reload) is an
    outage. A not-yet-valid certificate fails too, past :data:`NOT_BEFORE_LEEWAY` (clock
    skew between the issuer and this machine): reloads try the files again at each poll,
    so one issued further ahead is taken once its time has come."""
    now = time.time()
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    if not_after.timestamp() <= now:
        raise ConfigError(
            f"{where}: the certificate expired at {not_after:%Y-%m-%d %H:%M:%S} UTC; "
            "clients refuse it (renew it)"
        )
    if not_before.timestamp() > now + NOT_BEFORE_LEEWAY:
        raise ConfigError(
            f"{where}: the certificate is not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC "
            "(check this machine's clock, or wait until then)"
        )


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_tls_config(tls: TlsConfig, where: str, *, grpc_port: bool) -> None:
    """The rules between ``tls``'s keys, and what grpcio can do on the gRPC port."""
    if not tls.enabled:
        for name in ("key_file", "client_ca_file"):
            if getattr(tls, name):
                raise ConfigError(f"{where}.{name} is set but {where}.cert_file is empty")
        if tls.client_auth != "none":
            raise ConfigError(f"{where}.client_auth needs TLS: set {where}.cert_file")
        return
    if tls.client_auth != "none" and not tls.client_ca_file:
        raise ConfigError(
            f"{where}.client_auth = {tls.client_auth!r} needs {where}.client_ca_file, the CA "
            "client certificates are verified against"
        )
    if tls.client_auth == "none" and tls.client_ca_file:
        raise ConfigError(
            f"{where}.client_ca_file is set but {where}.client_auth is 'none' (client "
            "certificates are not asked for): set client_auth to 'require' or 'optional'"
        )
    if grpc_port and tls.client_auth == "optional":
        # grpcio's ssl_server_credentials(require_client_auth=...) maps False to "do not
        # request a certificate" and True to "require and verify"; grpc core's "request,
        # verify if sent" mode is not reachable from Python.
        raise ConfigError(
            f"{where}.client_auth = 'optional' is not available on the gRPC port: grpcio can "
            "either not ask for client certificates or require them. Use 'require' (clients "
            "without a certificate then use the HTTP port, where 'optional' works)"
        )
    if grpc_port and tls.min_version != "1.2":
        # grpcio has no setting for the minimum version; grpc core accepts TLS 1.2 and 1.3.
        raise ConfigError(
            f"{where}.min_version = {tls.min_version!r} is not available on the gRPC port: "
            "grpcio offers no minimum-version setting (grpc core accepts TLS 1.2 and 1.3, "
            "never older). Leave it at '1.2', or put a proxy that enforces 1.3 in front"
        )


def plaintext_exposed(config: Config) -> list[str]:
    """The ports listening beyond loopback without TLS, as "key address" strings."""
    exposed = []
    if not config.server.tls.enabled and not is_loopback_address(config.server.grpc_address):
        exposed.append(f"server.grpc_address {config.server.grpc_address}")
    if (
        config.http.address
        and not config.http.tls.enabled
        and not is_loopback_address(config.http.address)
    ):
        exposed.append(f"http.address {config.http.address}")
    return exposed


def check_config(config: Config, *, validity: bool = True) -> None:
    """All TLS checks of ``config``: key rules, the files, ``server.require_tls``; the
    certificates' validity periods unless ``validity`` is False."""
    for tls, where, grpc_port in (
        (config.server.tls, "server.tls", True),
        (config.http.tls, "http.tls", False),
    ):
        check_tls_config(tls, where, grpc_port=grpc_port)
        if tls.enabled:
            load_material(tls, where, validity=validity)
    if config.server.require_tls:
        exposed = plaintext_exposed(config)
        if exposed:
            raise ConfigError(
                f"server.require_tls is on but {' and '.join(exposed)} listens beyond "
                "loopback without TLS: set its tls.cert_file and tls.key_file, or listen on "
                "127.0.0.1"
            )
