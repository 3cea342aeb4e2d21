"""Namespace names and the isolation between namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest
from nexus.orders.v1 import orders_pb2

from nexus_grpc.errors import NotFoundError
from nexus_grpc.storage import Storage, validate_namespace

from . import connected

Order = orders_pb2.Order


@pytest.mark.parametrize(
    "name", ["plugins/business/orders", "a", "core", "x-1/y_2/3", "-/_", "a" * 255]
)
def test_valid_namespace_names_are_accepted(name: str) -> None:
    assert validate_namespace(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "namespace must not be empty"),
        ("Plugins/orders", "segment 1 ('Plugins')"),
        ("plugins//orders", "segment 2 ('')"),
        ("/plugins", "segment 1 ('')"),
        ("plugins/", "segment 2 ('')"),
        ("plugins/business/Orders", "segment 3 ('Orders')"),
        ("plugins/or ders", "segment 2 ('or ders')"),
        ("plugins/örders", "segment 2 ('örders')"),
        ("plugins.orders", "segment 1 ('plugins.orders')"),
        ("plugins/orders\n", "segment 2 ('orders\\n')"),
        ("a" * 256, "longer than 255 characters"),
    ],
)
def test_invalid_namespace_names_raise_value_error_naming_the_segment(
    name: str, message: str
) -> None:
    with pytest.raises(ValueError, match="namespace") as caught:
        validate_namespace(name)

    assert message in str(caught.value)


async def test_storage_namespace_validates_its_name(tmp_path: Path) -> None:
    async with connected(f"sqlite+aiosqlite:///{tmp_path}/n.db") as storage:
        assert storage.namespace("plugins/business/orders").name == "plugins/business/orders"
        with pytest.raises(ValueError, match=r"segment 2 \('Bad'\)"):
            storage.namespace("plugins/Bad")


async def test_namespaces_never_see_each_others_records(storage: Storage) -> None:
    first = storage.namespace("tenants/first").repository(Order)
    second = storage.namespace("tenants/second").repository(Order)
    # Same collection, same id, different content.
    await first.create(Order(id="same", customer_id="first"))
    await second.create(Order(id="same", customer_id="second"))
    await first.create(Order(id="only-first", customer_id="first"))

    assert (await first.get("same")).customer_id == "first"  # type: ignore[union-attr]
    assert (await second.get("same")).customer_id == "second"  # type: ignore[union-attr]
    assert await second.get("only-first") is None
    assert [o.id for o in (await second.list()).items] == ["same"]
    assert [o.id for o in (await first.list(filter={"customer_id": "second"})).items] == []

    with pytest.raises(NotFoundError):
        await second.update(Order(id="only-first"))
    assert await second.delete("only-first") is False
    assert await first.delete("same") is True
    assert (await second.get("same")).customer_id == "second"  # type: ignore[union-attr]


async def test_a_namespace_is_not_a_prefix_of_another(storage: Storage) -> None:
    parent = storage.namespace("plugins").repository(Order)
    child = storage.namespace("plugins/orders").repository(Order)
    await child.create(Order(id="o"))

    assert await parent.get("o") is None
    assert (await parent.list()).items == []


async def test_transactions_stay_in_their_namespace(storage: Storage) -> None:
    first, second = storage.namespace("tenants/first"), storage.namespace("tenants/second")
    await second.repository(Order).create(Order(id="theirs", customer_id="second"))

    async with first.transaction() as unit:
        repo = unit.repository(Order)
        assert await repo.get("theirs", for_update=True) is None
        await repo.create(Order(id="theirs", customer_id="first"))

    assert unit.namespace == "tenants/first"
    assert (await second.repository(Order).get("theirs")).customer_id == "second"  # type: ignore[union-attr]
    assert (await first.repository(Order).get("theirs")).customer_id == "first"  # type: ignore[union-attr]
