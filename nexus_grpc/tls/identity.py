"""The principal a verified client certificate stands for (mutual TLS).

Both transports describe the TLS peer the way grpc core does, as an auth context — a
mapping of property names to lists of byte strings: ``peer_uri`` and ``peer_dns`` hold
the certificate's URI and DNS subject alternative names. grpc.aio fills it for the
gRPC port; :func:`auth_context_from_ssl` builds the same properties for a connection of
the HTTP port. Properties exist only for a certificate that was verified against the
port's ``client_ca_file``: neither server looks at an unverified one.

:class:`ClientDirectory` turns the names into a principal: the first of the certificate's
URI SANs, then DNS SANs (as ``dns:NAME``), listed in ``[auth.clients]``; its subject is
that name, which never collides with a user name.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from nexus_grpc.auth.principal import Grant, Principal
from nexus_grpc.config import ClientIdentityConfig

__all__ = [
    "CERTIFICATE",
    "DNS_PREFIX",
    "AuthContext",
    "ClientDirectory",
    "auth_context_from_ssl",
    "certificate_names",
    "check_client_name",
    "scope_auth_context",
    "tls_extension",
]

AuthContext = Mapping[str, Sequence[bytes]]

#: ``Principal.via`` of a principal established by a client certificate.
CERTIFICATE = "certificate"

_SAN_KEYS = {"URI": "peer_uri", "DNS": "peer_dns"}
# A URI: a scheme (RFC 3986), a colon, something after it.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_VERSIONS = {"TLSv1.2": b"TLSv1.2", "TLSv1.3": b"TLSv1.3"}


#: Prefix of a DNS SAN as a certificate identity: ``dns:api.acme.internal``.
DNS_PREFIX = "dns:"


def certificate_names(auth_context: AuthContext) -> tuple[str, ...]:
    """The verified client certificate's identities (none: no certificate): its URI SANs
    as written, then its DNS SANs as ``dns:NAME`` (lowercase).

    Every identity holds a ``:``, which a user name cannot (``^[a-z0-9][a-z0-9_.@-]*$``):
    a certificate principal never shares a subject with a user, so it cannot own a
    user's records or be the target of a user's session revocation. A URI SAN whose
    scheme is ``dns`` is skipped: it would pass for a DNS SAN.

    A resumed TLS session (``ssl_session_reused``) yields none: resumption skips
    certificate verification, and grpc core keeps the first handshake's SANs in the
    auth context, so a certificate since expired — or signed by a client CA since
    rotated away — would keep its identity on the gRPC port.
    """
    if any(_text(value) == "true" for value in auth_context.get("ssl_session_reused", ())):
        return ()
    names: list[str] = []
    for value in auth_context.get("peer_uri", ()):
        text = _text(value)
        if not text.lower().startswith(DNS_PREFIX):
            names.append(text)
    for value in auth_context.get("peer_dns", ()):
        names.append(DNS_PREFIX + _text(value).lower())
    return tuple(names)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def check_client_name(name: str) -> str | None:
    """Why ``name`` cannot be an ``[auth.clients]`` key; None when it can.

    A key is what :func:`certificate_names` yields: a URI with a scheme
    (``spiffe://acme/app``), or ``dns:`` and a DNS name (``dns:app.acme.internal``).
    """
    if name.lower().startswith(DNS_PREFIX):
        if name != name.lower() or not _DNS_NAME.fullmatch(name[len(DNS_PREFIX) :]):
            return f"{name!r} is not dns: followed by a DNS name, all lowercase"
        return None
    if _URI.fullmatch(name):
        return None
    return (
        f"{name!r} is neither a URI SAN as written (spiffe://acme/app) nor dns: and a DNS "
        "SAN (dns:app.acme.internal); a bare name could be mistaken for a user name"
    )


def auth_context_from_ssl(ssl_object: Any) -> dict[str, list[bytes]]:
    """grpc-style auth context of a TLS connection (``ssl.SSLObject``) of the HTTP port."""
    context: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    version = ssl_object.version()
    if version in _VERSIONS:
        context["ssl_tls_version"] = [_VERSIONS[version]]
    if ssl_object.context.verify_mode == ssl.CERT_NONE:
        return context
    # A resumed session's certificate was verified against the CA of an earlier handshake,
    # maybe one since removed: no identity from it (the HTTP port turns resumption off
    # when it verifies client certificates; this holds whatever a context allows).
    if ssl_object.session_reused:
        return context
    # getpeercert() describes the certificate only when it was verified (else {}).
    peer = ssl_object.getpeercert()
    if not peer:
        return context
    for kind, value in peer.get("subjectAltName", ()):
        key = _SAN_KEYS.get(kind)
        if key is not None:
            context.setdefault(key, []).append(value.encode())
    for rdn in peer.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                context.setdefault("x509_common_name", []).append(value.encode())
    return context


def tls_extension(ssl_object: Any) -> dict[str, Any]:
    """``scope["extensions"]`` for the requests of a TLS connection of the HTTP port.

    ``tls_version`` as the ASGI TLS extension states it, and the grpc-style auth
    context under ``nexus.auth_context``.
    """
    return {
        "tls": {
            "tls_version": {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(ssl_object.version()),
            "nexus.auth_context": auth_context_from_ssl(ssl_object),
        }
    }


def scope_auth_context(scope: Mapping[str, Any]) -> AuthContext:
    """The auth context an ASGI request's connection has (empty over plaintext)."""
    extensions = scope.get("extensions")
    if not extensions:
        return {}
    tls = extensions.get("tls")
    if not tls:
        return {}
    return tls.get("nexus.auth_context") or {}


class ClientDirectory:
    """``[auth.clients]``: certificate identities and the principals they are."""

    def __init__(self, clients: Mapping[str, ClientIdentityConfig]) -> None:
        self._principals = {
            name: Principal(
                subject=name,
                roles=identity.roles,
                grants=frozenset(Grant.parse(grant) for grant in identity.grants),
                team=identity.team,
                via=CERTIFICATE,
            )
            for name, identity in clients.items()
        }

    def __bool__(self) -> bool:
        return bool(self._principals)

    def principal(self, names: Sequence[str]) -> Principal | None:
        """The principal of the first of ``names`` listed; None when none is."""
        for name in names:
            principal = self._principals.get(name)
            if principal is not None:
                return principal
        return None
