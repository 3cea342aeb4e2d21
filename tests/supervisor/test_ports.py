"""Ports the supervisor reserves before its workers bind them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nexus_grpc.supervisor.ports import migration_warning, reserve


def _listener(port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def test_port_zero_is_picked_once_and_shared_by_reuse_port_listeners() -> None:
    reservation = reserve("127.0.0.1:0", "server.grpc_address")
    try:
        port = reservation.port
        assert port > 0 and reservation.address == f"127.0.0.1:{port}"
        workers = [_listener(port, reuse_port=True) for _ in range(2)]
        # The reservation does not listen: connections go to the workers.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        for worker in workers:
            worker.close()
        # Between two workers the port stays ours: a program not sharing cannot take it.
        with pytest.raises(OSError, match="Address already in use"):
            _listener(port, reuse_port=False)
    finally:
        reservation.close()


def test_a_port_taken_without_sharing_is_reported() -> None:
    taken = _listener(0, reuse_port=False)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"http.address 127.0.0.1:{port}: cannot reserve"):
            reserve(f"127.0.0.1:{port}", "http.address")
    finally:
        taken.close()


def test_a_malformed_address_is_reported() -> None:
    with pytest.raises(OSError, match="not host:port"):
        reserve("127.0.0.1:http", "server.grpc_address")


def test_a_port_a_sharing_listener_holds_is_not_joined() -> None:
    # grpcio sets SO_REUSEPORT on its listeners: a reservation must not join them.
    taken = _listener(0, reuse_port=True)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="cannot reserve the port"):
            reserve(f"127.0.0.1:{port}", "server.grpc_address")
    finally:
        taken.close()


def test_a_second_supervisor_cannot_reserve_the_same_port() -> None:
    first = reserve("127.0.0.1:0", "server.grpc_address")
    try:
        with pytest.raises(OSError, match=f"another nexus supervisor holds port {first.port}"):
            reserve(first.address, "server.grpc_address")
        # Also on another address of the same host (wildcard vs loopback).
        with pytest.raises(OSError, match=r"cannot reserve|another nexus supervisor"):
            reserve(f"0.0.0.0:{first.port}", "server.grpc_address")
    finally:
        first.close()
    # Given back: it can be reserved again.
    again = reserve(first.address, "server.grpc_address")
    again.close()


def test_the_request_migration_setting_is_checked(tmp_path: Path) -> None:
    setting = tmp_path / "tcp_migrate_req"
    setting.write_text("0\n")
    warning = migration_warning(setting)
    assert warning is not None and "net.ipv4.tcp_migrate_req=1" in warning
    setting.write_text("1\n")
    assert migration_warning(setting) is None
    assert migration_warning(tmp_path / "absent") is None
