"""Which contract a new plugin generation is imported with.

A plugin whose ``.proto`` files did not change since the running version is imported
the ordinary way: its stubs are the modules already imported. A changed contract
cannot be imported the ordinary way (the default descriptor pool refuses a changed
file of the same name), so it is loaded into a contract generation of its own
(:mod:`nexus_grpc.plugins.generations`), checked against the running version's files
for changes that break its clients (:func:`~nexus_grpc.plugins.upgrade.check_upgrade`;
refused unless forced, with the changes listed), and the plugin's code is imported
inside its binding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.descriptor_pool import DescriptorPool

from nexus_grpc.plugins._generation_parts import module_sources, serialized_on_disk
from nexus_grpc.plugins.generations import (
    Generation,
    GenerationError,
    contract_modules,
    load_generation,
)
from nexus_grpc.plugins.loader import PluginError
from nexus_grpc.plugins.upgrade import check_upgrade

__all__ = ["BreakingContractError", "upgrade_contract"]


class BreakingContractError(PluginError):
    """The new contract breaks the running one's clients and the swap was not forced."""

    def __init__(self, plugin: str, changes: Sequence[str]) -> None:
        listed = "; ".join(changes)
        super().__init__(
            f"plugin {plugin!r}: the new contract breaks clients of the running one "
            f"({len(changes)} breaking change(s): {listed}); reload with force "
            "(`nexus plugins reload --force`) to accept them"
        )
        self.changes = list(changes)


def _as_running(generation: Generation, running: Sequence[FileDescriptor]) -> list[FileDescriptor]:
    """The running version of each of ``generation``'s own files (the files its
    services do not import, events say, included), from the running files' pools."""
    pools = list({id(file.pool): file.pool for file in running}.values())
    found = {file.name: file for file in running}
    for name in generation.own_files:
        if name in found:
            continue
        for pool in pools:
            try:
                found[name] = pool.FindFileByName(name)
                break
            except KeyError:
                continue
    return list(found.values())


def _same_on_disk(modules: Sequence[str], pools: Sequence[DescriptorPool]) -> bool:
    """Whether the generated modules on disk hold exactly files ``pools`` hold: the
    usual reload, told apart without building a pool (which costs milliseconds)."""
    for source in module_sources(modules).values():
        data = serialized_on_disk(source)
        if data is None:
            return False
        name = FileDescriptorProto.FromString(data).name
        for pool in pools:
            try:
                if bytes(pool.FindFileByName(name).serialized_pb) == data:
                    break
            except KeyError:
                continue
        else:
            return False
    return True


async def upgrade_contract(
    plugin: str,
    number: int,
    *,
    running: Sequence[FileDescriptor],
    known: Sequence[str] = (),
    force: bool = False,
) -> Generation | None:
    """The contract generation generation ``number`` of ``plugin`` needs, or None.

    ``running`` are the serving version's contract files (its services' files); when
    the contract on disk is the same, None. ``known`` names the files of a version
    that was unloaded: loading the plugin again needs a generation only when the
    default pool holds one of them with other bytes. BreakingContractError when the
    new contract breaks the running one and ``force`` is off; PluginError when it
    cannot be loaded.
    """
    names: list[str | FileDescriptor] = [*running, *known]
    if not names:
        return None
    label = f"{plugin}@{number}"
    try:
        modules = contract_modules(names)
        # Running here: the serving version's pools; after an unload: the default pool.
        pools = list({id(f.pool): f.pool for f in running}.values()) or [descriptor_pool.Default()]
        if not modules or _same_on_disk(modules, pools):
            return None
        generation = load_generation(modules, label=label)
    except GenerationError as error:
        raise PluginError(f"plugin {plugin!r}: its contract cannot be loaded: {error}") from None
    if not running:
        if generation.conflicts_with_default():
            return generation
        generation.release()
        return None
    before = _as_running(generation, running)
    if not generation.differs_from(before):
        generation.release()
        return None
    # buf runs as a subprocess: off the loop.
    changes = await asyncio.to_thread(check_upgrade, before, generation.files())
    if changes and not force:
        generation.release()
        raise BreakingContractError(plugin, changes)
    return generation
