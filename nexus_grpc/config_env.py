"""Which ``NEXUS_*`` environment variables name a configuration key.

A variable is ``NEXUS_`` + the key's path, upper-cased, levels joined by ``__``
(``NEXUS_SERVER__GRPC_ADDRESS`` is ``server.grpc_address``). One that names no key is a
configuration error, as an unknown key in ``nexus.toml`` is: a misspelt variable must
not leave a setting at its default unnoticed (a secret file, an address). The few
``NEXUS_`` variables that are not configuration keys are listed in :data:`NOT_CONFIG`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["NOT_CONFIG", "check_env_names"]

#: ``NEXUS_`` variables read by nexus's tools that are not configuration keys: the
#: config file (``nexus serve``), the access token and the TLS options of remote
#: commands (``nexus_grpc/cli/channel.py``), and the MongoDB-compatible server the test
#: suite runs (``tests/fixtures/mongo.py``). ``tests/unit/test_config_env.py`` checks
#: that every ``NEXUS_`` variable the code reads is a config key or listed here.
NOT_CONFIG = frozenset(
    {
        "NEXUS_CONFIG",
        "NEXUS_TOKEN",
        "NEXUS_TLS",
        "NEXUS_CACERT",
        "NEXUS_CERT",
        "NEXUS_KEY",
        "NEXUS_SERVER_NAME",
        "NEXUS_MONGO_SERVER",
    }
)
#: Shown for a level whose names are the user's (a plugin, a rate class).
_ANY = "<NAME>"


def check_env_names(
    names: typing.Iterable[str], root: type, *, prefix: str, nesting: str
) -> list[str]:
    """Why each variable of ``names`` starting with ``prefix`` names no key of the
    ``root`` dataclass; empty when all do. Each reason lists the nearest valid names."""
    problems = []
    known: list[str] | None = None
    for name in sorted(names):
        if not name.startswith(prefix) or name in NOT_CONFIG:
            continue
        keys = [part.lower() for part in name[len(prefix) :].split(nesting)]
        found = _resolve(root, keys)
        if found is None:
            continue
        if found == "section":
            problems.append(
                f"environment variable {name} names the table {'.'.join(keys)}, not a "
                f"key; set one key of it: {name}{nesting}<KEY>"
            )
            continue
        if known is None:
            known = sorted(prefix + nesting.join(path).upper() for path in _paths(root))
        nearest = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = (
            f"did you mean {' or '.join(nearest)}?"
            if nearest
            else f"variables are {prefix}<SECTION>{nesting}<KEY>, e.g. {known[0]}"
        )
        problems.append(
            f"environment variable {name} names no config key ({hint} If it is another "
            "tool's, unset it for nexus.)"
        )
    return problems


def _resolve(cls: type, keys: list[str]) -> str | None:
    """None when ``keys`` is a key path below ``cls``; "section" when it stops at a
    table (which takes no single value); "unknown" otherwise."""
    hint: Any = cls
    for key in keys:
        if not key:
            return "unknown"
        if hint is Any:
            return None  # free-form settings (a plugin's): any deeper key is its own
        if dataclasses.is_dataclass(hint):
            fields = typing.get_type_hints(hint)
            if key not in fields:
                return "unknown"
            hint = fields[key]
        elif typing.get_origin(hint) in (Mapping, dict):
            hint = typing.get_args(hint)[1]
        else:
            return "unknown"  # below a plain value
    if dataclasses.is_dataclass(hint) or typing.get_origin(hint) in (Mapping, dict):
        return "section"
    return None


def _paths(hint: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path below ``hint``, with :data:`_ANY` for user-named levels."""
    if dataclasses.is_dataclass(hint):
        for key, child in typing.get_type_hints(hint).items():
            yield from _paths(child, (*path, key))
    elif typing.get_origin(hint) in (Mapping, dict):
        yield from _paths(typing.get_args(hint)[1], (*path, _ANY))
    elif hint is Any:
        yield (*path, "<KEY>")
    else:
        yield path
