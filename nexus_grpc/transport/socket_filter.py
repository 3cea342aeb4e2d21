"""A kernel socket filter that drops connections from refused addresses (Linux).

grpcio accepts the gRPC port's connections in its own C core: Python sees a call only
after the TLS handshake and the HTTP/2 headers were parsed. A classic BPF program
attached to the *listening* socket (``SO_ATTACH_FILTER``) runs on every packet the
socket receives, before TCP handles it (``tcp_filter`` in ``tcp_v4_rcv``/``tcp_v6_rcv``):
a SYN from a refused address is dropped, so no connection is ever made, nothing reaches
user space, and a refused client sees its connect time out, as behind a firewall's DROP
rule. Accepted connections inherit the filter (it costs a few instructions per packet).

The program reads the IP version and source address at ``SKF_NET_OFF`` (the network
header, before the TCP header the socket's data starts at), so one program serves an
IPv4 socket, an IPv6 one and a dual-stack one (whose IPv4 clients arrive as IPv4
packets): deny rules first, then allow rules, then the default (drop when an allow list
exists, else accept).

:func:`find_listening_sockets` finds the descriptors grpcio opened for a port by looking
at ``/proc/self/fd``: grpcio does not expose them.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
from collections.abc import Iterable

from nexus_grpc.transport.netpolicy import IPNetwork, NetworkPolicy

__all__ = ["attach_filter", "compile_filter", "find_listening_sockets", "socket_inodes"]

SO_ATTACH_FILTER = 26
# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_RET_K = 0x06  # BPF_RET | BPF_K
_TAX = 0x07  # BPF_MISC | BPF_TAX
_TXA = 0x87  # BPF_MISC | BPF_TXA
#: Negative load offsets from here address the network (IP) header (SKF_NET_OFF).
_NET = -0x100000 & 0xFFFFFFFF
_ACCEPT = 0xFFFFFFFF
_DROP = 0

_Insn = tuple[int, int, int, int]


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Filter))]


def compile_filter(policy: NetworkPolicy) -> list[_Insn]:
    """The classic BPF program (code, jt, jf, k) enforcing ``policy`` on IP packets."""
    default = _DROP if policy.allow else _ACCEPT
    v4 = _family_rules(policy, 4, default)
    v6 = _family_rules(policy, 6, default)
    program = [
        (_LD_B_ABS, 0, 0, _NET),
        (_RSH_K, 0, 0, 4),
        # Version 4: fall into the IPv4 rules; else skip them. A block may be longer than
        # the 8-bit ``jf`` can reach, so the skip is a ``ja`` (32-bit offset) the ``jeq``
        # steps over on a match.
        (_JEQ_K, 1, 0, 4),
        (_JA, 0, 0, len(v4)),
        *v4,
        (_JEQ_K, 1, 0, 6),
        (_JA, 0, 0, len(v6)),
        *v6,
        # Neither: not an IP packet a TCP socket would get; fail closed.
        (_RET_K, 0, 0, _DROP),
    ]
    # ctypes would silently truncate a wider conditional offset into a jump elsewhere.
    for index, (_code, jt, jf, _k) in enumerate(program):
        if not (0 <= jt <= 0xFF and 0 <= jf <= 0xFF):
            raise AssertionError(f"BPF instruction {index}: conditional jump beyond 255")
    return program


def _family_rules(policy: NetworkPolicy, version: int, default: int) -> list[_Insn]:
    """Rules for one IP version; each ends in a return, so the block never falls through."""
    denied = [net for net in policy.deny if net.version == version]
    allowed = [net for net in policy.allow if net.version == version]
    block: list[_Insn] = []
    if version == 4:
        # The source address stays in X; each rule copies it back into A.
        block.append((_LD_W_ABS, 0, 0, _NET + 12))
        block.append((_TAX, 0, 0, 0))
    # Per rule: on a match, jump to a return appended after all rules. Targets are fixed
    # up at the end; conditional jumps only skip within a rule (their offsets are 8-bit).
    jumps: list[tuple[int, int]] = []  # (index of the ja, return value)
    for networks, verdict in ((denied, _DROP), (allowed, _ACCEPT)):
        for network in networks:
            block.extend(_match(network))
            jumps.append((len(block), verdict))
            block.append((_JA, 0, 0, 0))
    # Nothing matched: the default. The returns after it are only jumped to.
    block.append((_RET_K, 0, 0, default))
    returns = {_DROP: len(block), _ACCEPT: len(block) + 1}
    block.append((_RET_K, 0, 0, _DROP))
    block.append((_RET_K, 0, 0, _ACCEPT))
    for index, verdict in jumps:
        block[index] = (_JA, 0, 0, returns[verdict] - index - 1)
    return block


def _match(network: IPNetwork) -> list[_Insn]:
    """Instructions that fall through to the next one when the source is in ``network``
    and skip past it (to the rule after, whose first instruction follows a ``ja``) when not."""
    if network.prefixlen == 0:
        return []
    if network.version == 4:
        mask = int(network.netmask)
        return [(_TXA, 0, 0, 0), (_AND_K, 0, 0, mask), (_JEQ_K, 0, 1, int(network.network_address))]
    words = struct.unpack(">4I", network.network_address.packed)
    masks = struct.unpack(">4I", network.netmask.packed)
    count = (network.prefixlen + 31) // 32
    insns: list[_Insn] = []
    for i in range(count):
        insns.append((_LD_W_ABS, 0, 0, _NET + 8 + 4 * i))
        if masks[i] != 0xFFFFFFFF:
            insns.append((_AND_K, 0, 0, masks[i]))
        insns.append((_JEQ_K, 0, 0, words[i]))
    # A mismatch at any word jumps past the rule's ``ja``.
    for index, (code, jt, _jf, k) in enumerate(insns):
        if code == _JEQ_K:
            insns[index] = (code, jt, len(insns) - index, k)
    return insns


def attach_filter(sock: socket.socket, program: list[_Insn]) -> None:
    """Attach ``program`` to ``sock`` (replacing a filter already there)."""
    array = (_Filter * len(program))(*(_Filter(*insn) for insn in program))
    fprog = _Program(len(program), ctypes.cast(array, ctypes.POINTER(_Filter)))
    # The kernel copies the program during the call; ``array`` lives until it returns.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def socket_inodes() -> set[str]:
    """The ``socket:[inode]`` links of this process's descriptors now."""
    inodes = set()
    for fd in _fds():
        link = _link(fd)
        if link is not None and link.startswith("socket:"):
            inodes.add(link)
    return inodes


def find_listening_sockets(port: int, *, exclude: Iterable[str] = ()) -> list[socket.socket]:
    """Duplicates of this process's listening TCP sockets bound to ``port``.

    Sockets whose ``socket:[inode]`` is in ``exclude`` (those open before the server
    bound, from :func:`socket_inodes`) are left out. The caller closes the duplicates;
    a filter attached to one applies to the socket they share.
    """
    if not sys.platform.startswith("linux"):
        return []
    skip = set(exclude)
    found: list[socket.socket] = []
    seen: set[str] = set()
    for fd in _fds():
        link = _link(fd)
        if link is None or not link.startswith("socket:") or link in skip or link in seen:
            continue
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and sock.getsockname()[1] == port
            ):
                seen.add(link)
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found


def _fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []


def _link(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
