"""The channel every remote command opens: plaintext, TLS, or mutual TLS.

An address written ``https://host:port``, or any of ``--tls``, ``--cacert``, ``--cert``,
``--key``, means TLS; a bare ``host:port`` without them is plaintext. Each option has an
environment variable (``NEXUS_CACERT``, ``NEXUS_CERT``, ``NEXUS_KEY``,
``NEXUS_SERVER_NAME``, ``NEXUS_TLS``) so a shell can be set up once for a host.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["ChannelError", "TlsOptions", "add_tls_options", "open_channel", "tls_options"]

_HTTPS = "https://"
_TRUE = ("1", "true", "yes", "on")


class ChannelError(ValueError):
    """The TLS options cannot make a channel (a file missing, a key without a cert...)."""


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """``--tls``, ``--cacert``, ``--cert``, ``--key`` and ``--server-name``."""
    group = parser.add_argument_group(
        "TLS", "an https:// address or any of these options means TLS; else plaintext"
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("NEXUS_TLS", "").strip().lower() in _TRUE,
        help="speak TLS, trusting the system's CA certificates (default: $NEXUS_TLS)",
    )
    group.add_argument(
        "--cacert",
        default=os.environ.get("NEXUS_CACERT", ""),
        metavar="FILE",
        help="PEM CA certificate(s) to trust instead of the system's (default: $NEXUS_CACERT)",
    )
    group.add_argument(
        "--cert",
        default=os.environ.get("NEXUS_CERT", ""),
        metavar="FILE",
        help="PEM client certificate for mutual TLS, with --key (default: $NEXUS_CERT)",
    )
    group.add_argument(
        "--key",
        default=os.environ.get("NEXUS_KEY", ""),
        metavar="FILE",
        help="PEM private key of --cert (default: $NEXUS_KEY)",
    )
    group.add_argument(
        "--server-name",
        default=os.environ.get("NEXUS_SERVER_NAME", ""),
        metavar="NAME",
        help="name the server's certificate must carry, when the address does not "
        "(default: $NEXUS_SERVER_NAME)",
    )


@dataclass(frozen=True)
class TlsOptions:
    """What a remote command was told about TLS, the files read."""

    #: host:port, without a scheme.
    target: str
    enabled: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str = ""

    def describe(self) -> str:
        """How the channel connects, for messages: "TLS", "mutual TLS" or "plaintext"."""
        if not self.enabled:
            return "plaintext"
        return "mutual TLS" if self.certificate_chain else "TLS"


def tls_options(args: argparse.Namespace) -> TlsOptions:
    """The TLS settings in ``args`` (from :func:`add_tls_options` and ``--address``).

    Raises :class:`ChannelError` saying what is wrong: a file that cannot be read, a
    ``--cert`` without ``--key`` or the reverse, ``--server-name`` without TLS.
    """
    address: str = args.address.strip()
    scheme_tls = address.lower().startswith(_HTTPS)
    if scheme_tls:
        address = address[len(_HTTPS) :]
    address = address.rstrip("/")
    if "://" in address:
        raise ChannelError(
            f"--address {args.address}: only https:// (TLS) or a bare host:port (plaintext, "
            "or TLS with --tls/--cacert) is understood"
        )
    cacert, cert, key = (getattr(args, name, "") or "" for name in ("cacert", "cert", "key"))
    server_name: str = getattr(args, "server_name", "") or ""
    enabled = scheme_tls or bool(getattr(args, "tls", False) or cacert or cert or key)
    if bool(cert) != bool(key):
        raise ChannelError("--cert and --key go together (the client certificate and its key)")
    if server_name and not enabled:
        raise ChannelError("--server-name applies to TLS: add --tls or --cacert, or https://")
    return TlsOptions(
        target=address,
        enabled=enabled,
        root_certificates=_read("--cacert", cacert),
        private_key=_read("--key", key),
        certificate_chain=_read("--cert", cert),
        server_name=server_name,
    )


def open_channel(options: TlsOptions) -> grpc.Channel:
    """A blocking channel to ``options.target``, secure when TLS is on."""
    if not options.enabled:
        return grpc.insecure_channel(options.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=options.root_certificates,
        private_key=options.private_key,
        certificate_chain=options.certificate_chain,
    )
    channel_options: list[tuple[str, str]] = []
    if options.server_name:
        # The name checked against the certificate, and the :authority sent.
        channel_options.append(("grpc.ssl_target_name_override", options.server_name))
        channel_options.append(("grpc.default_authority", options.server_name))
    return grpc.secure_channel(options.target, credentials, options=channel_options)


def _read(option: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ChannelError(f"{option} {path}: cannot read it ({error.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ChannelError(f"{option} {path}: not a PEM file (no -----BEGIN line)")
    return data
