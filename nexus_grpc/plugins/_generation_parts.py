"""The pieces a contract generation is built with: module names, ``sys.modules``
entries, and the stand-ins generated code meets while it runs for a generation.

Kept apart from :mod:`nexus_grpc.plugins.generations`, which says what a generation is;
nothing here knows about plugins.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, symbol_database
from google.protobuf.descriptor import Descriptor, FileDescriptor

__all__ = [
    "HOST_CONTRACT_FOLDERS",
    "Facade",
    "GenerationError",
    "PoolModule",
    "contract_modules",
    "field_files",
    "file_set",
    "install_modules",
    "module_name_of",
    "module_sources",
    "restore_modules",
    "serialized_on_disk",
    "unregister_classes",
]


#: Folders of the contracts the host's own code imports (its options, admin service and
#: event envelope). Never a plugin's, even where their generated modules share a root
#: with a plugin's (an installed wheel, the repository's ``generated/``): a generation
#: copies them from the host's modules like any file it does not own, and a change to
#: one takes a restart.
HOST_CONTRACT_FOLDERS = frozenset({"nexus/options/v1", "nexus/admin/v1", "nexus/events/v1"})
#: Proto packages no plugin owns either: protobuf's well-known types and googleapis,
#: whose modules share site-packages with an installed plugin's.
_LIBRARY_PREFIX = "google/"


class GenerationError(ImportError):
    """A generation's modules cannot be found or imported; the message says which."""


def module_name_of(proto_file: str, *, grpc: bool = False) -> str:
    """The module protoc generates for ``proto_file`` (``a/b/c.proto`` → ``a.b.c_pb2``)."""
    stem = proto_file.removesuffix(".proto").replace("-", "_").replace("/", ".")
    return f"{stem}_pb2_grpc" if grpc else f"{stem}_pb2"


def module_sources(
    names: Iterable[str], search: Sequence[str | Path] | None = None
) -> dict[str, Path]:
    """Source file of each module name, searched in ``search`` (``sys.path`` by default).

    Generated modules live in plain folders; a name found nowhere is a GenerationError.
    """
    roots = [Path(p) for p in (sys.path if search is None else search) if str(p)]
    found: dict[str, Path] = {}
    for name in names:
        relative = Path(*name.split(".")).with_suffix(".py")
        for root in roots:
            candidate = root / relative
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            raise GenerationError(f"generated module {name} not found in {[str(r) for r in roots]}")
    return found


def contract_modules(
    files: Iterable[str | FileDescriptor], search: Sequence[str | Path] | None = None
) -> list[str]:
    """The ``_pb2`` modules of a plugin's contract, sorted.

    ``files`` are a running plugin's contract files (``acme/notes/v1/notes.proto``, the
    files of its services, as names or descriptors); a plugin's contract is what
    ``nexus gen`` put in those folders, including files its services do not import
    (events) and files the new version added. Each folder is taken from the first
    ``search`` root that has it. The files the given descriptors import, directly or
    not, from the same generated root (``acme/common/v1/types.proto``, in another
    folder) belong to the contract too, with their folders: left out, a changed one
    would stay at its running version. The host's contracts
    (:data:`HOST_CONTRACT_FOLDERS`) and the ``google/`` files never do.
    """
    roots = [Path(p) for p in (sys.path if search is None else search) if str(p)]
    given = list(files)
    names = {file if isinstance(file, str) else file.name for file in given}
    contract_roots: set[Path] = set()
    for name in names:
        root = _root_of(str(Path(name).parent), roots)
        if root is not None:
            contract_roots.add(root)
    for descriptor in given:
        if isinstance(descriptor, FileDescriptor):
            for dependency in _imported(descriptor):
                if _owned_elsewhere(dependency):
                    continue
                relative = Path(module_name_of(dependency).replace(".", "/") + ".py")
                if any((root / relative).is_file() for root in contract_roots):
                    names.add(dependency)
    found: set[str] = set()
    for folder in sorted({str(Path(name).parent) for name in names}):
        root = _root_of(folder, roots)
        if root is not None:
            package = folder.replace("/", ".")
            found.update(f"{package}.{module.stem}" for module in (root / folder).glob("*_pb2.py"))
    return sorted(found)


def _owned_elsewhere(proto_file: str) -> bool:
    """Whether ``proto_file`` is the host's or a library's, whatever root it is in."""
    folder = proto_file.rpartition("/")[0]
    return folder in HOST_CONTRACT_FOLDERS or proto_file.startswith(_LIBRARY_PREFIX)


def _root_of(folder: str, roots: Sequence[Path]) -> Path | None:
    """The first of ``roots`` whose ``folder`` holds generated modules."""
    for root in roots:
        directory = root / folder
        if directory.is_dir() and any(directory.glob("*_pb2.py")):
            return root
    return None


def _imported(file: FileDescriptor) -> set[str]:
    """Names of the files ``file`` imports, directly or not."""
    seen: set[str] = set()
    pending = list(file.dependencies)
    while pending:
        dependency = pending.pop()
        if dependency.name not in seen:
            seen.add(dependency.name)
            pending.extend(dependency.dependencies)
    return seen


def serialized_on_disk(source: Path) -> bytes | None:
    """The serialized file a generated ``_pb2`` module adds to its pool, read from its
    source (None when it is not found there: not generated code, or another layout)."""
    try:
        tree = ast.parse(source.read_bytes(), str(source))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    return None


def unregister_classes(messages: Iterable[Descriptor]) -> None:
    """Take a generation's classes out of protobuf's process-wide symbol database.

    Generated code registers every class it builds there (``builder._sym_db``), in a
    dict shared by all symbol databases and keyed by descriptor, so a dropped
    generation's classes, descriptors and pool would live as long as the process. The
    classes stay reachable from their modules and ``message_factory.GetMessageClass``.
    """
    registry = getattr(symbol_database.SymbolDatabase, "_classes", None)
    if not isinstance(registry, dict):
        return
    for message in messages:
        registry.pop(message, None)
        unregister_classes(message.nested_types)


def field_files(message: Descriptor, into: set[str], seen: set[str]) -> None:
    """Files of every message type reachable from ``message``'s fields."""
    if message.full_name in seen:
        return
    seen.add(message.full_name)
    into.add(message.file.name)
    for field in message.fields:
        if field.message_type is not None:
            field_files(field.message_type, into, seen)
    for nested in message.nested_types:
        field_files(nested, into, seen)


class PoolModule:
    """Stands in for ``google.protobuf.descriptor_pool`` inside a generation's module:
    ``Default()`` is the generation's pool, whose ``AddSerializedFile`` is ``add``."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, add: Callable[[bytes], Any]) -> None:
        self._pool = _SeedingPool(pool, add)

    def Default(self) -> _SeedingPool:  # the name generated code calls
        return self._pool

    def __getattr__(self, name: str) -> Any:
        return getattr(descriptor_pool, name)


class _SeedingPool:
    """A pool whose ``AddSerializedFile`` adds a file's imports before the file."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, add: Callable[[bytes], Any]) -> None:
        self._real = pool
        self._add = add

    def AddSerializedFile(self, data: bytes) -> FileDescriptor:
        result: FileDescriptor = self._add(data)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Facade:
    """A module seen through ``from X import a, b`` with some names answered otherwise;
    ``module`` None when the package itself is not needed (nor importable)."""

    def __init__(self, module: types.ModuleType | None, overrides: Mapping[str, object]) -> None:
        self._module = module
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        if self._module is None:
            raise AttributeError(name)
        return getattr(self._module, name)


def install_modules(modules: Mapping[str, types.ModuleType]) -> dict[str, types.ModuleType | None]:
    previous: dict[str, types.ModuleType | None] = {}
    for name, module in modules.items():
        previous[name] = sys.modules.get(name)
        sys.modules[name] = module
        parent, _, leaf = name.rpartition(".")
        if parent:
            # `from pkg import mod` reads the package attribute before sys.modules.
            try:
                package = importlib.import_module(parent)
            except ImportError:
                continue  # not importable here: only `import pkg.mod` finds the module
            setattr(package, leaf, module)
    return previous


def restore_modules(previous: Mapping[str, types.ModuleType | None]) -> None:
    for name, module in previous.items():
        parent, _, leaf = name.rpartition(".")
        package = sys.modules.get(parent) if parent else None
        if module is None:
            sys.modules.pop(name, None)
            if package is not None and hasattr(package, leaf):
                delattr(package, leaf)
        else:
            sys.modules[name] = module
            if package is not None:
                setattr(package, leaf, module)


def file_set(files: Iterable[FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    """``files`` and everything they import, each once, every file after its imports."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for file in files:
        visit(file)
    result = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        result.file.add().ParseFromString(bytes(file.serialized_pb))
    return result
