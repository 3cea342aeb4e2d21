"""Manifest parsing: every field checked, errors name the file and the fix."""

from pathlib import Path

import pytest

from nexus_grpc.plugins.manifest import ManifestError, parse_manifest

VALID = """
name = "billing"
version = "1.2.0"
category = "integration"
description = "Invoices."
services = ["acme.billing.v1.InvoicesService"]
requires = ["orders"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    return path


def test_valid_manifest_parses(tmp_path: Path) -> None:
    manifest = parse_manifest(write(tmp_path, VALID))
    assert manifest.name == "billing"
    assert manifest.services == ("acme.billing.v1.InvoicesService",)
    assert manifest.requires == ("orders",)
    assert manifest.entry == "plugin"
    assert manifest.namespace == "plugins/integration/billing"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("name", None), "required field 'name' is missing"),
        (("version", None), "required field 'version' is missing"),
        (("description", '""'), "field 'description' must be a non-empty string"),
        (
            ("category", '"finance"'),
            "category 'finance' is not one of business, integration, analytics, security",
        ),
        (("name", '"Billing!"'), "name 'Billing!' must be lower-case letters"),
        (("services", '["Invoices"]'), "must be a fully qualified protobuf service name"),
        (("services", '"acme.v1.X"'), "field 'services' must be a list of strings"),
        (("requires", '["billing"]'), "a plugin cannot require itself"),
        (
            ("requires", '["acme.billing.v1.InvoicesService"]'),
            "requires lists acme.billing.v1.InvoicesService, which the plugin serves itself",
        ),
        (("requires", '["Billing!"]'), "requires entry 'Billing!' is neither a fully qualified"),
        (
            ("permissions", '["inventory.read"]'),
            "grant 'inventory.read' is not resource.action:scope",
        ),
        (("permissions", '["inventory.*:all"]'), "must name a resource and an action, not *"),
        (("permissions", '["*.*:all"]'), "must name a resource and an action, not *"),
        (("color", '"red"'), "unknown field 'color'"),
        (("entry", '"not valid:"'), "entry 'not valid:' must be 'attribute' or 'module:attribute'"),
    ],
)
def test_invalid_manifest_names_the_problem(
    tmp_path: Path, change: tuple[str, str | None], message: str
) -> None:
    key, value = change
    lines = [line for line in VALID.strip().splitlines() if not line.startswith(f"{key} ")]
    if value is not None:
        lines.append(f"{key} = {value}")
    path = write(tmp_path, "\n".join(lines))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_requires_takes_services_and_plugins_and_permissions_are_grants(tmp_path: Path) -> None:
    text = VALID.replace(
        'requires = ["orders"]', 'requires = ["orders", "acme.stock.v1.StockService"]'
    )
    manifest = parse_manifest(write(tmp_path, text + 'permissions = ["stock.read:all"]\n'))
    assert manifest.requires == ("orders", "acme.stock.v1.StockService")
    assert manifest.required_services == ("acme.stock.v1.StockService",)
    assert manifest.permissions == ("stock.read:all",)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing; every plugin needs a manifest\.toml"):
        parse_manifest(tmp_path / "manifest.toml")
    with pytest.raises(ManifestError, match="not valid TOML"):
        parse_manifest(write(tmp_path, "name = "))
