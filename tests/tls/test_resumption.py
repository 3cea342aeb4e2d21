"""A client certificate's identity does not outlive its CA through TLS session resumption.

A resumed TLS session skips certificate verification and brings back the certificate of
its first handshake. The HTTP port issues no session tickets when it verifies client
certificates, so a client resuming after the client CA was rotated away goes through a
full handshake and is refused. grpc core's gRPC port does resume sessions: there a
resumed session is served but yields no certificate identity, so a certificate that
expired (or whose CA was rotated away) since its first handshake names nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from cryptography import x509

from nexus_grpc.tls.certs import TestCA
from nexus_grpc.tls.identity import auth_context_from_ssl

from .test_mtls import READER, _mtls_host

REFUSED = "refused"
LIST_ORDERS = "/nexus.orders.v1.OrdersService/ListOrders"


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


def _grpc_list_orders(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[str, ssl.SSLSession | None, bool]:
    """ListOrders over raw HTTP/2 on a new TLS connection offering ``session``: the
    grpc-status (or REFUSED when the handshake fails), the session, whether it resumed.

    grpcio's client cannot be told to resume a given session, hence h2 by hand.
    """
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                connection.initiate_connection()
                stream = connection.get_next_available_stream_id()
                headers = [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":path", LIST_ORDERS),
                    (":authority", "localhost"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ]
                connection.send_headers(stream, headers)
                connection.send_data(stream, struct.pack(">BI", 0, 0), end_stream=True)
                tls.sendall(connection.data_to_send())
                status = ""
                ended = False
                while not ended:
                    data = tls.recv(65536)
                    if not data:
                        break
                    for event in connection.receive_data(data):
                        if isinstance(
                            event, h2.events.ResponseReceived | h2.events.TrailersReceived
                        ):
                            status = dict(event.headers).get("grpc-status", status)  # type: ignore[arg-type]
                        ended = ended or isinstance(event, h2.events.StreamEnded)
                    tls.sendall(connection.data_to_send())
                # TLS 1.3: the server judges the client certificate after the client
                # finished its handshake, and refuses by closing the connection.
                return status or REFUSED, tls.session, tls.session_reused
        except (ssl.SSLError, ConnectionError):
            return REFUSED, None, False


_OK = str(grpc.StatusCode.OK.value[0])
_UNAUTHENTICATED = str(grpc.StatusCode.UNAUTHENTICATED.value[0])


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_rotated_away_client_ca_is_not_resumed(
    tmp_path: Path, ca: TestCA, other_ca: TestCA, version: ssl.TLSVersion
) -> None:
    reader = ca.issue("reporting", uris=(READER,), client=True)
    async with _mtls_host(tmp_path, ca) as host:
        port = int(host.http_url.rsplit(":", 1)[1])
        grpc_port = int(host.address.rsplit(":", 1)[1])
        context = host.ssl_context(reader)
        context.maximum_version = version
        grpc_context = host.ssl_context(reader)
        grpc_context.maximum_version = version
        grpc_context.set_alpn_protocols(["h2"])
        status, session, _ = await asyncio.to_thread(_get_orders, port, context, None)
        assert status == 200
        grpc_status, grpc_session, _ = await asyncio.to_thread(
            _grpc_list_orders, grpc_port, grpc_context, None
        )
        assert grpc_status == _OK
        # The operator replaces the client CA: certificates of the old one are out.
        ca.cert_file.write_bytes(other_ca.cert_file.read_bytes())
        assert await host.host.reload_tls() == 2
        status, _, resumed = await asyncio.to_thread(_get_orders, port, context, session)
        assert (status, resumed) == (REFUSED, False)
        # The gRPC port's reloaded credentials do not take the old session (new ticket
        # keys): a full handshake, refused. Were it resumed, it would name nobody.
        outcome = await asyncio.to_thread(_grpc_list_orders, grpc_port, grpc_context, grpc_session)
        assert (outcome[0], outcome[2]) in {(REFUSED, False), (_UNAUTHENTICATED, True)}
        # A full handshake with the old certificate fails.
        outcome = await asyncio.to_thread(_grpc_list_orders, grpc_port, grpc_context, None)
        assert (outcome[0], outcome[2]) == (REFUSED, False)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_an_expired_client_certificate_is_no_identity_when_resumed(
    tmp_path: Path, ca: TestCA, version: ssl.TLSVersion
) -> None:
    # Valid for three seconds: long enough for one full handshake.
    reader = ca.issue("reporting", uris=(READER,), client=True, days=3 / 86400)
    async with _mtls_host(tmp_path, ca) as host:
        port = int(host.address.rsplit(":", 1)[1])
        context = host.ssl_context(reader)
        context.maximum_version = version
        context.set_alpn_protocols(["h2"])
        status, session, _ = await asyncio.to_thread(_grpc_list_orders, port, context, None)
        assert status == _OK
        # Past the certificate's notAfter (whole seconds, so one more to be sure).
        await asyncio.sleep(max(0.0, _not_after(reader.cert_file) - time.time() + 1.1))
        status, _, resumed = await asyncio.to_thread(_grpc_list_orders, port, context, session)
        assert (status, resumed) == (_UNAUTHENTICATED, True)
        status, _, resumed = await asyncio.to_thread(_grpc_list_orders, port, context, None)
        assert (status, resumed) == (REFUSED, False)


def _not_after(cert_file: Path) -> float:
    """The certificate's notAfter as a POSIX timestamp."""
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()


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
