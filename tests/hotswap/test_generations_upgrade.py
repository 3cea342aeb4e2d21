"""The breaking-change check of a contract upgrade, with buf and with the built-in rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nexus_grpc.lint.buf import BufError, find_buf
from nexus_grpc.plugins.generations import Generation, load_generation
from nexus_grpc.plugins.upgrade import check_upgrade, run_upgrade_check
from tests.hotswap import generations_support as support
from tests.hotswap.generations_support import SWAP_PB2

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
