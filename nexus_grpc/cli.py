"""The ``nexus`` command: serve, plugins, events, gen, lint."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from nexus_grpc.config import Config, ConfigError, load_config

__all__ = ["main"]

_log = logging.getLogger("nexus")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nexus`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        # A command group without its command (`nexus events`) shows that group's help.
        getattr(args, "help_of", parser).print_help()
        return 2
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description="gRPC-first plugin host.")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the host with its plugins")
    serve.add_argument(
        "-c",
        "--config",
        default=os.environ.get("NEXUS_CONFIG"),
        help="TOML config file (default: $NEXUS_CONFIG, else embedded defaults)",
    )
    serve.add_argument("--grpc-address", help="override server.grpc_address")
    serve.add_argument(
        "--plugin-dir",
        action="append",
        default=None,
        help="plugin folder (repeatable); replaces plugins.dirs",
    )
    serve.set_defaults(run=_serve)

    plugins = commands.add_parser("plugins", help="list the plugins of a running host")
    plugins.add_argument("--address", default="127.0.0.1:50051", help="host:port of the host")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plugins.add_argument(
        "--token",
        default=os.environ.get("NEXUS_TOKEN", ""),
        help="access token with admin.read (default: $NEXUS_TOKEN)",
    )
    plugins.set_defaults(run=_plugins)

    events = commands.add_parser(
        "events", help="operate the event bus of a running host (dead letters, replay, stats)"
    )
    events.set_defaults(help_of=events)
    events_commands = events.add_subparsers(title="events commands")
    dead_letters = events_commands.add_parser(
        "dead-letters", help="list the events consumer groups gave up on, oldest first"
    )
    dead_letters.add_argument("--group", default="", help="only this consumer group's")
    dead_letters.add_argument(
        "--limit", type=_positive(int), default=1000, help="at most this many (default: 1000)"
    )
    dead_letters.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dead_letters.set_defaults(run=_events_dead_letters)
    redrive = events_commands.add_parser(
        "redrive", help="deliver a dead letter to its consumer group again (fix the handler first)"
    )
    redrive.add_argument("group", help="consumer group (the consuming plugin's name)")
    redrive.add_argument("id", help="dead letter id, as `nexus events dead-letters` lists it")
    redrive.set_defaults(run=_events_redrive)
    replay = events_commands.add_parser(
        "replay",
        help="make a consumer group handle one event type again (Redis bus only); "
        "from the oldest event kept unless --since-id, --since-event or --since",
    )
    replay.add_argument("group", help="consumer group (the consuming plugin's name)")
    replay.add_argument("type", help="event type, e.g. nexus.orders.v1.OrderCreated")
    since = replay.add_mutually_exclusive_group()
    since.add_argument(
        "--since-id",
        type=_not_empty("a stream entry id"),
        help="from this stream entry id on, included",
    )
    since.add_argument(
        "--since-event",
        type=_not_empty("an event id"),
        help="from the event with this id on, included (an envelope id, as in a dead letter)",
    )
    since.add_argument(
        "--since",
        type=_since_time,
        help="from this time on: ISO 8601 (2024-05-01T12:00:00Z) or a duration ago "
        "(30s, 15m, 2h, 1d)",
    )
    replay.set_defaults(run=_events_replay)
    stats = events_commands.add_parser(
        "stats", help="pending (read, not acknowledged), lag (not read) and dead letters per group"
    )
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(run=_events_stats)
    for command in (dead_letters, redrive, replay, stats):
        _host_options(command)

    gen = commands.add_parser("gen", help="compile proto/ into generated/")
    gen.add_argument("--proto", default="proto", help="contracts folder")
    gen.add_argument("--out", default="generated", help="output folder")
    gen.add_argument("--check", action="store_true", help="only report stale files")
    gen.set_defaults(run=_gen)

    lint = commands.add_parser(
        "lint", help="name methods without an access policy, then lint the contracts with buf"
    )
    lint.add_argument("-c", "--config", default=os.environ.get("NEXUS_CONFIG"))
    lint.add_argument("args", nargs=argparse.REMAINDER, help="passed to scripts/lint")
    lint.set_defaults(run=_lint)

    policy = commands.add_parser("policy", help="inspect access policies")
    policy.set_defaults(help_of=policy)
    policy_commands = policy.add_subparsers(title="policy commands")
    explain = policy_commands.add_parser("explain", help="print a method's effective policy")
    explain.add_argument("method", help="e.g. nexus.orders.v1.OrdersService/GetOrder")
    explain.add_argument("-c", "--config", default=os.environ.get("NEXUS_CONFIG"))
    explain.set_defaults(run=_policy_explain)

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
    create.add_argument("-c", "--config", default=os.environ.get("NEXUS_CONFIG"))
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
        _host_options(command)
        command.set_defaults(run=_users_remote, action=name)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from nexus_grpc.host import Host
    from nexus_grpc.logs import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"nexus: configuration error: {error}", file=sys.stderr)
        return 2
    if args.grpc_address:
        config = replace(config, server=replace(config.server, grpc_address=args.grpc_address))
    if args.plugin_dir:
        config = replace(config, plugins=replace(config.plugins, dirs=tuple(args.plugin_dir)))
    configure_logging(config.log.level, config.log.format)
    try:
        asyncio.run(Host(config).run_until_signalled())
    except Exception as error:
        # Start-up failures (port taken, strict mode, unreachable database) are the
        # operator's to fix: say what failed without a traceback, which is in debug logs.
        _log.debug("start-up failed", exc_info=True)
        _log.error("nexus could not start: %s", error)
        return 1
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
            response = stub.ListPlugins(
                admin_pb2.ListPluginsRequest(), timeout=10, metadata=metadata
            )
        except grpc.RpcError as error:
            print(f"nexus: {args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    rows = [("NAME", "VERSION", "CATEGORY", "STATE", "SERVICES")]
    for plugin in response.plugins:
        rows.append(
            (
                plugin.name,
                plugin.version or "-",
                admin_pb2.Category.Name(plugin.category).removeprefix("CATEGORY_").lower(),
                admin_pb2.PluginState.Name(plugin.state).removeprefix("PLUGIN_STATE_"),
                ", ".join(
                    f"{s.name}{'' if s.serving else ' (not serving)'}" for s in plugin.services
                )
                or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    for plugin in response.plugins:
        if plugin.error:
            print(f"\n{plugin.name}: {plugin.error}")
    return 0


def _host_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of the host")
    parser.add_argument(
        "--token",
        default=os.environ.get("NEXUS_TOKEN", ""),
        help="admin access token (default: $NEXUS_TOKEN)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=10.0,
        help="seconds to connect, and for the call",
    )


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` above 0."""

    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
        return number

    return parse


def _not_empty(what: str) -> Callable[[str], str]:
    """A replay start that must not be empty: left out, a replay starts at the oldest
    event kept, and an empty shell variable must not mean that."""

    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(
                f"is empty; pass {what}, or leave the option out to replay from the "
                "oldest event kept"
            )
        return value.strip()

    return parse


def _since_time(value: str) -> datetime.datetime:
    """``--since``: an ISO 8601 time (UTC unless it says), or ``<n><unit>`` ago."""
    import re

    relative = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    try:
        if relative:
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
            ago = datetime.timedelta(seconds=float(relative.group(1)) * unit)
            return datetime.datetime.now(datetime.UTC) - ago
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO 8601 time (2024-05-01T12:00:00Z) nor a duration "
            "ago (30s, 15m, 2h, 1d)"
        ) from None
    except OverflowError:  # a duration reaching back before year 1
        raise argparse.ArgumentTypeError(f"{value!r} reaches back too far") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


def _admin_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """Call AdminService ``method`` on the host at ``args.address``; None after printing
    why it failed (host not reachable, not authorized, bad request)."""
    from nexus.admin.v1 import admin_pb2_grpc

    return _host_call(args, admin_pb2_grpc.AdminServiceStub, method, request)


def _host_call(args: argparse.Namespace, stub_type: Any, method: str, request: Any) -> Any:
    """Call ``method`` of ``stub_type`` on the host at ``args.address``; None after
    printing why it failed."""
    with grpc.insecure_channel(args.address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print(
                f"nexus: cannot reach a nexus host at {args.address} within {args.timeout:g}s; "
                "is `nexus serve` running there? (pass --address host:port)",
                file=sys.stderr,
            )
            return None
        stub = stub_type(channel)
        metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
        try:
            return getattr(stub, method)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as error:
            code = error.code()
            print(f"nexus: {args.address}: {code.name}: {error.details()}", file=sys.stderr)
            if code is grpc.StatusCode.UNAUTHENTICATED:
                print(
                    "nexus: pass an admin access token with --token or $NEXUS_TOKEN",
                    file=sys.stderr,
                )
            return None


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; the last one is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def _message_dict(message: Any) -> dict[str, Any]:
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


def _events_dead_letters(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.admin.v1 import admin_pb2

    letters: list[Any] = []
    token = ""
    while len(letters) < args.limit:
        request = admin_pb2.ListDeadLettersRequest(
            group=args.group, page_size=min(args.limit - len(letters), 1000), page_token=token
        )
        response = _admin_call(args, "ListDeadLetters", request)
        if response is None:
            return 1
        letters.extend(response.dead_letters)
        token = response.next_page_token
        if not token:
            break
    if args.json:
        print(json.dumps([_message_dict(letter) for letter in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters" + (f" in {args.group}" if args.group else ""))
        return 0
    rows = [("ID", "GROUP", "TYPE", "ATTEMPTS", "PUBLISHED", "ERROR")]
    for letter in letters:
        published = (
            json_format.MessageToDict(letter.event.time) if letter.event.HasField("time") else "-"
        )
        error = letter.error if len(letter.error) <= 80 else letter.error[:77] + "..."
        rows.append(
            (
                letter.id,
                letter.group,
                letter.event.type or "-",
                str(letter.attempts),
                str(published),
                error,
            )
        )
    _print_table(rows)
    if token:
        print(f"(first {len(letters)} shown; raise --limit for more)")
    return 0


def _events_redrive(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    request = admin_pb2.RedriveDeadLetterRequest(group=args.group, id=args.id)
    if _admin_call(args, "RedriveDeadLetter", request) is None:
        return 1
    print(f"nexus events: dead letter {args.id} redriven to {args.group}")
    return 0


def _events_replay(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    request = admin_pb2.ReplayEventsRequest(group=args.group, event_type=args.type)
    if args.since_id is not None:
        request.since_entry_id = args.since_id
    elif args.since_event is not None:
        request.since_event_id = args.since_event
    elif args.since is not None:
        request.since_time.FromDatetime(args.since)
    response = _admin_call(args, "ReplayEvents", request)
    if response is None:
        return 1
    print(
        f"nexus events: {args.group} handles {args.type} again, "
        f"from the entry after {response.position}"
    )
    return 0


def _events_stats(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.admin.v1 import admin_pb2

    response = _admin_call(args, "GetEventStats", admin_pb2.GetEventStatsRequest())
    if response is None:
        return 1
    if args.json:
        print(
            json.dumps(
                json_format.MessageToDict(response, always_print_fields_with_no_presence=True),
                indent=2,
            )
        )
        return 0
    print(f"event bus: {response.backend}")
    rows = [("GROUP / EVENT TYPE", "PENDING", "LAG", "DEAD LETTERS")]
    for group in response.groups:
        rows.append((group.group, str(group.pending), str(group.lag), str(group.dead_letters)))
        for item in group.event_types:
            rows.append((f"  {item.event_type}", str(item.pending), str(item.lag), ""))
    _print_table(rows)
    return 0


def _gen(args: argparse.Namespace) -> int:
    from nexus_grpc.codegen import CodegenError, find_stale, generate

    proto, out = Path(args.proto), Path(args.out)
    try:
        if args.check:
            stale = find_stale(proto, out)
            for item in stale:
                print(f"{out / item.path}: {item.reason}")
            return 1 if stale else 0
        written = generate(proto, out)
    except CodegenError as error:
        print(f"nexus gen: {error}", file=sys.stderr)
        return 1
    print(f"nexus gen: wrote {len(written)} files to {out}")
    return 0


def _config_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"nexus: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _lint(args: argparse.Namespace) -> int:
    from nexus_grpc.access.policy import methods_without_policy
    from nexus_grpc.plugins.contracts import load_contracts

    contracts = load_contracts(_config_or_exit(args.config))
    for error in contracts.errors:
        print(f"nexus lint: {error}", file=sys.stderr)
    missing = methods_without_policy(contracts.methods())
    for path in missing:
        print(
            f"{path}: no access policy; every call will be denied. Declare "
            "(nexus.options.v1.policy) on the method or (nexus.options.v1.default_policy) "
            "on its service"
        )
    if missing or contracts.errors:
        return 1
    # buf is installed per project through npm; scripts/lint knows how (and prepares the
    # google/api protos buf needs offline), so the CLI defers to it.
    for folder in (Path.cwd(), *Path.cwd().parents):
        script = folder / "scripts" / "lint"
        if (folder / "buf.yaml").is_file() and script.is_file():
            return subprocess.call([str(script), *args.args])
    print("nexus lint: no buf.yaml with scripts/lint found here or above", file=sys.stderr)
    return 2


def _policy_explain(args: argparse.Namespace) -> int:
    from nexus_grpc.access.policy import effective_policy, explain
    from nexus_grpc.plugins.contracts import find_method, load_contracts

    contracts = load_contracts(_config_or_exit(args.config))
    method = find_method(contracts, args.method)
    if method is None:
        known = sorted(m.full_name for m in contracts.methods())
        print(
            f"nexus policy: no method {args.method!r}; known: {', '.join(known)}", file=sys.stderr
        )
        return 1
    print(explain(effective_policy(method)))
    return 0


def _users_create(args: argparse.Namespace) -> int:
    import getpass

    from nexus_grpc.plugins.users import UserCreationError, create_user

    config = _config_or_exit(args.config)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    roles = [*args.role, *(["admin"] if args.admin else [])]
    try:
        asyncio.run(create_user(config, args.username, password, roles))
    except UserCreationError as error:
        print(f"nexus users: {error}", file=sys.stderr)
        return 1
    print(f"nexus users: created {args.username} with roles {', '.join(roles) or 'none'}")
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
    if _host_call(args, stub, method, request(username=args.username)) is None:
        return 1
    print(f"nexus users: {args.username} {done}")
    return 0
