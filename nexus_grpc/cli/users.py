"""``nexus users``: create users offline, and disable, enable, delete or log out users
of a running host."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from nexus_grpc.cli._args import read_password
from nexus_grpc.cli._config import config_from_args, config_options
from nexus_grpc.cli.remote import host_call, host_options
from nexus_grpc.urls import mask_url

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus users create|disable|enable|delete|revoke``."""
    users = commands.add_parser("users", help="manage users of the auth plugin")
    users.set_defaults(help_of=users)
    users_commands = users.add_subparsers(title="users commands")
    create = users_commands.add_parser("create", help="create a user (e.g. the first admin)")
    create.add_argument("username")
    create.add_argument("--admin", action="store_true", help="grant the admin role")
    create.add_argument("--role", action="append", default=[], help="grant a role (repeatable)")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    config_options(create)
    create.set_defaults(run=_users_create)
    # These act on a running host through AuthService; their effect on tokens already
    # issued is immediate on every instance (see nexus_grpc.auth.sessions).
    for name, help_text in (
        ("disable", "disable a user: no login, and its tokens stop working at once"),
        ("enable", "enable a disabled user (it logs in again)"),
        ("delete", "delete a user; its tokens stop working at once"),
        ("revoke", "log a user out everywhere: every token issued so far stops working"),
    ):
        command = users_commands.add_parser(name, help=help_text)
        command.add_argument("username")
        host_options(command)
        command.set_defaults(run=_users_remote, action=name)


def _users_create(args: argparse.Namespace) -> int:
    from nexus_grpc.plugins.users import UserCreationError, create_user

    config = config_from_args(args)
    password = read_password(args)
    roles = [*args.role, *(["admin"] if args.admin else [])]
    try:
        asyncio.run(create_user(config, args.username, password, roles))
    except UserCreationError as error:
        print(f"nexus users: {error}", file=sys.stderr)
        return 1
    # Where: run from another folder, the embedded database is that folder's .nexus/.
    print(
        f"nexus users: created {args.username} with roles {', '.join(roles) or 'none'} "
        f"in storage {mask_url(config.storage_url())}"
    )
    return 0


def _users_remote(args: argparse.Namespace) -> int:
    from nexus.auth.v1 import auth_pb2, auth_pb2_grpc

    method, request, done = {
        "disable": ("DisableUser", auth_pb2.DisableUserRequest, "disabled"),
        "enable": ("EnableUser", auth_pb2.EnableUserRequest, "enabled"),
        "delete": ("DeleteUser", auth_pb2.DeleteUserRequest, "deleted"),
        "revoke": ("RevokeSessions", auth_pb2.RevokeSessionsRequest, "logged out everywhere"),
    }[args.action]
    stub = auth_pb2_grpc.AuthServiceStub
    if host_call(args, stub, method, request(username=args.username)) is None:
        return 1
    print(f"nexus users: {args.username} {done}")
    return 0
