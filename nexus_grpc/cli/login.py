"""``nexus login`` and ``nexus logout``: get an access token from the auth plugin, print
it or keep it for the other remote commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nexus_grpc.cli._args import read_password
from nexus_grpc.cli.channel import ChannelError, tls_options
from nexus_grpc.cli.credentials import (
    CredentialError,
    remove_token,
    save_token,
)
from nexus_grpc.cli.remote import host_call, host_options
from nexus_grpc.loopback import is_loopback_address

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus login`` and ``nexus logout``."""
    login = commands.add_parser(
        "login",
        help="log in through the auth plugin; print the access token or --save it",
        description=(
            "Prints the access token alone on stdout (TOKEN=$(nexus login ada "
            '--password-stdin <<<"$PW")), or with --save stores it for every remote '
            "command (used when neither --token nor $NEXUS_TOKEN is given)."
        ),
    )
    login.add_argument("username")
    login.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of a prompt",
    )
    output = login.add_mutually_exclusive_group()
    output.add_argument(
        "--save",
        action="store_true",
        help="store the access token in $XDG_CONFIG_HOME/nexus/token (~/.config/nexus/token), "
        "for this --address over the same transport only",
    )
    output.add_argument(
        "--json",
        action="store_true",
        help="print access token, refresh token and lifetime as JSON",
    )
    login.add_argument(
        "--insecure-password",
        action="store_true",
        help="send the password even over plaintext to an address that is not loopback "
        "(anyone on the path can read it)",
    )
    # Login is public: no token is sent (an expired saved one would only be refused).
    host_options(login, token=False)
    login.set_defaults(run=_login)

    logout = commands.add_parser("logout", help="remove the token `nexus login --save` stored")
    logout.set_defaults(run=_logout)


def _login(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.auth.v1 import auth_pb2, auth_pb2_grpc

    try:
        tls = tls_options(args)
    except ChannelError as error:
        print(f"nexus: {error}", file=sys.stderr)
        return 2
    if not (tls.enabled or args.insecure_password or is_loopback_address(tls.target)):
        print(
            f"nexus login: not sending a password to {tls.target} over plaintext: anyone on "
            "the network path could read it. Use TLS (an https:// address, --cacert or "
            "--tls), or pass --insecure-password to send it anyway",
            file=sys.stderr,
        )
        return 2
    password = read_password(args)
    if not password:
        print("nexus login: the password is empty", file=sys.stderr)
        return 2
    request = auth_pb2.LoginRequest(username=args.username, password=password)
    response = host_call(args, auth_pb2_grpc.AuthServiceStub, "Login", request)
    if response is None:
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    if not args.save:
        print(response.access_token)
        return 0
    try:
        path = save_token(response.access_token, tls.target, tls.enabled)
    except CredentialError as error:
        print(f"nexus login: {error}", file=sys.stderr)
        return 1
    minutes = f"{response.expires_in / 60:g}"
    print(
        f"nexus login: token saved in {path} (expires in {minutes} min); sent only to "
        f"{tls.target} over {'TLS' if tls.enabled else 'plaintext'}"
    )
    return 0


def _logout(args: argparse.Namespace) -> int:
    try:
        path = remove_token()
    except CredentialError as error:
        print(f"nexus logout: {error}", file=sys.stderr)
        return 1
    if path is None:
        print("nexus logout: no saved token")
    else:
        print(f"nexus logout: removed {path}")
    return 0
