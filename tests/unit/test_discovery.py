"""Discovery from folders and from installed distributions' entry points."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_grpc.plugins.discovery import discover
from nexus_grpc.plugins.loader import import_plugin

MANIFEST = 'name = "{name}"\nversion = "1"\ncategory = "analytics"\ndescription = "d"\n'


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path standing in for site-packages."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("acme_")]:
            del sys.modules[name]


def install(site: Path, package: str, entry_name: str, manifest_name: str) -> None:
    (site / package).mkdir()
    (site / package / "manifest.toml").write_text(MANIFEST.format(name=manifest_name))
    (site / package / "__init__.py").write_text(
        "from nexus_grpc import Plugin\nplugin = Plugin()\n"
    )
    dist = site / f"{package}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[nexus.plugins]\n{entry_name} = {package}\n")


def test_folder_plugins_are_found_and_non_plugins_skipped(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "_private").mkdir()
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "manifest.toml").write_text(MANIFEST.format(name="good"))
    (tmp_path / "good" / "__init__.py").write_text("")
    (tmp_path / "nomanifest").mkdir()
    (tmp_path / "nomanifest" / "__init__.py").write_text("")
    found = {c.name: c for c in discover([tmp_path], entry_points=False)}
    assert set(found) == {"good", "nomanifest"}
    assert found["good"].manifest is not None and found["good"].error is None
    assert found["good"].module == "nexus_plugins.good"
    assert "manifest.toml: missing" in (found["nomanifest"].error or "")


def test_missing_plugin_folder_is_not_fatal(tmp_path: Path) -> None:
    assert discover([tmp_path / "nope"], entry_points=False) == []


def test_installed_plugin_is_found_through_its_entry_point(site: Path) -> None:
    install(site, "acme_reports", "reports", "reports")
    found = {c.name: c for c in discover([], entry_points=True)}
    candidate = found["reports"]
    assert candidate.error is None
    assert candidate.source == "entry point reports = acme_reports"
    loaded = import_plugin(candidate)
    assert loaded.manifest.category == "analytics"


def test_entry_point_name_must_match_the_manifest(site: Path) -> None:
    install(site, "acme_mismatch", "other", "mismatch")
    found = {c.name: c for c in discover([], entry_points=True)}
    assert "entry point name 'other' differs from the manifest name 'mismatch'" in (
        found["mismatch"].error or ""
    )


REPO = Path(__file__).resolve().parents[2]


def test_bundled_plugins_load_only_when_chosen() -> None:
    assert [c.name for c in discover([], entry_points=False)] == []
    chosen = discover([], entry_points=False, bundled=["orders"])
    assert [c.name for c in chosen] == ["orders"]
    assert chosen[0].source.startswith("bundled plugin orders")
    assert chosen[0].error is None and chosen[0].manifest is not None
    every = discover([], entry_points=False, bundled=["*"])
    assert sorted(c.name for c in every) == ["auth", "inventory", "orders"]


def test_a_plugin_found_in_a_folder_and_bundled_is_listed_once() -> None:
    # The editable install maps nexus_grpc.bundled to the repository's plugins/ folder.
    found = discover([REPO / "plugins"], entry_points=False, bundled=["*"])
    assert sorted(c.name for c in found) == ["auth", "inventory", "orders"]
    assert all(c.source.startswith("folder ") for c in found)


def test_a_copy_of_a_bundled_plugin_elsewhere_is_a_name_clash(tmp_path: Path) -> None:
    copy = tmp_path / "orders"
    copy.mkdir()
    (copy / "manifest.toml").write_text((REPO / "plugins/orders/manifest.toml").read_text())
    (copy / "__init__.py").write_text("")
    found = [c.name for c in discover([tmp_path], entry_points=False, bundled=["orders"])]
    # Two folders: both listed, and the host reports the clash (test_manager does).
    assert found == ["orders", "orders"]


def test_the_default_plugin_folder_may_be_missing_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="nexus.plugins"):
        assert discover(["plugins"], entry_points=False) == []
        assert caplog.records == []
        assert discover(["elsewhere"], entry_points=False) == []
    assert "plugin folder elsewhere does not exist" in caplog.text
