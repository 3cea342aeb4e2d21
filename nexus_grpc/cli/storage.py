"""``nexus storage``: the storage indexes of a running host's database."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nexus_grpc.cli.remote import admin_call, host_options, message_dict, print_table

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``nexus storage indexes|retire-indexes``."""
    storage = commands.add_parser(
        "storage", help="the storage indexes of a running host's database (list, retire)"
    )
    storage.set_defaults(help_of=storage)
    storage_commands = storage.add_subparsers(title="storage commands")
    indexes = storage_commands.add_parser(
        "indexes",
        help="list the indexes nexus built, for every message type of every process "
        "sharing the database, and the retired ones awaiting their drop",
    )
    indexes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    indexes.set_defaults(run=_storage_indexes)
    retire = storage_commands.add_parser(
        "retire-indexes",
        help="retire the indexes of a message type no process declares any more (its "
        "plugin removed everywhere); dropped after storage.index_drop_delay. It waits "
        "for another process's index build: raise --timeout while one runs",
    )
    retire.add_argument("type", help="message type, e.g. acme.notes.v1.Note")
    retire.set_defaults(run=_storage_retire)
    for command in (indexes, retire):
        host_options(command)


def _storage_indexes(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from nexus.admin.v1 import admin_pb2

    response = admin_call(args, "ListIndexes", admin_pb2.ListIndexesRequest())
    if response is None:
        return 1
    if args.json:
        print(json.dumps([message_dict(index) for index in response.indexes], indent=2))
        return 0
    if not response.indexes:
        print("no indexes built by nexus")
        return 0
    rows = [("INDEX", "MESSAGE TYPE", "RETIRED")]
    for index in response.indexes:
        retired = (
            json_format.MessageToDict(index.retire_time) if index.HasField("retire_time") else "-"
        )
        rows.append((index.name, index.message_type or "-", str(retired)))
    print_table(rows)
    return 0


def _storage_retire(args: argparse.Namespace) -> int:
    from nexus.admin.v1 import admin_pb2

    request = admin_pb2.RetireIndexesRequest(message_type=args.type)
    response = admin_call(args, "RetireIndexes", request)
    if response is None:
        return 1
    for name in response.retired:
        print(f"nexus storage: retired {name}; dropped after {response.drop_delay:g}s")
    for name in response.dropped:
        print(f"nexus storage: dropped {name}")
    for name in response.kept:
        print(
            f"nexus storage: kept {name}, which another message type declares too "
            "(retire again once it no longer does)"
        )
    return 0
