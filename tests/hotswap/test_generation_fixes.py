"""Regression tests of contract generations: the service bound from the file declaring
it, a contract's files in other folders, bindings serialized, reflection answering a
file from the pool of the plugin serving it."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2
from grpc_reflection.v1alpha import reflection_pb2

from nexus_grpc.plugins._generation_parts import HOST_CONTRACT_FOLDERS
from nexus_grpc.plugins.generations import GenerationError, contract_modules, load_generation
from nexus_grpc.routing import InFlight, Router
from nexus_grpc.transport.reflection import ReflectionServicer
from nexus_grpc.transport.servicers import ServiceBinding, bind_servicer, build_routes
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SWAP_PB2

generated = support.generated
clean_modules = support.clean_modules

pytestmark = pytest.mark.usefixtures("clean_modules")

NOTES_PB2 = "gencommon.notes.v1.notes_pb2"
TYPES_PB2 = "gencommon.common.v1.types_pb2"


def test_the_service_is_bound_from_the_file_declaring_it(
    generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    importlib.import_module(SWAP_PB2)  # v1 in the default pool, as a first load leaves it
    new = load_generation([SWAP_PB2], label="swap@2", search=[generated["v2"]])
    grpc_module = new.module(SWAP_PB2 + "_grpc")
    # A well-known type imported first, as protoc orders `empty_pb2` before the
    # contract's own module: its pool (the default one) holds v1 of the service.
    namespace = grpc_module.__dict__
    rest = dict(namespace)
    namespace.clear()
    namespace["google_dot_protobuf_dot_empty__pb2"] = empty_pb2
    namespace.update(rest)

    class Servicer(grpc_module.SwapServiceServicer):  # type: ignore[misc, name-defined]
        pass

    [binding] = bind_servicer(Servicer())
    assert binding.descriptor.file.pool is new.pool
    assert sorted(binding.descriptor.methods_by_name) == ["GetItem", "PutItem"]


def _stubs_of(version: Path, into: Path) -> None:
    shutil.rmtree(into / "gencommon", ignore_errors=True)
    shutil.copytree(version / "gencommon", into / "gencommon")


def test_a_changed_file_in_another_folder_of_the_contract_is_upgraded(
    generated: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs = tmp_path / "stubs"
    _stubs_of(generated["common_v1"], stubs)
    monkeypatch.syspath_prepend(str(stubs))
    notes = importlib.import_module(NOTES_PB2)
    _stubs_of(generated["common_v2"], stubs)

    modules = contract_modules([notes.DESCRIPTOR], search=[stubs])
    assert modules == [TYPES_PB2, NOTES_PB2]
    new = load_generation(modules, label="notes@2", search=[stubs])
    assert new.differs_from([notes.DESCRIPTOR, notes.DESCRIPTOR.dependencies[0]])
    label = new.pool.FindMessageTypeByName("gencommon.common.v1.Label")
    assert sorted(label.fields_by_name) == ["colour", "text"]
    note = new.pool.FindMessageTypeByName("gencommon.notes.v1.Note")
    assert note.fields_by_name["label"].message_type is label
    new.release()


def test_a_dependency_changed_on_disk_but_not_taken_along_is_an_error(
    generated: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs = tmp_path / "stubs"
    _stubs_of(generated["common_v1"], stubs)
    monkeypatch.syspath_prepend(str(stubs))
    importlib.import_module(NOTES_PB2)
    _stubs_of(generated["common_v2"], stubs)
    # Named alone, the notes module imports the running types module: whose file on
    # disk is another now, so copying the loaded one would keep it at v1 silently.
    with pytest.raises(GenerationError, match=r"types\.proto changed on disk"):
        load_generation([NOTES_PB2], label="notes@2", search=[stubs])


def test_bindings_do_not_nest_and_wait_for_each_other(
    generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    importlib.import_module(SWAP_PB2)
    first = load_generation([SWAP_PB2], label="swap@2", search=[generated["v2"]])
    second = load_generation([SWAP_PB2], label="swap@3", search=[generated["v3"]])
    entered: list[float] = []

    def bind_second() -> None:
        with second.binding():
            entered.append(time.monotonic())

    with first.binding():
        with pytest.raises(GenerationError, match="do not nest"), second.binding():
            pass
        other = threading.Thread(target=bind_second)
        other.start()
        time.sleep(0.3)
        assert entered == []  # waiting for this binding to end
        left = time.monotonic()
    other.join(10)
    assert len(entered) == 1 and entered[0] >= left
    assert sys.modules[SWAP_PB2] is second.modules[SWAP_PB2]
    second.release()
    first.release()


def _file(name: str, package: str, fields: list[str], service: str = "") -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    message = proto.message_type.add(name="Thing")
    for number, field in enumerate(fields, 1):
        message.field.add(
            name=field,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    if service:
        method = proto.service.add(name=service).method.add(name="Get")
        method.input_type = method.output_type = ".shared.v1.Thing"
    return proto.SerializeToString()


def _routes(pool: descriptor_pool.DescriptorPool, service: str, plugin: str) -> list[Any]:
    descriptor = pool.FindServiceByName(service)

    async def get(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(get)
    binding = ServiceBinding(descriptor, object(), object, {"Get": handler})
    return build_routes(binding, plugin=plugin, stages=[], in_flight=InFlight())


def test_reflection_answers_a_file_from_the_pool_of_the_plugin_serving_it() -> None:
    # Plugin "a" serves shared/v1/shared.proto (version two, field `b` added);
    # plugin "b"'s generation pool holds a byte copy of version one, as a contract
    # importing it keeps, and its routes are the newest.
    pool_a = descriptor_pool.DescriptorPool()
    pool_a.AddSerializedFile(_file("shared/v1/shared.proto", "shared.v1", ["a", "b"], "AService"))
    pool_b = descriptor_pool.DescriptorPool()
    pool_b.AddSerializedFile(_file("shared/v1/shared.proto", "shared.v1", ["a"], "AService"))
    user = descriptor_pb2.FileDescriptorProto(
        name="user/v1/user.proto",
        package="user.v1",
        syntax="proto3",
        dependency=["shared/v1/shared.proto"],
    )
    method = user.service.add(name="BService").method.add(name="Get")
    method.input_type = method.output_type = ".shared.v1.Thing"
    pool_b.AddSerializedFile(user.SerializeToString())
    router = Router()
    router.add(_routes(pool_a, "shared.v1.AService", "a"))
    router.add(_routes(pool_b, "user.v1.BService", "b"))
    reflection = ReflectionServicer(router)

    def thing_fields(request: reflection_pb2.ServerReflectionRequest) -> list[str]:
        answer = reflection._answer(request, set())
        [data, *_] = answer.file_descriptor_response.file_descriptor_proto
        file = descriptor_pb2.FileDescriptorProto.FromString(data)
        assert file.name == "shared/v1/shared.proto"
        return [field.name for field in file.message_type[0].field]

    by_name = reflection_pb2.ServerReflectionRequest(file_by_filename="shared/v1/shared.proto")
    by_symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="shared.v1.Thing")
    assert thing_fields(by_name) == ["a", "b"]
    assert thing_fields(by_symbol) == ["a", "b"]


def test_a_bundled_plugins_contract_leaves_the_host_and_library_files_alone(
    tmp_path: Path,
) -> None:
    # An installed wheel: the orders contract, the host's options and protobuf's and
    # googleapis' files in one root (site-packages). Only the orders files are its own;
    # the others stay the host's modules through a swap.
    import google.protobuf
    from google.protobuf import timestamp_pb2
    from nexus.options.v1 import options_pb2
    from nexus.orders.v1 import orders_pb2

    root = tmp_path / "site-packages"
    root.mkdir()
    (root / "nexus").symlink_to(Path(options_pb2.__file__).parents[2])
    (root / "google").symlink_to(Path(google.protobuf.__file__).parents[1])
    modules = contract_modules([orders_pb2.DESCRIPTOR], search=[root])
    assert modules == ["nexus.orders.v1.events_pb2", "nexus.orders.v1.orders_pb2"]
    new = load_generation(modules, label="orders@2", search=[root])
    try:
        assert sorted(new.own_files) == [
            "nexus/orders/v1/events.proto",
            "nexus/orders/v1/orders.proto",
        ]
        # Copied into its pool, byte for byte, like any file it does not own.
        copied = new.pool.FindFileByName("nexus/options/v1/options.proto")
        assert copied.serialized_pb == options_pb2.DESCRIPTOR.serialized_pb
        with new.binding():
            assert sys.modules["nexus.options.v1.options_pb2"] is options_pb2
        assert sys.modules["nexus.orders.v1.orders_pb2"] is new.module("nexus.orders.v1.orders_pb2")
        assert sys.modules["google.protobuf.timestamp_pb2"] is timestamp_pb2
    finally:
        new.restore()
        new.release()
    assert sys.modules["nexus.options.v1.options_pb2"] is options_pb2
    assert sys.modules["google.protobuf.timestamp_pb2"] is timestamp_pb2
    assert sys.modules["nexus.orders.v1.orders_pb2"] is orders_pb2


def test_the_host_contract_folders_are_the_contracts_the_host_imports() -> None:
    # In a fresh interpreter: every module of nexus_grpc imported, then the generated
    # nexus modules that came with them.
    script = (
        "import importlib, pkgutil, sys, nexus_grpc\n"
        "for info in pkgutil.walk_packages(nexus_grpc.__path__, 'nexus_grpc.'):\n"
        "    if not info.name.startswith('nexus_grpc.bundled.'):  # plugins (a wheel's)\n"
        "        importlib.import_module(info.name)\n"
        "print(' '.join(sorted({n.rpartition('.')[0].replace('.', '/') for n in sys.modules"
        " if n.startswith('nexus.') and n.endswith('_pb2')})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert set(done.stdout.split()) == HOST_CONTRACT_FOLDERS
