"""Two versions of one contract, imported as two generations in one process."""

from __future__ import annotations

import gc
import subprocess
import sys
import types
import weakref
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, symbol_database, timestamp_pb2

from nexus_grpc.access.policy import Access, effective_policy
from nexus_grpc.access.validation import compile_validator
from nexus_grpc.events import Delivery, seal, subscribe, subscriptions_of
from nexus_grpc.events import envelope as envelope_module
from nexus_grpc.events.envelope import open_envelope
from nexus_grpc.plugins.generations import (
    Generation,
    GenerationError,
    contract_modules,
    load_generation,
    module_name_of,
)
from nexus_grpc.plugins.upgrade import check_upgrade
from nexus_grpc.transport.servicers import bind_servicer
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SERVICE, SWAP_PB2

# The shared fixtures, by name.
generated = support.generated
clean_modules = support.clean_modules

pytestmark = pytest.mark.usefixtures("clean_modules")


def _load(generated: dict[str, Path], version: str) -> Generation:
    return load_generation([SWAP_PB2], label=f"swap@{version}", search=[generated[version]])


def _pb2(generation: Generation) -> Any:
    return generation.modules[SWAP_PB2]


def _pb2_grpc(generation: Generation) -> Any:
    return generation.modules[SWAP_PB2 + "_grpc"]


def test_module_names_follow_protoc() -> None:
    assert module_name_of("genswap/items/v1/items.proto") == SWAP_PB2
    assert module_name_of("a/b-c.proto", grpc=True) == "a.b_c_pb2_grpc"


def test_two_generations_parse_and_serialize_independently(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    assert old.pool is not new.pool
    assert old.own_files == new.own_files == ["genswap/items/v1/items.proto"]
    assert sorted(new.modules) == [SWAP_PB2, SWAP_PB2 + "_grpc"]
    old_item, new_item = _pb2(old).Item, _pb2(new).Item
    assert old_item is not new_item
    assert "size" not in old_item.DESCRIPTOR.fields_by_name
    wire = new_item(id="a", name="box", size=7).SerializeToString()
    # The old version keeps what it does not know and writes it back.
    parsed_old = old_item.FromString(wire)
    assert (parsed_old.id, parsed_old.name) == ("a", "box")
    back = new_item.FromString(parsed_old.SerializeToString())
    assert back.size == 7
    # The new version's types did not reach the default pool.
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("genswap.items.v1.PutItemRequest")


def test_generated_grpc_module_uses_its_own_generation(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    assert hasattr(_pb2_grpc(new).SwapServiceServicer, "PutItem")
    assert not hasattr(_pb2_grpc(old).SwapServiceServicer, "PutItem")
    referenced = [
        value
        for value in vars(_pb2_grpc(new)).values()
        if isinstance(value, types.ModuleType) and value.__name__ == SWAP_PB2
    ]
    assert referenced == [_pb2(new)]


def test_policies_are_read_from_each_generation(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    old_service = old.pool.FindServiceByName(SERVICE)
    new_service = new.pool.FindServiceByName(SERVICE)
    assert effective_policy(old_service.methods_by_name["GetItem"]).access == Access.PUBLIC
    assert effective_policy(new_service.methods_by_name["GetItem"]).access == Access.PUBLIC
    put = effective_policy(new_service.methods_by_name["PutItem"])
    assert (put.access, put.source) == (Access.AUTHENTICATED, "method")
    assert "PutItem" not in old_service.methods_by_name


def test_validation_rules_are_read_from_each_generation(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    validate_old = compile_validator(_pb2(old).GetItemRequest.DESCRIPTOR)
    validate_new = compile_validator(_pb2(new).GetItemRequest.DESCRIPTOR)
    assert validate_old is not None and validate_new is not None
    twelve = "abcdefghijkl"
    # max_len is 8 in v1 and 16 in v2: neither version sees the other's rule.
    assert [v.field for v in validate_old(_pb2(old).GetItemRequest(id=twelve))] == ["id"]
    assert validate_new(_pb2(new).GetItemRequest(id=twelve)) == []
    assert [v.description for v in validate_new(_pb2(new).GetItemRequest())] == ["required"]
    validate_put = compile_validator(_pb2(new).PutItemRequest.DESCRIPTOR)
    assert validate_put is not None
    assert [v.field for v in validate_put(_pb2(new).PutItemRequest())] == ["item"]


def test_servicers_bind_their_own_generation(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")

    class OldServicer(_pb2_grpc(old).SwapServiceServicer):  # type: ignore[misc,name-defined]
        async def GetItem(self, request: Any, context: Any) -> Any:
            return _pb2(old).Item(id=request.id)

    class NewServicer(_pb2_grpc(new).SwapServiceServicer):  # type: ignore[misc,name-defined]
        async def GetItem(self, request: Any, context: Any) -> Any:
            return _pb2(new).Item(id=request.id, size=1)

    # The newest generation's modules are the ones import finds; the old servicer must
    # still bind its own.
    new.install()
    [old_binding] = bind_servicer(OldServicer())
    [new_binding] = bind_servicer(NewServicer())
    assert old_binding.descriptor.file.pool is old.pool
    assert new_binding.descriptor.file.pool is new.pool
    assert sorted(old_binding.handlers) == ["GetItem"]
    assert sorted(new_binding.handlers) == ["GetItem", "PutItem"]
    parse_old = old_binding.handlers["GetItem"].request_deserializer
    assert parse_old is not None
    assert type(parse_old(b"")) is _pb2(old).GetItemRequest


def test_binding_shows_the_plugin_its_generation_and_restores_dependencies(
    generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    from genswap.items.v1 import items_pb2 as first  # the running version, default pool

    new = _load(generated, "v2")
    host_timestamp = sys.modules["google.protobuf.timestamp_pb2"]
    with new.binding():
        from genswap.items.v1 import items_pb2 as bound
        from google.protobuf import timestamp_pb2 as during

        assert bound is _pb2(new)
        # The copy of Timestamp the generation's messages hold: plugin code built with
        # it at import time works.
        item = bound.Item(created=during.Timestamp(seconds=3))
        assert item.created.seconds == 3
        assert during is not host_timestamp
    from genswap.items.v1 import items_pb2 as after

    assert after is _pb2(new)
    assert sys.modules["google.protobuf.timestamp_pb2"] is host_timestamp
    assert timestamp_pb2.Timestamp.DESCRIPTOR.file.pool is descriptor_pool.Default()
    assert first.Item is not after.Item


def test_a_failed_binding_leaves_the_running_modules(
    generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    from genswap.items.v1 import items_pb2 as running

    new = _load(generated, "v2")
    with pytest.raises(RuntimeError, match="start hook"), new.binding():
        raise RuntimeError("start hook failed")
    from genswap.items.v1 import items_pb2 as after

    assert after is running
    assert sys.modules[SWAP_PB2] is running


def test_a_missing_module_names_itself(generated: dict[str, Path]) -> None:
    with pytest.raises(GenerationError, match=r"genswap\.items\.v1\.gone_pb2 not found"):
        load_generation(["genswap.items.v1.gone_pb2"], label="swap@x", search=[generated["v2"]])


def test_an_event_crosses_generations_by_name(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    published = _pb2(new).ItemChanged(id="a", reason="resized")
    envelope = seal(published, source="swap")
    # An old consumer: its own class, the new field kept as an unknown field.
    as_old = open_envelope(envelope, into=_pb2(old).ItemChanged)
    assert type(as_old) is _pb2(old).ItemChanged
    assert as_old.id == "a"
    again = _pb2(new).ItemChanged.FromString(as_old.SerializeToString())
    assert again.reason == "resized"
    # A new consumer of an old publisher: the missing field reads as its default.
    as_new = open_envelope(
        seal(_pb2(old).ItemChanged(id="b"), source="swap"), into=_pb2(new).ItemChanged
    )
    assert (as_new.id, as_new.reason) == ("b", "")
    with pytest.raises(ValueError, match=r"not a genswap\.items\.v1\.Item"):
        open_envelope(envelope, into=_pb2(new).Item)


def test_the_bus_opens_types_only_a_generation_has(generated: dict[str, Path]) -> None:
    new = _load(generated, "v2")
    # PutItemRequest stands for an event type the upgrade added: only v2 has it.
    envelope = seal(_pb2(new).PutItemRequest(item=_pb2(new).Item(id="a")), source="swap")
    with pytest.raises(ValueError, match="unknown event type"):
        open_envelope(envelope)
    new.install()
    try:
        opened = open_envelope(envelope)
        assert type(opened) is _pb2(new).PutItemRequest
        assert opened.item.id == "a"
    finally:
        new.release()
    assert not any(pool is new.pool for pool in envelope_module._event_pools)


async def test_a_subscriber_gets_events_in_its_own_class(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    received: list[Any] = []
    changed = _pb2(new).ItemChanged

    class Projection:
        @subscribe(changed)
        async def on_changed(self, event: Any, delivery: Delivery) -> None:
            received.append(event)

    [(event_type, handler)] = subscriptions_of(Projection()).items()
    assert event_type == "genswap.items.v1.ItemChanged"
    envelope = seal(_pb2(new).ItemChanged(id="a", reason="r"), source="swap")
    # What a bus that opened the envelope with the first version's class hands over.
    await handler(open_envelope(envelope, into=_pb2(old).ItemChanged), Delivery(envelope, "g", 1))
    assert type(received[0]) is changed
    assert received[0].reason == "r"


def test_dropped_generations_are_freed(generated: dict[str, Path]) -> None:
    """100 generations loaded, bound and released: nothing of them stays alive."""
    modules_before = set(sys.modules)
    pools_before = len(envelope_module._event_pools)
    alive: list[weakref.ref[Any]] = []
    for number in range(100):
        generation = load_generation([SWAP_PB2], label=f"swap@{number}", search=[generated["v1"]])
        with generation.binding():
            copy = sys.modules["google.protobuf.timestamp_pb2"]  # the generation's copy
            item = generation.modules[SWAP_PB2].Item(created=copy.Timestamp(seconds=1))
        alive += [
            weakref.ref(generation),
            weakref.ref(generation.modules[SWAP_PB2]),
            weakref.ref(type(item)),
            weakref.ref(type(item.created)),
        ]
        generation.release()
        del generation, item, copy
    gc.collect()
    assert [ref for ref in alive if ref() is not None] == []
    assert set(sys.modules) - modules_before <= {"genswap", "genswap.items", "genswap.items.v1"}
    assert len(envelope_module._event_pools) == pools_before
    # The host's own classes stay registered.
    timestamp = symbol_database.Default().GetSymbol("google.protobuf.Timestamp")
    assert timestamp is timestamp_pb2.Timestamp


def test_generations_loaded_after_nexus_serve_froze_its_imports_are_still_freed(
    generated: dict[str, Path],
) -> None:
    # nexus serve freezes what it imported before any plugin (nexus_grpc/heap.py):
    # frozen objects are never collected, and a generation must be.
    from nexus_grpc.heap import freeze_imported

    try:
        # Why before: a generation alive when the freeze is taken outlives its release.
        early = _load(generated, "v1")
        kept = weakref.ref(early.modules[SWAP_PB2])
        assert freeze_imported() > 0
        early.release()
        del early
        gc.collect()
        assert kept() is not None
        gc.unfreeze()
        gc.collect()
        assert kept() is None

        assert freeze_imported() > 0
        alive: list[weakref.ref[Any]] = []
        for number in range(3):
            generation = _load(generated, "v1") if number % 2 == 0 else _load(generated, "v2")
            alive += [weakref.ref(generation), weakref.ref(generation.modules[SWAP_PB2])]
            generation.release()
            del generation
        gc.collect()
        assert [ref for ref in alive if ref() is not None] == []
    finally:
        gc.unfreeze()


def test_what_nexus_serve_freezes_holds_no_plugin_code() -> None:
    # nexus serve freezes after importing these two modules (nexus_grpc/cli/serve.py):
    # plugin code or a plugin's contract imported by them would never be freed by a swap.
    probe = (
        "import sys, nexus_grpc.host, nexus_grpc.supervisor.worker\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    plugin_code = ("nexus_plugins", "nexus_grpc.bundled", "plugins.", "nexus.orders")
    plugin_code += ("nexus.inventory", "nexus.auth")
    loaded = [name for name in done.stdout.split() if name.startswith(plugin_code)]
    assert loaded == []


def test_a_contract_file_the_upgrade_added_joins_the_generation(
    generated: dict[str, Path],
) -> None:
    old, new = _load(generated, "v2"), _load(generated, "v3")
    assert new.own_files == ["genswap/items/v1/tags.proto", "genswap/items/v1/items.proto"]
    assert "genswap.items.v1.tags_pb2" in new.modules
    tags = new.modules["genswap.items.v1.tags_pb2"].Tags
    item = _pb2(new).Item(tags=tags(labels=["red"]))
    assert list(item.tags.labels) == ["red"]
    assert check_upgrade(old.files(), new.files()) == []
    # google.protobuf's modules are never the generation's own.
    assert all(name.startswith("genswap.") for name in new.modules)


def test_restore_undoes_an_upgrade_after_its_import(
    generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    from genswap.items.v1 import items_pb2 as running

    new = _load(generated, "v2")
    with new.binding():
        pass
    assert sys.modules[SWAP_PB2] is _pb2(new)
    assert any(pool is new.pool for pool in envelope_module._event_pools)
    # The start hook failed, say: the running version's modules come back.
    new.restore()
    from genswap.items.v1 import items_pb2 as after

    assert after is running
    assert not any(pool is new.pool for pool in envelope_module._event_pools)


def test_contract_modules_are_the_folders_generated_modules(generated: dict[str, Path]) -> None:
    files = ["genswap/items/v1/items.proto"]
    assert contract_modules(files, [generated["v3"]]) == [SWAP_PB2, "genswap.items.v1.tags_pb2"]
    assert contract_modules(files, [generated["v1"]]) == [SWAP_PB2]
    assert contract_modules(["elsewhere/x.proto"], [generated["v1"]]) == []


def test_an_unchanged_contract_is_told_apart(generated: dict[str, Path]) -> None:
    first, again, new = _load(generated, "v1"), _load(generated, "v1"), _load(generated, "v2")
    assert not again.differs_from(first.files())
    assert new.differs_from(first.files())


def test_a_contract_changed_since_the_default_pool_took_it_conflicts(
    generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    import genswap.items.v1.items_pb2  # noqa: F401  (v1 in the default pool)

    assert not _load(generated, "v1").conflicts_with_default()
    assert _load(generated, "v2").conflicts_with_default()
