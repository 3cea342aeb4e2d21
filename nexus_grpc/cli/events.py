"""``nexus events``: operate the event bus of a running host."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nexus_grpc.cli._args import not_empty, positive, since_time
from nexus_grpc.cli.remote import admin_call, host_options, message_dict, print_table

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus events dead-letters|redrive|replay|stats``."""
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
        "--limit", type=positive(int), default=1000, help="at most this many (default: 1000)"
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
        type=not_empty("a stream entry id"),
        help="from this stream entry id on, included",
    )
    since.add_argument(
        "--since-event",
        type=not_empty("an event id"),
        help="from the event with this id on, included (an envelope id, as in a dead letter)",
    )
    since.add_argument(
        "--since",
        type=since_time,
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
        host_options(command)


def _events_dead_letters(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.admin.v1 import admin_pb2

    letters: list[Any] = []
    token = ""
    while len(letters) < args.limit:
        request = admin_pb2.ListDeadLettersRequest(
            group=args.group, page_size=min(args.limit - len(letters), 1000), page_token=token
        )
        response = admin_call(args, "ListDeadLetters", request)
        if response is None:
            return 1
        letters.extend(response.dead_letters)
        token = response.next_page_token
        if not token:
            break
    if args.json:
        print(json.dumps([message_dict(letter) for letter in letters], indent=2))
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
    print_table(rows)
    if token:
        print(f"(first {len(letters)} shown; raise --limit for more)")
    return 0


def _events_redrive(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    request = admin_pb2.RedriveDeadLetterRequest(group=args.group, id=args.id)
    if admin_call(args, "RedriveDeadLetter", request) is None:
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
    response = admin_call(args, "ReplayEvents", request)
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

    response = admin_call(args, "GetEventStats", admin_pb2.GetEventStatsRequest())
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
    print_table(rows)
    return 0
