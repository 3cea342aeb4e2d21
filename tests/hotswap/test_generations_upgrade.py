"""The breaking-change check of a contract upgrade, with buf and with the built-in rules;
a policy change (no wire change) read and enforced per generation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from nexus_grpc import codegen
from nexus_grpc.access.policy import Access, EffectivePolicy, effective_policy
from nexus_grpc.lint.buf import BufError, find_buf
from nexus_grpc.plugins.generations import Generation, load_generation
from nexus_grpc.plugins.upgrade import check_upgrade, run_upgrade_check
from nexus_grpc.testing import running_host
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SWAP_PB2
from tests.hotswap.test_generations_host import _plugin_folder, _upgrade

# The shared fixtures, by name.
generated = support.generated
clean_modules = support.clean_modules

pytestmark = pytest.mark.usefixtures("clean_modules")

CHECKERS = [True, False]


@pytest.fixture(scope="module")
def buf_installed() -> None:
    try:
        find_buf()
    except BufError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


def _load(generated: dict[str, Path], version: str) -> Generation:
    return load_generation([SWAP_PB2], label=version, search=[generated[version]])


@pytest.fixture(params=CHECKERS, ids=["buf", "built-in"])
def use_buf(request: pytest.FixtureRequest) -> bool:
    if request.param:
        request.getfixturevalue("buf_installed")
    return bool(request.param)


def test_adding_a_field_and_a_method_is_accepted(generated: dict[str, Path], use_buf: bool) -> None:
    old, new = _load(generated, "v1"), _load(generated, "v2")
    result = run_upgrade_check(old.files(), new.files(), use_buf=use_buf)
    assert result.changes == []
    assert result.checker == ("buf" if use_buf else "built-in")


def test_a_changed_field_type_is_refused_with_the_change(
    generated: dict[str, Path], use_buf: bool
) -> None:
    old, new = _load(generated, "v2"), _load(generated, "breaking_type")
    changes = run_upgrade_check(old.files(), new.files(), use_buf=use_buf).changes
    assert len(changes) == 1, changes
    [change] = changes
    assert change.startswith("genswap/items/v1/items.proto: ")
    assert '"name"' in change and "Item" in change
    assert "string" in change and "int64" in change


def test_a_removed_method_is_refused_with_the_change(
    generated: dict[str, Path], use_buf: bool
) -> None:
    old, new = _load(generated, "v2"), _load(generated, "breaking_method")
    changes = run_upgrade_check(old.files(), new.files(), use_buf=use_buf).changes
    assert len(changes) == 1, changes
    assert "GetItem" in changes[0]
    assert "delete" in changes[0].lower()


def test_a_downgrade_lists_every_deleted_field(generated: dict[str, Path], use_buf: bool) -> None:
    old, new = _load(generated, "v2"), _load(generated, "v1")
    changes = run_upgrade_check(old.files(), new.files(), use_buf=use_buf).changes
    text = "\n".join(changes)
    for name in ("size", "reason"):
        assert f'"{name}"' in text
    assert "PutItem" in text


def test_check_upgrade_picks_a_checker_itself(generated: dict[str, Path]) -> None:
    old, new = _load(generated, "v2"), _load(generated, "breaking_type")
    assert len(check_upgrade(old.files(), new.files())) == 1
    assert check_upgrade(old.files(), old.files()) == []


@pytest.fixture(scope="module")
def private_get(generated: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version two with GetItem for authenticated callers only (public in version one)."""
    root = tmp_path_factory.mktemp("private_get")
    shutil.copytree(support.CONTRACTS / "v2", root / "proto")
    proto = root / "proto" / "genswap" / "items" / "v1" / "items.proto"
    text = proto.read_text()
    public_get = 'option (google.api.http) = {get: "/v1/items/{id}"};'
    assert public_get in text
    proto.write_text(
        text.replace(
            public_get,
            public_get + "\n    option (nexus.options.v1.policy) = {authenticated: true};",
        )
    )
    codegen.generate(root / "proto", root / "generated")
    return root / "generated"


def _get_item_policy(generation: Generation) -> EffectivePolicy:
    [file] = [f for f in generation.files() if f.name == "genswap/items/v1/items.proto"]
    return effective_policy(file.services_by_name["SwapService"].methods_by_name["GetItem"])


def test_a_policy_is_read_from_each_generation(
    generated: dict[str, Path], private_get: Path
) -> None:
    old = _load(generated, "v1")
    new = load_generation([SWAP_PB2], label="private", search=[private_get])
    try:
        # A policy is no wire change: the upgrade is accepted by either checker.
        assert run_upgrade_check(old.files(), new.files(), use_buf=False).changes == []
        before, after = _get_item_policy(old), _get_item_policy(new)
        assert (before.access, before.source) == (Access.PUBLIC, "service default")
        assert (after.access, after.source) == (Access.AUTHENTICATED, "method")
    finally:
        old.release()
        new.release()


async def test_a_running_host_enforces_each_generation_s_policy(
    tmp_path: Path,
    generated: dict[str, Path],
    private_get: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(generated["v1"]))
    plugins = _plugin_folder(tmp_path, "v1", put_item=False)
    async with running_host(plugins=["swap"], plugin_dirs=[plugins], data_dir=tmp_path) as host:
        from genswap.items.v1 import items_pb2, items_pb2_grpc  # the running version's stubs

        stub = items_pb2_grpc.SwapServiceStub(host.channel())
        request = items_pb2.GetItemRequest(id="a")
        assert (await stub.GetItem(request)).name == "v1"  # public: no token needed

        generation = _upgrade(host, _plugin_folder(tmp_path, "v2", put_item=True), private_get)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetItem(request)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            token = [("authorization", f"Bearer {host.token()}")]
            assert (await stub.GetItem(request, metadata=token)).name == "v2"
            [route] = [
                r
                for r in host.host.router.table.routes.values()
                if r.info.path.endswith("/GetItem")
            ]
            assert route.info.policy is not None
            assert route.info.policy.access == Access.AUTHENTICATED
        finally:
            host.host.router.remove_plugin("swap")
            generation.release()
