"""gRPC-Web and the metrics labels follow a swap: a method a contract upgrade adds
answers over gRPC-Web and is counted under its own label; an unloaded plugin's
methods answer UNIMPLEMENTED over gRPC-Web."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from nexus.admin.v1 import admin_pb2

from nexus_grpc.gateway.grpcweb import decode_frames, encode_frame
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SERVICE, SWAP_PB2
from tests.hotswap.test_contract_reload import Upgradable, upgradable

generated = support.generated
clean_modules = support.clean_modules

__all__ = ["upgradable"]  # the fixture, imported for this module's tests

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("clean_modules")]


async def _grpc_web(
    running: Upgradable, method: str, message: bytes
) -> tuple[list[bytes], dict[str, str]]:
    """One gRPC-Web call (binary mode): the response messages and the trailers."""
    token = running.running.token()
    async with httpx.AsyncClient(base_url=running.running.http_url, timeout=10) as http:
        response = await http.post(
            f"/{SERVICE}/{method}",
            content=encode_frame(0, message),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "authorization": f"Bearer {token}",
            },
        )
    assert response.status_code == 200, response.text
    frames = decode_frames(response.content)
    trailer = [payload for flag, payload in frames if flag == 0x80]
    assert len(trailer) == 1, frames
    lines = trailer[0].decode().split("\r\n")
    trailers = {k: v for k, _, v in (line.partition(":") for line in lines if line)}
    return [payload for flag, payload in frames if flag == 0], trailers


def _handled(exposition: str, method: str) -> float:
    """``grpc_server_handled_total`` of OK gRPC-Web calls to ``method`` of the service."""
    total = 0.0
    for line in exposition.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and f'grpc_service="{SERVICE}"' in line
            and f'grpc_method="{method}"' in line
            and 'grpc_code="OK"' in line
            and 'transport="grpc-web"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_grpc_web_and_metrics_follow_an_upgrade_and_an_unload(
    upgradable: Upgradable, generated: dict[str, Path]
) -> None:
    running = upgradable.running
    # Before the upgrade the method does not exist.
    _, trailers = await _grpc_web(upgradable, "PutItem", b"")
    assert trailers["grpc-status"] == "12", trailers

    upgradable.write("v2", generated["v2"], put_item=True)
    change = await upgradable.reload()
    assert f"/{SERVICE}/PutItem" in change.methods_added
    record = running.host.plugins.record("swap")
    assert record is not None and record.current is not None
    assert record.current.contract is not None
    # The request is built with the new generation's types, as a v2 client would.
    items = record.current.contract.module(SWAP_PB2)
    request = items.PutItemRequest(item=items.Item(id="web", size=7))
    messages, trailers = await _grpc_web(upgradable, "PutItem", request.SerializeToString())
    assert trailers["grpc-status"] == "0", trailers
    (answer,) = [items.Item.FromString(m) for m in messages]
    assert (answer.id, answer.name, answer.size) == ("web", "v2", 7)

    async with httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
        exposition = (await http.get("/metrics")).text
    assert _handled(exposition, "PutItem") == 1, exposition

    unloaded = await upgradable.admin.UnloadPlugin(
        admin_pb2.UnloadPluginRequest(name="swap"), timeout=30
    )
    assert f"/{SERVICE}/PutItem" in unloaded.methods_removed
    get = items.GetItemRequest(id="gone").SerializeToString()
    for method, message in (("PutItem", request.SerializeToString()), ("GetItem", get)):
        messages, trailers = await _grpc_web(upgradable, method, message)
        assert messages == [] and trailers["grpc-status"] == "12", (method, trailers)
