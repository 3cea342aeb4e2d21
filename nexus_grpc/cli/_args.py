"""argparse value types shared by the commands."""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Callable

__all__ = ["host_port", "not_empty", "positive", "read_password", "since_time"]


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
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


def not_empty(what: str) -> Callable[[str], str]:
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


def since_time(value: str) -> datetime.datetime:
    """``--since``: an ISO 8601 time (UTC unless it says), or ``<n><unit>`` ago."""
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


def host_port(*, empty: bool = False) -> Callable[[str], str]:
    """An argparse type: ``HOST:PORT`` with a port 0..65535 (0 picks a free one);
    ``empty`` also allows "" (a listener turned off)."""

    def parse(value: str) -> str:
        if empty and value == "":
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:0)"
            )
        return value

    return parse


def read_password(args: argparse.Namespace) -> str:
    """The password of ``args.username``: the first line of standard input with
    ``--password-stdin`` (without its line ending, LF or CRLF), else a prompt."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    return getpass.getpass(f"password for {args.username}: ")
