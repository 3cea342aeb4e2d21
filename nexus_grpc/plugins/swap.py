"""Hot swap: load, unload and reload plugins in a running host, dropping no call.

Every operation is one :class:`SwapRequest` (plugin name, operation, the code hash
the caller expects), so the same request can come from an admin call or, with
several processes, from a message each of them applies. A swap:

- **load**: finds the plugin again in the configured folders and entry points (never
  a path from the caller), checks its requirements serve, builds a generation off to
  the side (import, construct, start hook, health), then routes to it;
- **reload**: builds the new generation the same way with the plugin's modules
  imported anew, swaps the routes in one routing generation (calls in flight keep the
  old routes and finish on the old code), then drains and stops the old generation.
  Any failure before the swap leaves the old generation serving, untouched;
- **unload**: refused while serving plugins require it (unless cascading to them
  first), removes the routes (new calls: UNIMPLEMENTED, 404 over REST), drains the
  calls in flight for up to ``drain_timeout`` (the rest end UNAVAILABLE), runs the
  stop hook and forgets the plugin's modules.

One swap runs at a time per host; a caller waiting longer than the time a swap may
take gets ABORTED. Each swap runs as a task of its own: a caller that goes away (a
deadline, a disconnect) does not leave it half-done. The old generation drains after
the lock is released (its routes are gone already), so a long drain holds up no other
swap. Hot swap is off unless ``plugins.hot_swap.enabled``.
After a load or reload, the storage indexes the plugin's contract declares are built
(:meth:`HotSwap.index_with`), as the host builds every contract's at start.
With several workers, a swap one of them applies is applied by all
(:mod:`nexus_grpc.plugins.swap_sharing`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.descriptor import Descriptor, FileDescriptor

from nexus_grpc.config import HotSwapConfig
from nexus_grpc.errors import NotFoundError, StatusError
from nexus_grpc.gateway.bindings import BindingError, bindings_for
from nexus_grpc.plugins._generation_parts import contract_modules
from nexus_grpc.plugins.discovery import Candidate
from nexus_grpc.plugins.fingerprint import CodeTooLargeError, code_hash
from nexus_grpc.plugins.generation import Generation
from nexus_grpc.plugins.manager import PluginManager, PluginRecord, PluginState, PrepareError
from nexus_grpc.plugins.modules import forget_modules
from nexus_grpc.routing import RoutingTable
from nexus_grpc.storage.declared import indexable_types

if TYPE_CHECKING:
    from nexus_grpc.plugins.swap_sharing import SwapSharing
    from nexus_grpc.storage import Storage
    from nexus_grpc.supervisor.channel import Broadcast

__all__ = ["OPERATIONS", "HotSwap", "Surface", "SwapError", "SwapRequest", "SwapResult"]

_log = logging.getLogger("nexus.plugins")

T = TypeVar("T")

#: The operations a :class:`SwapRequest` may name.
OPERATIONS = ("load", "unload", "reload")


class SwapError(StatusError):
    """A swap that cannot be done; the plugin is as it was. FAILED_PRECONDITION unless
    said otherwise."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    ) -> None:
        super().__init__(code, message, reason="PLUGIN_SWAP_REFUSED")


@dataclass(frozen=True)
class SwapRequest:
    """One swap, as an admin call or a message between processes states it."""

    plugin: str
    #: "load", "unload" or "reload".
    operation: str
    #: When set, the code found must hash to it (every process swaps the same code).
    expected_hash: str = ""
    #: unload: unload the plugins requiring this one first.
    cascade: bool = False
    #: unload, reload: seconds to wait for calls in flight; the configured one if None.
    drain_timeout: float | None = None
    #: reload: accept a contract that breaks the running one's clients.
    force: bool = False


@dataclass(frozen=True)
class Surface:
    """What a set of routes exposes: services, gRPC methods and HTTP routes."""

    services: frozenset[str] = frozenset()
    methods: frozenset[str] = frozenset()
    #: "GET /v1/things/{id}" for each HTTP binding.
    routes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, table: RoutingTable, plugins: set[str]) -> Surface:
        """The surface of ``plugins``' routes in ``table``."""
        services: set[str] = set()
        methods: set[str] = set()
        routes: set[str] = set()
        for route in table.routes.values():
            if route.plugin not in plugins:
                continue
            services.add(route.service)
            methods.add(route.path)
            try:
                bindings = bindings_for(route.info.descriptor)
            except BindingError:
                continue
            routes.update(f"{b.http_method} {b.template.source}" for b in bindings)
        return cls(frozenset(services), frozenset(methods), frozenset(routes))

    def minus(self, other: Surface) -> Surface:
        """What this surface has and ``other`` does not."""
        return Surface(
            self.services - other.services,
            self.methods - other.methods,
            self.routes - other.routes,
        )


@dataclass(frozen=True)
class SwapResult:
    """What a swap changed."""

    operation: str
    #: The plugins it loaded, unloaded or reloaded, in the order it did.
    plugins: tuple[str, ...]
    #: The code hash of the generation now serving ("" after an unload).
    code_hash: str = ""
    #: The generation now serving (0 after an unload).
    generation: int = 0
    added: Surface = field(default_factory=Surface)
    removed: Surface = field(default_factory=Surface)
    #: Calls still running after the drain timeout, ended UNAVAILABLE.
    cut_calls: int = 0
    #: Seconds from the request to the new routes serving (load, reload).
    swap_seconds: float = 0.0


@dataclass
class _Outcome:
    """What the locked part of a swap did, and the generations it left to retire."""

    result: SwapResult
    retiring: list[tuple[str, Generation]] = field(default_factory=list)


class HotSwap:
    """Applies :class:`SwapRequest`\\ s to one host's plugin manager, one at a time."""

    def __init__(self, manager: PluginManager) -> None:
        self._manager = manager
        self._lock = asyncio.Lock()
        # Swaps and retirements under way: owned here, so no caller's cancellation
        # ends one half-done, and the host's shutdown can wait for them.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._sharing: SwapSharing | None = None
        self._storage: Storage | None = None
        self._index_drop_delay = 0.0

    def index_with(self, storage: Storage, drop_delay: float = 0.0) -> None:
        """Build the storage indexes a plugin's contract declares when it is loaded or
        reloaded, in ``storage``; those its types stopped declaring are dropped after
        ``drop_delay`` seconds (``storage.index_drop_delay``: a swap back within it
        finds them still built)."""
        self._storage = storage
        self._index_drop_delay = drop_delay

    def share(self, broadcast: Broadcast) -> None:
        """Apply the swaps of this host's other workers, and have them apply its own."""
        from nexus_grpc.plugins.swap_sharing import SwapSharing

        self._sharing = SwapSharing(self, broadcast)

    async def announce(self) -> None:
        """Tell the other workers (if any) this one takes part in their swaps."""
        if self._sharing is not None:
            await self._sharing.announce()

    def record(self, name: str) -> PluginRecord | None:
        """The record of plugin ``name``."""
        return self._manager.record(name)

    @property
    def settings(self) -> HotSwapConfig:
        """``[plugins.hot_swap]``."""
        return self._manager.settings.plugins.hot_swap

    async def apply(self, request: SwapRequest, *, share: bool = True) -> SwapResult:
        """Do ``request``; SwapError (or NOT_FOUND, PERMISSION_DENIED) when it cannot be.

        Once done here, and unless ``share`` is off (a swap another worker shared),
        the other workers apply it too before this returns (see
        :mod:`~nexus_grpc.plugins.swap_sharing`)."""
        if not self.settings.enabled:
            raise SwapError(
                "hot swap is off on this host: set enabled = true under [plugins.hot_swap] "
                "in its configuration (or restart it to change plugins)"
            )
        if request.operation not in OPERATIONS:
            raise SwapError(
                f"unknown operation {request.operation!r}; expected one of {', '.join(OPERATIONS)}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
            )
        # Shielded: a caller cancelled (deadline, disconnect) stops waiting, the swap
        # goes on to its end, rollback or retirement included.
        return await asyncio.shield(self._own(self._swap(request, share)))

    def serving(self) -> dict[str, str]:
        """The code hash of each plugin serving here, by name."""
        return {
            record.name: record.current.code_hash
            for record in self._manager.records()
            if record.state == PluginState.SERVING and record.current is not None
        }

    @property
    def hook_timeout(self) -> float:
        """``plugins.hook_timeout``: the longest a start or stop hook may take."""
        return self._manager.settings.plugins.hook_timeout

    @property
    def stopping(self) -> bool:
        """Whether the host stops: new swaps, its own or shared, are refused."""
        return self._closed

    def refuse(self) -> None:
        """The host begins to stop: refuse new swaps from now on (the one under way
        goes on to its end; :meth:`close` waits for it)."""
        self._closed = True

    async def close(self) -> None:
        """The host stops: wait for the swap under way, refuse further ones (the lock is
        kept) and wait for the generations still draining."""
        self._closed = True
        await self._lock.acquire()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _own(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _lock_wait(self) -> float:
        """How long a swap may wait for the one under way: about the longest a swap
        holds the lock (start hook, health, a failed start's stop hook)."""
        hooks = self._manager.settings.plugins.hook_timeout
        return 2 * hooks + self.settings.start_timeout + 10.0

    async def _swap(self, request: SwapRequest, share: bool) -> SwapResult:
        if self._closed:
            raise SwapError("the host is stopping", code=grpc.StatusCode.UNAVAILABLE)
        try:
            async with asyncio.timeout(self._lock_wait()):
                await self._lock.acquire()
        except TimeoutError:
            raise SwapError(
                f"another swap is in progress; plugin {request.plugin!r} was not "
                f"{request.operation}ed, try again",
                code=grpc.StatusCode.ABORTED,
            ) from None
        try:
            if self._closed:  # it stopped while this swap waited
                raise SwapError("the host is stopping", code=grpc.StatusCode.UNAVAILABLE)
            before = self._manager_table()
            try:
                if request.operation == "load":
                    outcome = _Outcome(await self._load(request))
                elif request.operation == "reload":
                    outcome = await self._reload(request)
                else:
                    outcome = await self._unload(request)
            except (OSError, CodeTooLargeError) as error:
                # Raised before anything changed (the build rolls back what it did).
                raise SwapError(
                    f"plugin {request.plugin!r}: {type(error).__name__}: {error}"
                ) from None
            after = self._manager_table()
        finally:
            self._lock.release()
        result = outcome.result
        failed: dict[int, str] = {}
        if share and self._sharing is not None:
            # Outside the lock: two workers sharing a swap at once each apply the
            # other's while waiting for its answers.
            failed = await self._sharing.publish(request, result)
        # Outside the lock: the old routes are gone, a long drain holds up no swap.
        cut = 0
        timeout = self._drain_timeout(request)
        for plugin, generation in outcome.retiring:
            retiring = self._own(self._retire(plugin, generation, timeout))
            if share:
                cut += await asyncio.shield(retiring)
            else:
                # A swap another worker shared: it answers once installed, and its old
                # generation drains in the background (close() waits for it).
                retiring.add_done_callback(_report_retirement)
        if failed:
            workers = "; ".join(f"worker {pid}: {why[:300]}" for pid, why in sorted(failed.items()))
            raise SwapError(
                f"plugin {request.plugin!r}: the {request.operation} is applied here, not "
                f"on {workers}; retry or roll the workers",
                code=grpc.StatusCode.ABORTED,
            )
        touched = set(result.plugins)
        old, new = Surface.of(before, touched), Surface.of(after, touched)
        return SwapResult(
            result.operation,
            result.plugins,
            result.code_hash,
            result.generation,
            added=new.minus(old),
            removed=old.minus(new),
            cut_calls=cut,
            swap_seconds=result.swap_seconds,
        )

    async def _retire(self, plugin: str, generation: Generation, seconds: float) -> int:
        cut = await self._manager.retire(plugin, generation, seconds)
        # The next load imports the files as they are then; modules of a generation
        # loaded since are not this one's to forget.
        current = sys.modules.get(generation.package)
        if current is not None and id(current.__dict__) in generation.namespaces:
            forget_modules(generation.package)
        return cut

    def _manager_table(self) -> RoutingTable:
        return self._manager.router.table

    # -- load and reload ---------------------------------------------------------------

    async def _candidate(self, name: str) -> Candidate:
        found = self._manager.rediscover(name)
        if found is None:
            raise NotFoundError("plugin", name)
        if isinstance(found, str):
            raise SwapError(found)
        return found

    async def _checked_hash(self, candidate: Candidate, expected: str) -> str:
        """The code hash of ``candidate``, checked against ``expected`` and the
        allow-list."""
        if candidate.package_dir is None:
            raise SwapError(f"plugin {candidate.name!r} ({candidate.source}) has no folder")
        try:
            digest = await asyncio.to_thread(code_hash, candidate.package_dir)
        except (OSError, CodeTooLargeError) as error:
            raise SwapError(f"plugin {candidate.name!r}: cannot hash its code: {error}") from None
        expected = expected.removeprefix("sha256:")
        if expected and digest != expected:
            raise SwapError(
                f"plugin {candidate.name!r}: its code hashes to sha256:{digest}, not the "
                f"expected sha256:{expected}; the files differ from the ones you meant"
            )
        allowed = {h.removeprefix("sha256:") for h in self.settings.allowed_hashes}
        if allowed and digest not in allowed:
            raise SwapError(
                f"plugin {candidate.name!r}: code hash sha256:{digest} is not in "
                "plugins.hot_swap.allowed_hashes",
                code=grpc.StatusCode.PERMISSION_DENIED,
            )
        return digest

    async def _load(self, request: SwapRequest) -> SwapResult:
        name = request.plugin
        record = self._manager.record(name)
        if record is not None and record.state == PluginState.SERVING:
            raise SwapError(f"plugin {name!r} is serving already; reload it instead")
        candidate = await self._candidate(name)
        assert candidate.manifest is not None
        digest = await self._checked_hash(candidate, request.expected_hash)
        problem = self._manager.unmet_requirement(name, candidate.manifest)
        if problem is not None:
            raise SwapError(f"cannot load plugin {name!r}: {problem}")
        started = time.perf_counter()
        record = self._manager.adopt(candidate)
        generation = await self._prepare(record, candidate, digest, fresh=True)
        await self._manager.install(record, generation)
        swapped = time.perf_counter() - started  # serving now; the indexes follow
        record.swap_error = ""
        await self._apply_indexes(name, generation)
        return SwapResult("load", (name,), digest, generation.number, swap_seconds=swapped)

    async def _reload(self, request: SwapRequest) -> _Outcome:
        name = request.plugin
        record = self._serving(name, "reload")
        candidate = await self._candidate(name)
        assert candidate.manifest is not None
        digest = await self._checked_hash(candidate, request.expected_hash)
        problem = self._manager.unmet_requirement(name, candidate.manifest)
        if problem is not None:
            raise SwapError(f"cannot reload plugin {name!r}: {problem}")
        self._check_dropped_services(name, record, candidate)
        started = time.perf_counter()
        generation = await self._prepare(record, candidate, digest, fresh=True, force=request.force)
        old = await self._manager.install(record, generation, replacing=True)
        swapped = time.perf_counter() - started
        self._manager.adopt(candidate)
        record.swap_error = ""
        await self._apply_indexes(name, generation)
        result = SwapResult("reload", (name,), digest, generation.number, swap_seconds=swapped)
        return _Outcome(result, [(name, old)] if old is not None else [])

    def _check_dropped_services(
        self, name: str, record: PluginRecord, candidate: Candidate
    ) -> None:
        """SwapError when the new version stops serving a service that another serving
        plugin requires: the reload would leave that plugin calling nothing."""
        assert candidate.manifest is not None
        dropped = set(record.services) - set(candidate.manifest.services)
        if not dropped:
            return
        needing = sorted(
            f"{other.name!r} ({', '.join(sorted(dropped.intersection(other.manifest.requires)))})"
            for other in self._manager.records()
            if other.name != name
            and other.state == PluginState.SERVING
            and other.manifest is not None
            and dropped.intersection(other.manifest.requires)
        )
        if needing:
            raise SwapError(
                f"cannot reload plugin {name!r}: the new version no longer serves services "
                f"required by {', '.join(needing)}; unload those plugins first"
            )

    async def _prepare(
        self,
        record: PluginRecord,
        candidate: Candidate,
        digest: str,
        *,
        fresh: bool,
        force: bool = False,
    ) -> Generation:
        try:
            generation = await self._manager.prepare(
                record, candidate, fresh=fresh, code=digest, force=force
            )
        except PrepareError as error:
            record.swap_error = error.reason
            _log.warning(
                "plugin %s: new version not loaded, %s: %s",
                record.name,
                "the old one serves on" if record.current else "nothing changed",
                error.reason,
                extra={"plugin": record.name},
            )
            raise SwapError(error.reason) from None
        return generation

    async def _apply_indexes(self, name: str, generation: Generation) -> None:
        """Build the indexes the new generation's contract declares (and retire those its
        types stopped declaring). Only its own types are given: the indexes of every
        other type are left alone (see :mod:`nexus_grpc.storage.indexes`). Under the
        swap lock, so a later swap's types are never applied before an earlier one's.
        A failure is a warning, not a failed swap: the new code serves already, and
        lists stay correct without an index, only slower."""
        if self._storage is None:
            return
        types, invalid = indexable_types(_message_types(generation))
        for descriptor, error in invalid:
            _log.warning(
                "plugin %s: storage indexes of %s not built: %s",
                name,
                descriptor.full_name,
                error,
                extra={"plugin": name},
            )
        try:
            await self._storage.apply_indexes(types, drop_delay=self._index_drop_delay)
        except Exception as error:  # any database failure: the swap is done regardless
            _log.warning(
                "plugin %s: the storage indexes its contract declares were not applied: %s: %s",
                name,
                type(error).__name__,
                error,
                extra={"plugin": name},
            )

    # -- unload ------------------------------------------------------------------------

    async def _unload(self, request: SwapRequest) -> _Outcome:
        name = request.plugin
        self._serving(name, "unload")
        order = self._unload_order(name, request.cascade)
        # Routes first, all of them, so no dependent calls a plugin being drained; the
        # drains and stop hooks follow, outside the swap lock.
        retiring = []
        for plugin in order:
            record = self._manager.record(plugin)
            assert record is not None and record.current is not None
            retiring.append((plugin, await self._manager.remove(record)))
        return _Outcome(SwapResult("unload", tuple(order)), retiring)

    def _unload_order(self, name: str, cascade: bool) -> list[str]:
        """``name`` after every serving plugin requiring it (transitively, when
        cascading); SwapError when some require it and ``cascade`` is off."""
        dependents = self._manager.dependents(name)
        if dependents and not cascade:
            raise SwapError(
                f"plugin {name!r} is required by {', '.join(repr(d) for d in dependents)}; "
                "unload them first, or unload with cascade to unload them too"
            )
        order: list[str] = []
        visiting: set[str] = set()

        def visit(plugin: str) -> None:
            # Plugins reloaded with new requirements may form a cycle: each once.
            if plugin in order or plugin in visiting:
                return
            visiting.add(plugin)
            for dependent in self._manager.dependents(plugin):
                visit(dependent)
            order.append(plugin)

        visit(name)
        return order

    # -- helpers -----------------------------------------------------------------------

    def _serving(self, name: str, operation: str) -> PluginRecord:
        record = self._manager.record(name)
        if record is None and self._manager.rediscover(name) is None:
            raise NotFoundError("plugin", name)
        if record is None or record.state != PluginState.SERVING or record.current is None:
            state = record.state.lower() if record is not None else "not loaded"
            raise SwapError(
                f"cannot {operation} plugin {name!r}: it is {state}"
                + ("; load it instead" if operation == "reload" else "")
            )
        return record

    def _drain_timeout(self, request: SwapRequest) -> float:
        if request.drain_timeout is None or request.drain_timeout <= 0:
            return self.settings.drain_timeout
        return min(request.drain_timeout, 3600.0)


def _report_retirement(task: asyncio.Task[int]) -> None:
    """Log a background retirement that failed (nobody awaits it)."""
    if not task.cancelled() and task.exception() is not None:
        _log.error("retiring an old plugin version failed", exc_info=task.exception())


def _message_types(generation: Generation) -> list[Descriptor]:
    """Every message type (nested ones too) of ``generation``'s contract files: those of
    its contract generation when it has one, else the default pool's modules of its
    contract (see :func:`~nexus_grpc.plugins._generation_parts.contract_modules`)."""
    files: dict[str, FileDescriptor] = {}
    for route in generation.routes:
        file = route.info.descriptor.containing_service.file
        files.setdefault(file.name, file)
    if generation.contract is not None:
        files.update((file.name, file) for file in generation.contract.files())
    else:
        for module_name in contract_modules(list(files.values())):
            module = sys.modules.get(module_name)
            imported = getattr(module, "DESCRIPTOR", None)
            if isinstance(imported, FileDescriptor):
                files.setdefault(imported.name, imported)
    found: list[Descriptor] = []
    pending = [m for name in sorted(files) for m in files[name].message_types_by_name.values()]
    while pending:
        descriptor = pending.pop(0)
        found.append(descriptor)
        pending[:0] = descriptor.nested_types
    return found
