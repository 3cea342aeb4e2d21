"""ReloadPlugin with a changed contract, on a running host: the manager loads the new
contract into its own generation, checks it against the running one, and swaps.

The plugin's stubs live in one folder on ``sys.path``, rewritten between versions as
``nexus gen`` would rewrite them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc

from nexus_grpc.config import HotSwapConfig
from nexus_grpc.testing import RunningHost, running_host
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SERVICE
from tests.hotswap.test_cli import _nexus
from tests.hotswap.test_generations_host import (
    CODE,
    MANIFEST,
    PUT_ITEM,
    _describe,
    _grpcurl_run,
)

generated = support.generated
clean_modules = support.clean_modules

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("clean_modules")]

PUT_ITEM_PATH = f"/{SERVICE}/PutItem"


@dataclass
class Upgradable:
    """The running host, the plugin's folder, its stubs folder and an admin client."""

    running: RunningHost
    plugin: Path
    stubs: Path
    admin: admin_pb2_grpc.AdminServiceStub

    def write(self, version: str, contract: Path, *, put_item: bool) -> None:
        """Version ``version`` of the code, and the stubs generated in ``contract``."""
        extra = PUT_ITEM.format(version=version) if put_item else ""
        (self.plugin / "manifest.toml").write_text(MANIFEST.format(version=version))
        (self.plugin / "__init__.py").write_text(CODE.format(version=version, extra=extra))
        shutil.rmtree(self.stubs / "genswap", ignore_errors=True)
        shutil.copytree(contract / "genswap", self.stubs / "genswap")

    async def reload(self, *, force: bool = False) -> admin_pb2.PluginChange:
        request = admin_pb2.ReloadPluginRequest(name="swap", force=force)
        return await self.admin.ReloadPlugin(request, timeout=60)


@pytest.fixture
async def upgradable(
    tmp_path: Path, generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Upgradable]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    monkeypatch.syspath_prepend(str(stubs))
    plugins = tmp_path / "plugins"
    (plugins / "swap").mkdir(parents=True)
    settings = HotSwapConfig(enabled=True, drain_timeout=30.0, start_timeout=2.0)
    host = Upgradable(None, plugins / "swap", stubs, None)  # type: ignore[arg-type]
    host.write("v1", generated["v1"], put_item=False)
    async with running_host(
        plugin_dirs=[plugins], data_dir=tmp_path / "data", http=True, hot_swap=settings
    ) as running:
        host.running = running
        host.admin = admin_pb2_grpc.AdminServiceStub(running.channel(running.token("operator")))
        yield host


async def test_a_reload_upgrades_the_contract_live(
    upgradable: Upgradable, generated: dict[str, Path]
) -> None:
    running = upgradable.running
    from genswap.items.v1 import items_pb2, items_pb2_grpc  # v1's stubs, as clients have

    stub = items_pb2_grpc.SwapServiceStub(running.channel())
    record = running.host.plugins.record("swap")
    assert record is not None and record.loaded is not None
    gate = asyncio.Event()
    record.loaded.plugin.services[0].gate = gate  # type: ignore[attr-defined]
    held = await support.hold_a_call(record, stub.GetItem(items_pb2.GetItemRequest(id="hold")))

    upgradable.write("v2", generated["v2"], put_item=True)
    # The reload answers once the old generation drained: the held call keeps it open.
    reloading = asyncio.ensure_future(upgradable.reload())
    for _ in range(1000):
        if reloading.done() or (record.current is not None and record.current.number == 2):
            break
        await asyncio.sleep(0.02)
    assert record.current is not None and record.current.number == 2, reloading

    # grpcurl, from reflection alone, sees and calls the new method right away.
    code, described = await _describe(running, SERVICE)
    assert code == 0 and "PutItem" in described, described
    code, output = await _grpcurl_run(
        running,
        "-H",
        f"authorization: Bearer {running.token()}",
        "-d",
        json.dumps({"item": {"id": "a", "size": 3}}),
        running.address,
        f"{SERVICE}/PutItem",
    )
    assert code == 0, output
    assert (json.loads(output)["name"], json.loads(output)["size"]) == ("v2", 3)
    async with httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
        posted = await http.post(
            "/v1/items",
            json={"item": {"id": "r", "size": 5}},
            headers={"authorization": f"Bearer {running.token()}"},
        )
    assert posted.status_code == 200, posted.text
    assert (posted.json()["name"], posted.json()["size"]) == ("v2", 5)

    # The call that started on v1 ends on v1, with v1's types.
    gate.set()
    old = await asyncio.wait_for(held, 10)
    assert old.name == "v1" and isinstance(old, items_pb2.Item)
    change = await asyncio.wait_for(reloading, 30)
    assert list(change.methods_added) == [PUT_ITEM_PATH]
    assert "POST /v1/items" in change.http_routes_added
    assert change.plugin.generation == 2 and change.plugin.version == "v2"
    assert change.calls_cut == 0
    current = record.current
    assert current is not None and current.contract is not None
    assert current.contract.label == "swap@2"


async def test_a_breaking_upgrade_is_refused_with_the_list_and_accepted_with_force(
    upgradable: Upgradable, generated: dict[str, Path]
) -> None:
    running = upgradable.running
    upgradable.write("v2", generated["v2"], put_item=True)
    await upgradable.reload()
    before = await _describe(running, SERVICE)

    upgradable.write("gone", generated["breaking_method"], put_item=True)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await upgradable.reload()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "breaks clients" in details and "GetItem" in details, details
    assert "force" in details
    # Still v2, untouched: the same description, the old method answering.
    assert await _describe(running, SERVICE) == before
    record = running.host.plugins.record("swap")
    assert record is not None and "GetItem" in record.swap_error

    change = await upgradable.reload(force=True)
    assert list(change.methods_removed) == [f"/{SERVICE}/GetItem"]
    code, described = await _describe(running, SERVICE)
    assert code == 0 and "GetItem" not in described and "PutItem" in described, described


async def test_a_reload_with_the_same_new_contract_keeps_its_generation(
    upgradable: Upgradable, generated: dict[str, Path]
) -> None:
    upgradable.write("v2", generated["v2"], put_item=True)
    await upgradable.reload()
    record = upgradable.running.host.plugins.record("swap")
    assert record is not None and record.current is not None
    contract = record.current.contract
    upgradable.write("v2b", generated["v2"], put_item=True)
    change = await upgradable.reload()
    assert change.plugin.version == "v2b" and not change.methods_added
    assert record.current.contract is contract
    # Its code still builds the generation's messages (dependency types included).
    async with httpx.AsyncClient(base_url=upgradable.running.http_url, timeout=10) as http:
        posted = await http.post(
            "/v1/items",
            json={"item": {"id": "r", "size": 5}},
            headers={"authorization": f"Bearer {upgradable.running.token()}"},
        )
    assert posted.status_code == 200, posted.text
    assert posted.json()["name"] == "v2b" and posted.json()["created"]


async def test_the_cli_lists_breaking_changes_and_forces_them(
    upgradable: Upgradable, generated: dict[str, Path]
) -> None:
    running = upgradable.running
    remote = ("--address", running.address, "--token", running.token("operator"))
    upgradable.write("v2", generated["v2"], put_item=True)
    code, out, err = await _nexus("plugins", "reload", "swap", *remote)
    assert code == 0, err
    assert f"  + method  {PUT_ITEM_PATH}" in out

    upgradable.write("gone", generated["breaking_method"], put_item=True)
    code, out, err = await _nexus("plugins", "reload", "swap", *remote)
    assert code == 1
    assert "FAILED_PRECONDITION" in err and "GetItem" in err and "--force" in err, err
    code, out, err = await _nexus("plugins", "reload", "swap", "--force", *remote)
    assert code == 0, err
    assert f"  - method  /{SERVICE}/GetItem" in out
