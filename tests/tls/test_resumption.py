"""A client certificate's identity does not outlive its CA through TLS session resumption.

A resumed TLS session skips certificate verification and brings back the certificate of
its first handshake. The HTTP port issues no session tickets when it verifies client
certificates, so a client resuming after the client CA was rotated away goes through a
full handshake and is refused; a resumed session never yields a certificate identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import grpc
import pytest

from nexus_grpc.tls.certs import TestCA
from nexus_grpc.tls.identity import auth_context_from_ssl

from .test_mtls import READER, _grpc_list, _mtls_host

REFUSED = "refused"


def _get_orders(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int | str, ssl.SSLSession | None, bool]:
    """GET /v1/orders on a new connection offering ``session``: status, session, resumed."""
    request = b"GET /v1/orders HTTP/1.1\r\nhost: localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return REFUSED, None, tls.session_reused
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += tls.recv(65536)
                return int(head.split(b" ", 2)[1]), tls.session, tls.session_reused
        except (ssl.SSLError, ConnectionError):
            return REFUSED, None, False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_rotated_away_client_ca_is_not_resumed(
    tmp_path: Path, ca: TestCA, other_ca: TestCA, version: ssl.TLSVersion
) -> None:
    reader = ca.issue("reporting", uris=(READER,), client=True)
    async with _mtls_host(tmp_path, ca) as host:
        port = int(host.http_url.rsplit(":", 1)[1])
        context = host.ssl_context(reader)
        context.maximum_version = version
        status, session, _ = await asyncio.to_thread(_get_orders, port, context, None)
        assert status == 200
        # The operator replaces the client CA: certificates of the old one are out.
        ca.cert_file.write_bytes(other_ca.cert_file.read_bytes())
        assert await host.host.reload_tls() == 2
        status, _, resumed = await asyncio.to_thread(_get_orders, port, context, session)
        assert (status, resumed) == (REFUSED, False)
        # The gRPC port refuses the old certificate's handshake too.
        assert await _grpc_list(host, reader) == grpc.StatusCode.UNAVAILABLE


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, pipes: list[ssl.MemoryBIO]) -> None:
    """Drive an in-memory handshake to its end (both sides, bytes moved by hand)."""
    c_in, c_out, s_in, s_out = pipes
    for _ in range(20):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            break
    # TLS 1.3 tickets travel after the handshake: let the client read them.
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read()


def test_a_resumed_session_carries_no_certificate_identity(ca: TestCA) -> None:
    # A context that does resume sessions (tickets on): identity comes only from a full
    # handshake whatever the context allows.
    server_cert = ca.issue("server", dns=("localhost",))
    reader = ca.issue("reporting", uris=(READER,), client=True)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server_cert.cert_file, server_cert.key_file)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.load_verify_locations(cadata=ca.cert_file.read_text())
    client_context = ssl.create_default_context(cadata=ca.cert_file.read_text())
    client_context.load_cert_chain(reader.cert_file, reader.key_file)
    session = None
    identities = []
    for _ in range(2):
        pipes = [ssl.MemoryBIO() for _ in range(4)]
        client = client_context.wrap_bio(
            pipes[0], pipes[1], server_hostname="localhost", session=session
        )
        server = server_context.wrap_bio(pipes[2], pipes[3], server_side=True)
        _handshake(client, server, pipes)
        session = client.session
        identities.append((server.session_reused, auth_context_from_ssl(server).get("peer_uri")))
    assert identities == [(False, [READER.encode()]), (True, None)]
