"""Contract generations: a plugin's generated modules imported into their own pool.

Generated ``_pb2`` modules add their file to ``descriptor_pool.Default()`` when they are
imported, and the default pool refuses a changed file of the same name ("duplicate file
name"). So a plugin upgraded to a changed contract gets its own ``DescriptorPool``: its
generated modules (``_pb2`` and ``_pb2_grpc``) are executed again from their source with
an ``__import__`` that hands them this pool in place of the default one, and sibling
contract modules of the same generation in place of the ones already imported. Files
the contract imports and does not own (``google/protobuf``, ``google/api``, nexus
options, another plugin's contract) are copied into the pool, byte for byte, from the
module the contract imports them from; adding an identical file is allowed, and the
custom options (``nexus.options.v1.policy``, ``rules``) parse against the default
pool's extensions whatever pool a descriptor lives in, so policies and validation rules
read the same way in every generation.

A plugin's first load stays on the default pool: a host whose plugins are never
upgraded behaves exactly as without generations, and code that looks types up in the
default pool (``json_format`` with ``Any``, lint, OpenAPI of the first contract) keeps
working. Only an upgrade builds a :class:`Generation`.

A copied dependency is another descriptor, so its message classes are other classes:
a ``Timestamp`` field of a generation's message holds the generation's ``Timestamp``,
not ``google.protobuf.timestamp_pb2.Timestamp``. :meth:`Generation.binding` therefore
shows the plugin's code, while it is imported, the generation's copies of the
dependency modules its messages use as field types, so ``from google.protobuf import
timestamp_pb2`` at module level in the plugin binds classes its messages accept.

Nothing here holds a generation: the routes built from its servicers (and the plugin
record) keep its modules and pool alive until they are dropped and their calls drain.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from nexus_grpc.events.envelope import add_event_pool, remove_event_pool
from nexus_grpc.plugins._generation_parts import (
    Facade,
    GenerationError,
    PoolModule,
    contract_modules,
    field_files,
    file_set,
    install_modules,
    module_name_of,
    module_sources,
    restore_modules,
    serialized_on_disk,
    unregister_classes,
)

__all__ = [
    "Generation",
    "GenerationError",
    "contract_modules",
    "file_set",
    "load_generation",
    "module_name_of",
    "module_sources",
]

#: Dependency files whose modules are never swapped during :meth:`Generation.binding`:
#: they hold options and descriptors, not message types a plugin builds.
_OPTION_FILES = frozenset({"google/protobuf/descriptor.proto"})


class Generation:
    """One version of a plugin's contract: its pool and the modules generated from it."""

    def __init__(self, label: str) -> None:
        #: Names this generation in messages (e.g. ``greeter@3``).
        self.label = label
        self.pool = descriptor_pool.DescriptorPool()
        #: The contract's own modules, ``_pb2`` and ``_pb2_grpc``, by module name.
        self.modules: dict[str, types.ModuleType] = {}
        #: Copies of dependency modules, made on demand by :meth:`binding`.
        self._dependency_modules: dict[str, types.ModuleType] = {}
        #: Files the contract owns (its ``_pb2`` modules'), in import order.
        self.own_files: list[str] = []
        # Dependency files as the contract's imports provided them: copied from there.
        self._provided: dict[str, FileDescriptor] = {}
        self._sources: dict[str, Path] = {}
        # Where new contract files the loaded ones import are looked for.
        self._search: Sequence[str | Path] | None = None
        # What the contract modules replaced in sys.modules when last installed.
        self._replaced: dict[str, types.ModuleType | None] = {}

    def __repr__(self) -> str:
        return f"<Generation {self.label} {sorted(self.modules)}>"

    def module(self, name: str) -> types.ModuleType:
        """The generation's module ``name``, importing it from its source on first use."""
        existing = self.modules.get(name) or self._dependency_modules.get(name)
        if existing is not None:
            return existing
        source = self._sources.get(name)
        if source is None:
            raise GenerationError(f"{self.label}: {name} is not a module of this generation")
        return self._execute(name, source, self.modules)

    def files(self) -> list[FileDescriptor]:
        """The contract's own files, as this generation's pool holds them."""
        return [self.pool.FindFileByName(name) for name in self.own_files]

    def differs_from(self, running: Iterable[FileDescriptor]) -> bool:
        """Whether the contract is another than ``running`` (a file added, removed or
        changed): when it is not, the upgrade needs no generation of its own."""
        before = {file.name: bytes(file.serialized_pb) for file in running}
        now = {file.name: bytes(file.serialized_pb) for file in self.files()}
        return before != now

    def conflicts_with_default(self) -> bool:
        """Whether the default pool holds one of the contract's files with other bytes.

        Then the contract cannot be imported the ordinary way ("duplicate file name"):
        a plugin loaded again after it was unloaded, with a contract changed meanwhile,
        must be loaded through this generation.
        """
        default = descriptor_pool.Default()
        for file in self.files():
            try:
                known = default.FindFileByName(file.name)
            except KeyError:
                continue
            if bytes(known.serialized_pb) != bytes(file.serialized_pb):
                return True
        return False

    def image(self) -> descriptor_pb2.FileDescriptorSet:
        """The own files and everything they import, dependencies first (a buf image)."""
        return file_set(self.files())

    @contextmanager
    def binding(self) -> Iterator[None]:
        """Install the generation's modules; while the block runs, dependencies too.

        On leaving the block the contract modules stay installed (this generation is the
        live one) and the dependency modules are the host's again. On an exception every
        entry is restored: a failed upgrade leaves the running version's modules.

        The dependency copies replace shared ``sys.modules`` entries (such as
        ``google.protobuf.timestamp_pb2``) for the block's duration, which must be
        short and synchronous: the host runs it on its event loop thread, around the
        plugin's import only. Bindings are serialized by a process-wide lock, so two
        never overlap and each restores what it replaced; one nested in another is a
        GenerationError.
        """
        with _binding_lock(self.label):
            swapped = {**self.modules, **self._dependency_copies()}
            previous = install_modules(swapped)
            try:
                yield
            except BaseException:
                restore_modules(previous)
                raise
            restore_modules({name: previous[name] for name in swapped if name not in self.modules})
            self._replaced = {name: previous[name] for name in self.modules}
            add_event_pool(self.pool)

    def install(self) -> dict[str, types.ModuleType | None]:
        """Make the contract modules the ones ``import`` finds; returns what they replaced.

        The generation's event types can be opened from envelopes from now on.
        """
        previous = install_modules(self.modules)
        self._replaced = dict(previous)
        add_event_pool(self.pool)
        return previous

    def restore(self) -> None:
        """Undo :meth:`install` / :meth:`binding`: the modules they replaced are back.

        For an upgrade that fails after the plugin's code imported (its start hook, its
        health): the running version's modules are what ``import`` finds again, and
        the generation's event types are forgotten.
        """
        restore_modules(
            {
                name: module
                for name, module in self._replaced.items()
                if sys.modules.get(name) is self.modules.get(name)
            }
        )
        self._replaced = {}
        remove_event_pool(self.pool)

    def release(self) -> None:
        """Take the generation's modules out of ``sys.modules`` where they are still its own.

        Called when the generation is dropped (its routes gone and drained); the
        modules, classes and pool are freed once nothing else refers to them.
        """
        remove_event_pool(self.pool)
        self._dependency_modules.clear()
        for name, module in self.modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
                parent, _, leaf = name.rpartition(".")
                package = sys.modules.get(parent)
                if package is not None and getattr(package, leaf, None) is module:
                    delattr(package, leaf)

    # -- importing ---------------------------------------------------------------

    def _load(self, sources: Mapping[str, Path]) -> None:
        self._sources.update(sources)
        # Until every source ran: importing one may adopt more (a file the upgrade added).
        while pending := [name for name in self._sources if name not in self.modules]:
            for name in pending:
                self.module(name)

    def _execute(
        self, name: str, source: Path, into: dict[str, types.ModuleType]
    ) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__file__ = str(source)
        module.__package__ = name.rpartition(".")[0]
        namespace = module.__dict__
        namespace["__builtins__"] = {**builtins.__dict__, "__import__": self._importer(name)}
        into[name] = module  # before running: modules importing each other find it
        try:
            code = compile(source.read_bytes(), str(source), "exec")
            exec(code, namespace)  # generated code, found like any import
        except Exception as error:
            del into[name]
            raise GenerationError(
                f"{self.label}: importing {name} from {source} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        descriptor = namespace.get("DESCRIPTOR")
        if isinstance(descriptor, FileDescriptor):
            unregister_classes(descriptor.message_types_by_name.values())
            own = name.endswith("_pb2") and name not in self._dependency_modules
            if own and descriptor.name not in self.own_files:
                self.own_files.append(descriptor.name)
        return module

    def _importer(self, importing: str) -> Callable[..., Any]:
        """``__import__`` for generated code: this pool, this generation's modules."""

        def import_(
            name: str,
            globals_: Mapping[str, Any] | None = None,
            locals_: Mapping[str, Any] | None = None,
            fromlist: Sequence[str] | None = (),
            level: int = 0,
        ) -> Any:
            if level != 0:
                raise GenerationError(f"{self.label}: {importing} uses a relative import")
            if name == "google.protobuf" and fromlist and "descriptor_pool" in fromlist:
                protobuf = importlib.import_module(name)
                return Facade(
                    protobuf, {"descriptor_pool": PoolModule(self.pool, self._add_serialized)}
                )
            if fromlist:
                for item in fromlist:
                    self._adopt_if_new(f"{name}.{item}")
                ours = {f: f"{name}.{f}" for f in fromlist if f"{name}.{f}" in self._sources}
                if len(ours) == len(fromlist):
                    # The package itself may not be importable yet (a contract new to
                    # this process): nothing of it is needed.
                    return Facade(None, {f: self.module(full) for f, full in ours.items()})
                real = builtins.__import__(name, globals_, locals_, fromlist, 0)
                for item in fromlist:
                    if item not in ours:
                        self._note_provided(getattr(real, item, None))
                if not ours:
                    return real
                return Facade(real, {f: self.module(full) for f, full in ours.items()})
            if "." not in name and name in self._sources:
                return self.module(name)
            module = builtins.__import__(name, globals_, locals_, fromlist, 0)
            return module

        return import_

    def _adopt_if_new(self, name: str) -> None:
        """Make ``name`` a module of this generation when it is a generated module of the
        contract's own folders that no running version has imported: a contract file
        the upgrade added."""
        if name in self._sources or name in sys.modules or self._search is None:
            return
        if not name.endswith(("_pb2", "_pb2_grpc")):
            return
        folders = {known.rpartition(".")[0] for known in self._sources}
        if name.rpartition(".")[0] not in folders:
            return  # another package's module (google.protobuf's, say): the host's
        try:
            self._sources.update(module_sources([name], self._search))
        except GenerationError:
            return  # not beside the contract: imported the ordinary way
        if name.endswith("_pb2"):
            with suppress(GenerationError):  # its services, if it has any
                self._sources.update(module_sources([name + "_grpc"], self._search))

    def _note_provided(self, module: object) -> None:
        descriptor = getattr(module, "DESCRIPTOR", None)
        if isinstance(descriptor, FileDescriptor) and descriptor.name not in self._provided:
            self._check_unchanged(module, descriptor)
            self._provided[descriptor.name] = descriptor

    def _check_unchanged(self, module: object, descriptor: FileDescriptor) -> None:
        """GenerationError when the file ``module`` was imported from changed on disk:
        copying the loaded version into the pool would keep the old one silently."""
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str) or not origin.endswith("_pb2.py"):
            return
        on_disk = serialized_on_disk(Path(origin))
        if on_disk is not None and on_disk != bytes(descriptor.serialized_pb):
            raise GenerationError(
                f"{self.label}: {descriptor.name} changed on disk ({origin}) since it was "
                "imported, and is no file of this contract; a changed file another "
                "plugin or the host owns takes a restart"
            )

    def _add_serialized(self, data: bytes) -> FileDescriptor:
        """``AddSerializedFile`` into the pool, after the files it imports."""
        proto = descriptor_pb2.FileDescriptorProto.FromString(data)
        for dependency in proto.dependency:
            self._ensure(dependency)
        return self.pool.AddSerializedFile(data)

    def _ensure(self, file_name: str) -> None:
        try:
            self.pool.FindFileByName(file_name)
            return
        except KeyError:
            pass
        source = self._provided.get(file_name)
        if source is None:
            try:
                source = descriptor_pool.Default().FindFileByName(file_name)
            except KeyError:
                raise GenerationError(
                    f"{self.label}: {file_name} is imported by the contract but neither "
                    "its generated module nor the default pool provides it"
                ) from None
        for dependency in source.dependencies:
            self._ensure(dependency.name)
        self.pool.AddSerializedFile(bytes(source.serialized_pb))

    def _dependency_copies(self) -> dict[str, types.ModuleType]:
        """Modules of the dependency files whose messages the contract's fields hold."""
        own = set(self.own_files)
        used: set[str] = set()
        for file in self.files():
            for message in file.message_types_by_name.values():
                field_files(message, used, set())
        copies: dict[str, types.ModuleType] = {}
        for file_name in sorted(used - own - _OPTION_FILES):
            name = module_name_of(file_name)
            module = self._dependency_modules.get(name)
            if module is None:
                spec = importlib.util.find_spec(name)
                if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
                    continue  # no source to run: the plugin keeps the host's module
                module = self._execute(name, Path(spec.origin), self._dependency_modules)
            copies[name] = module
        return copies


#: Serializes :meth:`Generation.binding` process-wide; the thread holding it.
_BINDING = threading.Lock()
_binding_owner: int | None = None
#: How long a binding waits for another thread's to end.
_BINDING_WAIT = 30.0


@contextmanager
def _binding_lock(label: str) -> Iterator[None]:
    global _binding_owner
    if _binding_owner == threading.get_ident():
        raise GenerationError(f"{label}: a binding runs already on this thread; they do not nest")
    if not _BINDING.acquire(timeout=_BINDING_WAIT):
        raise GenerationError(f"{label}: another binding held the module table {_BINDING_WAIT:g}s")
    _binding_owner = threading.get_ident()
    try:
        yield
    finally:
        _binding_owner = None
        _BINDING.release()


def load_generation(
    modules: Sequence[str] | Mapping[str, Path],
    *,
    label: str,
    search: Sequence[str | Path] | None = None,
) -> Generation:
    """Import a contract's generated modules into a new :class:`Generation`.

    ``modules`` names the contract's ``_pb2`` modules (their ``_pb2_grpc`` siblings are
    included when they exist), or maps module names to source files. Nothing is
    installed in ``sys.modules``: call :meth:`Generation.binding` around the plugin's
    re-import. GenerationError when a module is missing or fails to import.
    """
    if isinstance(modules, Mapping):
        sources = dict(modules)
    else:
        names = list(modules)
        siblings = [n.removesuffix("_pb2") + "_pb2_grpc" for n in names if n.endswith("_pb2")]
        sources = module_sources(names, search)
        for sibling in siblings:
            try:
                sources.update(module_sources([sibling], search))
            except GenerationError:
                continue  # a contract without services has no _pb2_grpc module
    generation = Generation(label)
    generation._search = list(search) if search is not None else list(sys.path)
    generation._load(sources)
    return generation
