"""``server.trusted_proxies`` on the gRPC port, against real hosts (no balancer: the test
client plays the proxy, or a client that pretends to be one).

- x-forwarded-for metadata from a peer that is not a trusted proxy is ignored: a client
  cannot pick its rate-limit bucket;
- from a trusted proxy the named client is judged by ``server.allow``, and a call that
  names no client is refused while the lists are set (not judged by the proxy's address).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from nexus.auth.v1 import auth_pb2, auth_pb2_grpc

from nexus_grpc.config import LimitsConfig, ServerConfig
from nexus_grpc.testing import running_host
from tests.e2e.conftest import REPO

LIMITS = LimitsConfig(
    rate_classes={"default": {"rate": 100, "burst": 100}, "login": {"rate": 0.001, "burst": 2}}
)


async def _login(channel: grpc.aio.Channel, forwarded_for: str | None) -> grpc.StatusCode:
    metadata = (("x-forwarded-for", forwarded_for),) if forwarded_for is not None else ()
    try:
        await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username="nobody", password="wrong"),
            metadata=metadata,
            timeout=5,
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_forwarding_metadata_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    server = ServerConfig(trusted_proxies=("127.0.0.2/32",))  # not this client
    async with running_host(
        plugins=["auth"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        server=server,
        limits=LIMITS,
    ) as host:
        channel = host.channel()
        codes = [await _login(channel, f"198.51.100.{n}") for n in range(3)]
    # One bucket (this client's address) whatever each call claims.
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED]


async def test_a_trusted_proxy_s_clients_are_judged_by_the_allow_list(tmp_path: Path) -> None:
    server = ServerConfig(trusted_proxies=("127.0.0.1/32",), allow=("127.0.0.0/8",))
    async with running_host(
        plugins=["auth"],
        plugin_dirs=[REPO / "plugins"],
        data_dir=tmp_path,
        server=server,
        limits=LIMITS,
    ) as host:
        channel = host.channel()
        allowed_client = await _login(channel, "203.0.113.7, 127.0.0.9")
        refused_client = await _login(channel, "203.0.113.7")
        no_client = await _login(channel, None)
        other_allowed = await _login(channel, "127.0.0.10")
    # The rightmost untrusted hop is the client: 127.0.0.9 is allowed (and the login
    # itself then fails on the password); 203.0.113.7 is not.
    assert allowed_client == grpc.StatusCode.UNAUTHENTICATED
    assert refused_client == grpc.StatusCode.PERMISSION_DENIED
    # The proxy named nobody: not judged as the proxy (which the list allows).
    assert no_client == grpc.StatusCode.PERMISSION_DENIED
    # Separate buckets per forwarded client: this one still has its own.
    assert other_allowed == grpc.StatusCode.UNAUTHENTICATED
