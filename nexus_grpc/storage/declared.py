"""Indexes a contract declares: ``option (nexus.options.v1.storage)`` on a message.

A declaration names indexed paths (see :mod:`.index`) in index order, each ascending or
``desc``, and the collections it covers (by default the type's own, its full name). It
becomes one index per collection: the record's namespace first (every list is inside
one), then the declared paths, then the id (the tie-breaker of every order); on SQLite
and PostgreSQL a partial index over that collection's records only (see :mod:`.indexes`).
The name is derived from the collection, the paths and their value kinds, so the same
declaration is the same index in every process, and a changed one (another path, another
order, a field whose type changed, another collection) is another index.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf.descriptor import Descriptor, FileDescriptor
from nexus.options.v1 import options_pb2

from .index import UnindexedPathError, ValueKind, resolve_path
from .schema import MAX_KEY_LENGTH

__all__ = [
    "INDEX_PREFIX",
    "MAX_INDEXES_PER_TYPE",
    "MAX_INDEX_KEYS",
    "BuiltIndex",
    "DeclaredIndex",
    "IndexChanges",
    "IndexDeclarationError",
    "IndexKey",
    "declared_indexes",
    "index_collections",
    "indexable_types",
    "indexed_collections",
    "loaded_message_types",
    "report_changes",
]

_log = logging.getLogger("nexus.storage")

#: Prefix of every index nexus builds; no other index is ever dropped by it.
INDEX_PREFIX = "nexus_ix_"
#: Most paths in one declared index (besides namespace, collection and id).
MAX_INDEX_KEYS = 8
#: Most indexes one message type may declare: each one slows every write a little.
MAX_INDEXES_PER_TYPE = 16
#: Most collections one declared index may cover (each is an index of its own).
MAX_INDEX_COLLECTIONS = 8

# Typed Any: the stubs type extensions more narrowly than HasExtension accepts them.
_STORAGE: Any = options_pb2.storage


class IndexDeclarationError(ValueError):
    """A declaration the storage cannot build; the message names the type and path."""


@dataclass(frozen=True)
class IndexKey:
    """One declared path of an index, with its value kind and direction."""

    path: str
    kind: ValueKind
    descending: bool

    @property
    def spec(self) -> str:
        """``path:kind`` or ``path:kind:desc``: what identifies this key."""
        return f"{self.path}:{self.kind.value}" + (":desc" if self.descending else "")


@dataclass(frozen=True)
class DeclaredIndex:
    """One index declared by ``message_type`` (a message's full name) over the records
    of one ``collection``."""

    message_type: str
    keys: tuple[IndexKey, ...]
    collection: str

    @property
    def definition(self) -> str:
        """The keys' specs, comma-separated: recorded with the index in the catalog."""
        return ",".join(key.spec for key in self.keys)

    @property
    def name(self) -> str:
        """The database name of the index (short enough for PostgreSQL's 63 bytes)."""
        return _name(f"{self.collection}\n{self.definition}")

    @property
    def keys_name(self) -> str:
        """The name of an index over these keys in every collection at once (MongoDB's,
        where one index serves every collection: see :mod:`.mongo_indexes`)."""
        return _name(self.definition)


def _name(identity: str) -> str:
    return INDEX_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:20]


@dataclass
class IndexChanges:
    """What applying the declared indexes did: index names built, dropped and kept
    though no contract declares them (``retired``, until the drop delay has passed), and
    the types whose index documents were re-derived."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reindexed: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    #: Indexes an operator's retirement of a type left alone: another type's catalog
    #: entry names them too (see ``Storage.retire_indexes``).
    shared: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuiltIndex:
    """An index nexus built, as the database's catalog records it: built for
    ``message_type`` (one entry per type declaring it), or retired (no type, the time it
    was retired), to be dropped once retired for the drop delay."""

    name: str
    message_type: str = ""
    definition: str = ""
    retired_at: datetime | None = None


def report_changes(changes: IndexChanges, drop_delay: float = 0.0) -> None:
    """One log line per index built, dropped, or kept though no contract declares it."""
    for name in changes.created:
        _log.info("built the declared index %s", name)
    for name in changes.dropped:
        _log.info("dropped the index %s, which no contract declares any more", name)
    for name in changes.retired:
        _log.info(
            "kept the index %s, which no contract declares any more, for processes still "
            "using it; it is dropped once undeclared for %gs (storage.index_drop_delay)",
            name,
            drop_delay,
        )


@functools.cache
def declared_indexes(descriptor: Descriptor) -> tuple[DeclaredIndex, ...]:
    """The indexes ``descriptor`` declares, validated; IndexDeclarationError if one is bad."""
    options = descriptor.GetOptions()
    if not options.HasExtension(_STORAGE):
        return ()
    declared: options_pb2.StorageOptions = options.Extensions[_STORAGE]
    where = f"{descriptor.full_name} (option nexus.options.v1.storage)"
    if len(declared.indexes) > MAX_INDEXES_PER_TYPE:
        raise IndexDeclarationError(
            f"{where} declares {len(declared.indexes)} indexes; at most "
            f"{MAX_INDEXES_PER_TYPE} are allowed"
        )
    found: dict[str, DeclaredIndex] = {}
    for position, index in enumerate(declared.indexes, start=1):
        if not index.fields:
            raise IndexDeclarationError(f"{where}: index {position} names no fields")
        if len(index.fields) > MAX_INDEX_KEYS:
            raise IndexDeclarationError(
                f"{where}: index {position} has {len(index.fields)} fields; at most "
                f"{MAX_INDEX_KEYS} are allowed"
            )
        keys = tuple(_key(descriptor, where, position, item) for item in index.fields)
        if len({key.path for key in keys}) != len(keys):
            raise IndexDeclarationError(f"{where}: index {position} names a field twice")
        for collection in _collections(where, position, index.collections, descriptor):
            made = DeclaredIndex(descriptor.full_name, keys, collection)
            found.setdefault(made.name, made)  # a repeated declaration is one index
    return tuple(found.values())


def index_collections(descriptor: Descriptor) -> list[str]:
    """The collections the indexes ``descriptor`` declares cover, sorted (for a
    declaration already validated: see :func:`indexed_collections`)."""
    return sorted(indexed_collections(descriptor))


@functools.cache
def indexed_collections(descriptor: Descriptor) -> frozenset[str]:
    """The collections the indexes ``descriptor`` declares cover; none when its
    declaration is invalid (no index is built for it). What a list asks on every call."""
    try:
        return frozenset(index.collection for index in declared_indexes(descriptor))
    except IndexDeclarationError:
        return frozenset()


def _collections(
    where: str, position: int, names: Iterable[str], descriptor: Descriptor
) -> list[str]:
    collections = list(names) or [descriptor.full_name]
    if len(collections) > MAX_INDEX_COLLECTIONS:
        raise IndexDeclarationError(
            f"{where}: index {position} names {len(collections)} collections; at most "
            f"{MAX_INDEX_COLLECTIONS} are allowed"
        )
    for name in collections:
        if not name or len(name) > MAX_KEY_LENGTH or not name.isprintable():
            raise IndexDeclarationError(
                f"{where}: index {position} collection {name!r}: expected 1 to "
                f"{MAX_KEY_LENGTH} printable characters"
            )
    if len(set(collections)) != len(collections):
        raise IndexDeclarationError(f"{where}: index {position} names a collection twice")
    return collections


def _key(descriptor: Descriptor, where: str, position: int, item: str) -> IndexKey:
    words = item.split()
    direction = words[1].lower() if len(words) == 2 else "asc"
    if len(words) not in (1, 2) or direction not in ("asc", "desc"):
        raise IndexDeclarationError(
            f"{where}: index {position} field {item!r}: expected 'path' or 'path desc'"
        )
    try:
        indexed = resolve_path(descriptor, words[0])
    except UnindexedPathError as exc:
        raise IndexDeclarationError(
            f"{where}: index {position} field {words[0]!r}: {exc.reason}"
        ) from None
    return IndexKey(indexed.path, indexed.kind, descending=direction == "desc")


def indexable_types(
    types: Iterable[Descriptor],
) -> tuple[list[Descriptor], list[tuple[Descriptor, IndexDeclarationError]]]:
    """``types`` whose declarations are valid, and the others with what is wrong: one
    contract's mistake must not cost every other contract its indexes."""
    valid: list[Descriptor] = []
    invalid: list[tuple[Descriptor, IndexDeclarationError]] = []
    for descriptor in types:
        try:
            declared_indexes(descriptor)
        except IndexDeclarationError as error:
            invalid.append((descriptor, error))
        else:
            valid.append(descriptor)
    return valid, invalid


def loaded_message_types() -> list[Descriptor]:
    """Every message type of the contracts imported into this process (generated
    ``_pb2`` modules register their files when imported), whether it declares indexes
    or not: a type that stopped declaring any still has its old ones dropped."""
    files: dict[str, FileDescriptor] = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "DESCRIPTOR", None)
        if isinstance(file, FileDescriptor):
            files.setdefault(file.name, file)
    found: list[Descriptor] = []
    for name in sorted(files):
        found.extend(_messages(files[name].message_types_by_name.values()))
    return found


def _messages(descriptors: Iterable[Descriptor]) -> Iterable[Descriptor]:
    for descriptor in descriptors:
        yield descriptor
        yield from _messages(descriptor.nested_types)
