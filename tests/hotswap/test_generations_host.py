"""A running host upgraded to a changed contract: grpcurl, calls in flight, new rules.

The upgrade is done here step by step as the plugin manager does it for a changed
contract: the new contract into a generation, the breaking-change check, the plugin's
code imported again inside the generation's binding, routes built from the new
servicer, the routing table swapped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nexus_grpc.plugins.discovery import discover
from nexus_grpc.plugins.generations import Generation, load_generation
from nexus_grpc.plugins.loader import import_plugin
from nexus_grpc.plugins.upgrade import check_upgrade
from nexus_grpc.testing import RunningHost, running_host
from nexus_grpc.transport.servicers import bind_servicer, build_routes, construct_servicer
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SERVICE, SWAP_PB2

# The shared fixtures, by name.
generated = support.generated
clean_modules = support.clean_modules

pytestmark = pytest.mark.usefixtures("clean_modules")

MANIFEST = """\
name = "swap"
version = "{version}"
category = "business"
description = "Items, for the contract upgrade tests."
services = ["genswap.items.v1.SwapService"]
"""

CODE = '''\
"""The swap plugin, {version}."""

import asyncio
from typing import Any

from google.protobuf import timestamp_pb2
from genswap.items.v1 import items_pb2, items_pb2_grpc

from nexus_grpc import Plugin


class SwapService(items_pb2_grpc.SwapServiceServicer):
    #: Set by the test to hold a call in flight across an upgrade.
    gate: asyncio.Event | None = None

    async def GetItem(self, request: Any, context: Any) -> Any:
        if request.id == "hold" and self.gate is not None:
            await self.gate.wait()
        return items_pb2.Item(
            id=request.id, name="{version}", created=timestamp_pb2.Timestamp(seconds=1)
        )
{extra}

plugin = Plugin(services=[SwapService])
'''

PUT_ITEM = """
    async def PutItem(self, request: Any, context: Any) -> Any:
        item = items_pb2.Item()
        item.CopyFrom(request.item)
        item.name = "{version}"
        item.created.CopyFrom(timestamp_pb2.Timestamp(seconds=2))
        return item
"""


def _plugin_folder(root: Path, version: str, *, put_item: bool) -> Path:
    folder = root / f"plugins-{version}"
    (folder / "swap").mkdir(parents=True)
    (folder / "swap" / "manifest.toml").write_text(MANIFEST.format(version=version))
    extra = PUT_ITEM.format(version=version) if put_item else ""
    (folder / "swap" / "__init__.py").write_text(CODE.format(version=version, extra=extra))
    return folder


def _grpcurl() -> str:
    found = shutil.which(str(Path(sys.executable).parent / "grpcurl")) or shutil.which("grpcurl")
    if found is None:
        message = "grpcurl is not installed: run scripts/bootstrap --dev"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


async def _grpcurl_run(running: RunningHost, *args: str) -> tuple[int, str]:
    # Asynchronously: the host answers on this very event loop.
    process = await asyncio.create_subprocess_exec(
        _grpcurl(),
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode()


def _describe(running: RunningHost, symbol: str) -> Any:
    return _grpcurl_run(running, running.address, "describe", symbol)


async def _v1alpha_methods(channel: grpc.aio.Channel) -> list[str]:
    """Methods of the service as reflection v1alpha describes it."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    async for response in stub.ServerReflectionInfo(iter([request])):
        for data in response.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(data)
            for service in file.service:
                if f"{file.package}.{service.name}" == SERVICE:
                    return [method.name for method in service.method]
    return []


def _upgrade(running: RunningHost, plugins: Path, generated_root: Path) -> Generation:
    """Upgrade plugin ``swap`` to the code in ``plugins`` and the contract in ``generated_root``."""
    host = running.host
    record = host.plugins.record("swap")
    assert record is not None and record.context is not None
    running_files = {
        route.info.descriptor.containing_service.file.name: route.info.descriptor.containing_service.file
        for route in host.router.table.routes.values()
        if route.plugin == "swap"
    }
    generation = load_generation([SWAP_PB2], label="swap@2", search=[generated_root])
    assert check_upgrade(list(running_files.values()), generation.files()) == []
    [candidate] = discover([plugins], entry_points=False)
    with generation.binding():
        loaded = import_plugin(candidate)
    routes = []
    for cls in loaded.plugin.services:
        for binding in bind_servicer(construct_servicer(cls, record.context)):
            routes.extend(
                build_routes(
                    binding,
                    plugin="swap",
                    stages=host._stages,
                    in_flight=record.in_flight,
                    category="business",
                )
            )
    host.router.remove_plugin("swap")
    host.router.add(routes)
    return generation


@pytest.fixture
async def host_v1(
    tmp_path: Path, generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningHost]:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    plugins = _plugin_folder(tmp_path, "v1", put_item=False)
    async with running_host(
        plugins=["swap"], plugin_dirs=[plugins], data_dir=tmp_path, http=True
    ) as host:
        yield host


async def test_an_upgrade_serves_the_new_contract_live(
    host_v1: RunningHost, tmp_path: Path, generated: dict[str, Path]
) -> None:
    code, before = await _describe(host_v1, SERVICE)
    assert code == 0, before
    assert "GetItem" in before and "PutItem" not in before

    from genswap.items.v1 import items_pb2, items_pb2_grpc  # the running version's stubs

    channel = host_v1.channel()
    assert await _v1alpha_methods(channel) == ["GetItem"]
    stub = items_pb2_grpc.SwapServiceStub(channel)
    twelve = "abcdefghijkl"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetItem(items_pb2.GetItemRequest(id=twelve))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A call that started on v1 and is still running when the upgrade lands.
    record = host_v1.host.plugins.record("swap")
    assert record is not None and record.loaded is not None
    gate = asyncio.Event()
    record.loaded.plugin.services[0].gate = gate  # type: ignore[attr-defined]
    held = await support.hold_a_call(record, stub.GetItem(items_pb2.GetItemRequest(id="hold")))

    plugins_v2 = _plugin_folder(tmp_path, "v2", put_item=True)
    generation = _upgrade(host_v1, plugins_v2, generated["v2"])

    # grpcurl, a new process asking reflection afresh, sees the new method and field.
    code, after = await _describe(host_v1, SERVICE)
    assert code == 0, after
    assert "PutItem" in after
    code, item = await _describe(host_v1, "genswap.items.v1.Item")
    assert code == 0 and "size = 4" in item, item
    # Reflection v1alpha, on the channel opened before the upgrade, answers the same.
    assert "PutItem" in await _v1alpha_methods(channel)
    # The new method, called by grpcurl from reflection alone.
    code, output = await _grpcurl_run(
        host_v1,
        "-H",
        f"authorization: Bearer {host_v1.token()}",
        "-d",
        json.dumps({"item": {"id": "a", "size": 3}}),
        host_v1.address,
        f"{SERVICE}/PutItem",
    )
    assert code == 0, output
    put = json.loads(output)
    assert (put["id"], put["name"], put["size"]) == ("a", "v2", 3)
    # Its policy came with it: authenticated, so no token is refused.
    code, output = await _grpcurl_run(host_v1, "-d", "{}", host_v1.address, f"{SERVICE}/PutItem")
    assert code != 0 and "Unauthenticated" in output, output
    # New calls run the new code under the new rules (max_len 16)...
    answer = await stub.GetItem(items_pb2.GetItemRequest(id=twelve))
    assert (answer.id, answer.name) == (twelve, "v2")
    # ...and its required rule on PutItem's new request type holds.
    code, output = await _grpcurl_run(
        host_v1,
        "-H",
        f"authorization: Bearer {host_v1.token()}",
        "-d",
        "{}",
        host_v1.address,
        f"{SERVICE}/PutItem",
    )
    assert code != 0 and "InvalidArgument" in output, output

    # REST and OpenAPI follow: the new method's route and its description.
    async with httpx.AsyncClient(base_url=host_v1.http_url, timeout=10) as http:
        posted = await http.post(
            "/v1/items",
            json={"item": {"id": "r", "size": 5}},
            headers={"authorization": f"Bearer {host_v1.token()}"},
        )
        assert posted.status_code == 200, posted.text
        assert (posted.json()["name"], posted.json()["size"]) == ("v2", 5)
        document = (await http.get("/openapi.json")).json()
        assert "post" in document["paths"]["/v1/items"]
        assert "Stores one item." in json.dumps(document["paths"]["/v1/items"])

    # The call that started on v1 ends on v1.
    gate.set()
    old_answer = await asyncio.wait_for(held, 10)
    assert old_answer.name == "v1"

    routes = [r for r in host_v1.host.router.table.routes.values() if r.plugin == "swap"]
    assert {r.info.descriptor.containing_service.file.pool for r in routes} == {generation.pool}
    assert routes[0].info.descriptor.containing_service.file.pool is not descriptor_pool.Default()
    generation.release()
