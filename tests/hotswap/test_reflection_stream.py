"""One reflection stream, opened before a contract upgrade, used after it.

Reflection sends each file once per stream (clients cache them). After an upgrade a
file of the same name is another file: a client asking on its old stream for a type
of the new version must get the upgraded file, not only the files it never saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nexus_grpc.testing import RunningHost, running_host
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SERVICE
from tests.hotswap.test_generations_host import _plugin_folder, _upgrade

# The shared fixtures, by name.
generated = support.generated
clean_modules = support.clean_modules

pytestmark = pytest.mark.usefixtures("clean_modules")

ITEMS = "genswap/items/v1/items.proto"
TAGS = "genswap/items/v1/tags.proto"


@pytest.fixture
async def host_v1(
    tmp_path: Path, generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningHost]:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    plugins = _plugin_folder(tmp_path, "v1", put_item=False)
    async with running_host(plugins=["swap"], plugin_dirs=[plugins], data_dir=tmp_path) as host:
        yield host


async def _ask(
    call: grpc.aio.StreamStreamCall[
        reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    ],
    symbol: str,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files one request on the open stream brings back, by name."""
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    response = await call.read()
    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    assert not response.HasField("error_response"), response.error_response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in response.file_descriptor_response.file_descriptor_proto
    ]
    return {file.name: file for file in files}


def _item_fields(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    [item] = [message for message in file.message_type if message.name == "Item"]
    return [field.name for field in item.field]


async def test_a_stream_opened_before_an_upgrade_gets_the_upgraded_file(
    host_v1: RunningHost, tmp_path: Path, generated: dict[str, Path]
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(host_v1.channel())
    call = stub.ServerReflectionInfo()
    try:
        first = await _ask(call, SERVICE)
        assert ITEMS in first and TAGS not in first
        assert "tags" not in _item_fields(first[ITEMS])
        # Asked again before any change: the file it has, sent again as asked, once.
        again = await _ask(call, "genswap.items.v1.Item")
        assert list(again) == [ITEMS]

        generation = _upgrade(
            host_v1, _plugin_folder(tmp_path, "v3", put_item=True), generated["v3"]
        )
        try:
            after = await _ask(call, "genswap.items.v1.Item")
            # The new dependency and the upgraded file that needs it, both on this stream.
            assert TAGS in after, list(after)
            assert ITEMS in after, list(after)
            assert "tags" in _item_fields(after[ITEMS])
            assert "genswap/items/v1/tags.proto" in after[ITEMS].dependency
            # Files that did not change are not sent again.
            assert "google/protobuf/timestamp.proto" not in after
        finally:
            host_v1.host.router.remove_plugin("swap")
            generation.release()
    finally:
        await call.done_writing()
        call.cancel()
