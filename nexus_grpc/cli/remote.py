"""Talking to a running host: connection options and one call helper (the commands
that call a host use them: ``nexus plugins``, ``nexus events``, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from nexus_grpc.cli._args import positive
from nexus_grpc.cli.channel import ChannelError, add_tls_options, open_channel, tls_options
from nexus_grpc.cli.credentials import (
    CredentialError,
    check_transport,
    refused_hint,
    resolve_token,
)

__all__ = ["admin_call", "host_call", "host_options", "message_dict", "print_table"]


def host_options(parser: argparse.ArgumentParser, *, token: bool = True) -> None:
    """``--address``, ``--token`` (unless ``token`` is False), ``--timeout`` and the TLS
    options of every command that calls a host."""
    parser.add_argument(
        "--address",
        default="127.0.0.1:50051",
        help="host:port of the host; https://host:port for TLS",
    )
    if token:
        parser.add_argument(
            "--token",
            help="access token (default: $NEXUS_TOKEN, else the one `nexus login --save` "
            "stored for this --address)",
        )
        parser.add_argument(
            "--insecure-token",
            action="store_true",
            help="send the token even over plaintext to an address that is not loopback "
            "(anyone on the path can read and replay it)",
        )
    parser.add_argument(
        "--timeout",
        type=positive(float),
        default=10.0,
        help="seconds to connect, and for the call",
    )
    add_tls_options(parser)


def admin_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """Call AdminService ``method`` on the host at ``args.address``; None after printing
    why it failed (host not reachable, not authorized, bad request)."""
    from nexus.admin.v1 import admin_pb2_grpc

    return host_call(args, admin_pb2_grpc.AdminServiceStub, method, request)


def host_call(args: argparse.Namespace, stub_type: Any, method: str, request: Any) -> Any:
    """Call ``method`` of ``stub_type`` on the host at ``args.address``; None after
    printing why it failed. Sends the token :func:`credentials.resolve_token` finds
    when ``args`` has a ``token`` option, and never over plaintext beyond loopback
    without ``--insecure-token``."""
    try:
        tls = tls_options(args)
        credential = (
            resolve_token(args, tls.target, tls.enabled) if hasattr(args, "token") else None
        )
        check_transport(credential, tls.target, tls.enabled, getattr(args, "insecure_token", False))
    except (ChannelError, CredentialError) as error:
        print(f"nexus: {error}", file=sys.stderr)
        return None
    with open_channel(tls) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print(
                f"nexus: cannot reach a nexus host at {args.address} ({tls.describe()}) within "
                f"{args.timeout:g}s; is `nexus serve` running there? (pass --address host:port)"
                + _last_error(channel, tls.enabled),
                file=sys.stderr,
            )
            return None
        stub = stub_type(channel)
        metadata = (("authorization", f"Bearer {credential.token}"),) if credential else ()
        try:
            return getattr(stub, method)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as error:
            code = error.code()
            print(f"nexus: {args.address}: {code.name}: {error.details()}", file=sys.stderr)
            if code is grpc.StatusCode.UNAUTHENTICATED and hasattr(args, "token"):
                hint = refused_hint(credential, tls.target, tls.enabled)
                print(f"nexus: {hint}", file=sys.stderr)
            return None


def _last_error(channel: grpc.Channel, tls: bool) -> str:
    """Why the channel did not connect, from a health check that does not wait for it (a
    TLS handshake failure names its cause there), plus a hint about TLS."""
    hint = (
        "\nnexus: check --cacert (the CA that signed the host's certificate), --server-name, "
        "and --cert/--key if the host requires client certificates"
        if tls
        else "\nnexus: if the host speaks TLS, pass --cacert FILE (or --tls, or an https:// "
        "address)"
    )
    try:
        # An empty message is a valid HealthCheckRequest; the check changes nothing.
        check = channel.unary_unary("/grpc.health.v1.Health/Check", None, None)
        check(b"", timeout=1.0, wait_for_ready=False)
    except grpc.RpcError as error:
        return f"\nnexus: last error: {error.details()}{hint}"
    return hint


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; the last one is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def message_dict(message: Any) -> dict[str, Any]:
    """``message`` as JSON-ready data; a payload whose type this process does not know
    is left packed ({"@type", "value" in base64}) rather than failing the command."""
    import base64

    from google.protobuf import json_format

    try:
        result: dict[str, Any] = json_format.MessageToDict(message)
        return result
    except (TypeError, KeyError):
        pass
    copy = type(message)()
    copy.CopyFrom(message)
    payload = copy.event.payload
    packed = {"@type": payload.type_url, "value": base64.b64encode(payload.value).decode()}
    copy.event.ClearField("payload")
    result = json_format.MessageToDict(copy)
    result.setdefault("event", {})["payload"] = packed
    return result
