"""The kernel filter on grpcio's listening sockets, with real servers and real sockets.

Loopback has all of 127.0.0.0/8: a client bound to 127.0.0.2 is "another machine" for
the filter. A dropped SYN shows as a connect that times out.
"""

from __future__ import annotations

import socket
import sys

import grpc
import pytest

from nexus_grpc.transport import socket_filter
from nexus_grpc.transport.netpolicy import MAX_RULES, NetworkPolicy

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_ATTACH_FILTER is Linux's"
)

#: Seconds a connect may take on loopback before it counts as dropped.
CONNECT_WAIT = 0.5


def connects(family: socket.AddressFamily, source: str | None, target: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(CONNECT_WAIT)
        if source:
            client.bind((source, 0))
        try:
            client.connect((target, port))
        except TimeoutError:
            return False
        return True


async def filtered_server(
    address: str, allow: list[str], deny: list[str]
) -> tuple[grpc.aio.Server, int, int]:
    before = socket_filter.socket_inodes()
    server = grpc.aio.server()
    port = server.add_insecure_port(address)
    program = socket_filter.compile_filter(NetworkPolicy.from_lists("server", allow, deny))
    sockets = socket_filter.find_listening_sockets(port, exclude=before)
    for sock in sockets:
        with sock:
            socket_filter.attach_filter(sock, program)
    await server.start()
    return server, port, len(sockets)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("allow", "deny", "expected"),
    [
        ([], [], {"127.0.0.1": True, "127.0.0.2": True, "::1": True}),
        ([], ["127.0.0.2"], {"127.0.0.1": True, "127.0.0.2": False, "::1": True}),
        (["127.0.0.1"], [], {"127.0.0.1": True, "127.0.0.2": False, "::1": False}),
        (["::1"], [], {"127.0.0.1": False, "127.0.0.2": False, "::1": True}),
        ([], ["::1/128"], {"127.0.0.1": True, "127.0.0.2": True, "::1": False}),
        (
            ["127.0.0.0/8", "::1"],
            ["127.0.0.2/32"],
            {"127.0.0.1": True, "127.0.0.2": False, "::1": True},
        ),
        (
            ["2001:db8::/32", "127.0.0.0/30"],
            ["127.0.0.2/31"],
            {"127.0.0.1": True, "127.0.0.2": False, "::1": False},
        ),
        # An IPv4-mapped rule is an IPv4 rule: IPv4 clients of a dual-stack socket match it.
        (["::ffff:127.0.0.2"], [], {"127.0.0.1": False, "127.0.0.2": True, "::1": False}),
    ],
)
async def test_dual_stack_listener_drops_refused_sources(
    allow: list[str], deny: list[str], expected: dict[str, bool]
) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    server, port, count = await filtered_server("[::]:0", allow, deny)
    try:
        assert count == 1
        seen = {
            "127.0.0.1": connects(socket.AF_INET, "127.0.0.1", "127.0.0.1", port),
            "127.0.0.2": connects(socket.AF_INET, "127.0.0.2", "127.0.0.1", port),
            "::1": connects(socket.AF_INET6, None, "::1", port),
        }
        assert seen == expected
    finally:
        await server.stop(0)


async def test_ipv4_listener_and_a_grpc_call_through_the_filter() -> None:
    server, port, count = await filtered_server("127.0.0.1:0", [], ["127.0.0.2"])
    try:
        assert count == 1
        assert not connects(socket.AF_INET, "127.0.0.2", "127.0.0.1", port)
        # An allowed client still gets answers: UNIMPLEMENTED means the call got through.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/no.Such/Method")(b"", timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def test_only_the_new_listeners_of_the_port_are_found() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        before = socket_filter.socket_inodes()
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        try:
            found = socket_filter.find_listening_sockets(port, exclude=before)
            assert [sock.getsockname()[1] for sock in found] == [port]
            for sock in found:
                sock.close()
            # Sockets open before the server bound (another port's here) are not picked.
            assert (
                socket_filter.find_listening_sockets(other.getsockname()[1], exclude=before) == []
            )
        finally:
            await server.stop(0)


def test_a_program_stays_within_the_kernel_limit() -> None:
    policy = NetworkPolicy.from_lists(
        "server",
        [f"2001:db8:{i:x}::/47" for i in range(128)],
        [f"2001:db9:{i:x}::1/127" for i in range(128)],
    )
    program = socket_filter.compile_filter(policy)
    assert len(program) < 4096
    # The kernel checks the program (jumps in range, every path returns) on attach.
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::", 0))
        listener.listen()
        socket_filter.attach_filter(listener, program)


async def test_a_full_ipv4_rule_list_still_decides_ipv6_clients() -> None:
    # Hundreds of IPv4 instructions lie between the version test and the IPv6 rules: more
    # than a conditional jump's 8-bit offset reaches.
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    allow = [f"10.{i}.0.0/16" for i in range(MAX_RULES - 1)] + ["127.0.0.1"]
    program = socket_filter.compile_filter(NetworkPolicy.from_lists("server", allow, []))
    assert len(program) > 255
    server, port, count = await filtered_server("[::]:0", allow, [])
    try:
        assert count == 1
        assert connects(socket.AF_INET, "127.0.0.1", "127.0.0.1", port)
        assert not connects(socket.AF_INET, "127.0.0.2", "127.0.0.1", port)
        # No IPv6 rule allows ::1: the allow list's default drops it.
        assert not connects(socket.AF_INET6, None, "::1", port)
    finally:
        await server.stop(0)


async def test_a_full_ipv4_deny_list_lets_ipv6_clients_in() -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    deny = [f"10.{i}.0.0/16" for i in range(MAX_RULES - 1)] + ["127.0.0.2"]
    server, port, count = await filtered_server("[::]:0", [], deny)
    try:
        assert count == 1
        assert connects(socket.AF_INET, "127.0.0.1", "127.0.0.1", port)
        assert not connects(socket.AF_INET, "127.0.0.2", "127.0.0.1", port)
        assert connects(socket.AF_INET6, None, "::1", port)
    finally:
        await server.stop(0)


def test_every_conditional_jump_fits_eight_bits() -> None:
    policy = NetworkPolicy.from_lists(
        "server",
        [f"10.{i}.0.0/16" for i in range(MAX_RULES // 2)],
        [f"2001:db8:{i:x}::/48" for i in range(MAX_RULES // 2)],
    )
    for code, jt, jf, _k in socket_filter.compile_filter(policy):
        assert 0 <= jt <= 255 and 0 <= jf <= 255, code
