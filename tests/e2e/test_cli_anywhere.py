"""Commands that read the host's configuration work from any folder: `-c`, `--plugin-dir`,
and plugins installed through entry points, found as `nexus serve` finds them.

Each command runs as its own `nexus` process in an empty folder, not the repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, run_nexus

PASSWORD = "correct horse battery"
GET_ORDER = "nexus.orders.v1.OrdersService/GetOrder"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder with no plugins/ and no nexus.toml."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no NEXUS_* variables, no installed nexus plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def test_policy_explain_finds_plugins_through_plugin_dir_and_config(
    shell_env: dict[str, str], elsewhere: Path, tmp_path: Path
) -> None:
    missing = run_nexus(shell_env, "policy", "explain", GET_ORDER, cwd=elsewhere)
    assert missing.returncode == 1
    assert f"no method {GET_ORDER!r} in the plugins found in folders {elsewhere}/plugins" in (
        missing.stderr
    )
    assert "entry points of group nexus.plugins" in missing.stderr
    assert "pass -c or --plugin-dir" in missing.stderr
    assert "Traceback" not in missing.stderr

    found = run_nexus(
        shell_env,
        "policy",
        "explain",
        GET_ORDER,
        "--plugin-dir",
        str(REPO / "plugins"),
        cwd=elsewhere,
    )
    assert found.returncode == 0, found.stderr
    assert f"method:        /{GET_ORDER}" in found.stdout
    assert "permission orders.read with scope own" in found.stdout

    config = tmp_path / "nexus.toml"
    config.write_text(f'[plugins]\ndirs = ["{REPO / "plugins"}"]\n')
    for how in (("-c", str(config)), ("--config", str(config))):
        found = run_nexus(shell_env, "policy", "explain", GET_ORDER, *how, cwd=elsewhere)
        assert found.returncode == 0, found.stderr
    found = run_nexus(
        {**shell_env, "NEXUS_CONFIG": str(config)}, "policy", "explain", GET_ORDER, cwd=elsewhere
    )
    assert found.returncode == 0, found.stderr


def test_users_create_without_an_auth_plugin_names_where_it_looked(
    shell_env: dict[str, str], elsewhere: Path
) -> None:
    result = run_nexus(
        shell_env, "users", "create", "ada", "--password-stdin", stdin=PASSWORD, cwd=elsewhere
    )
    assert result.returncode == 1
    assert (
        f"nexus users: no 'auth' plugin in folders {elsewhere}/plugins; no bundled plugins "
        '(set plugins.bundled = ["auth"] to use the bundled one); entry points of '
        "group nexus.plugins; pass --plugin-dir or -c with the host's config, or install it"
    ) in result.stderr
    assert "Traceback" not in result.stderr

    turned_off = run_nexus(
        {**shell_env, "NEXUS_PLUGINS__DISABLED": "auth"},
        *("users", "create", "ada", "--password-stdin", "--plugin-dir", str(REPO / "plugins")),
        stdin=PASSWORD,
        cwd=elsewhere,
    )
    assert turned_off.returncode == 1
    assert "the 'auth' plugin (folder " in turned_off.stderr
    assert "is turned off by plugins.disabled; enable it" in turned_off.stderr


def test_an_installed_plugin_is_found_by_users_create_and_policy_explain(
    shell_env: dict[str, str], elsewhere: Path, tmp_path: Path
) -> None:
    # The bundled auth plugin, installed as a distribution with a nexus.plugins entry
    # point (what `pip install` of a plugin package leaves in site-packages).
    site = tmp_path / "site"
    shutil.copytree(REPO / "plugins" / "auth", site / "acme_auth")
    dist = site / "acme_auth-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-auth\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nexus.plugins]\nauth = acme_auth\n")
    env = {**shell_env, "PYTHONPATH": os.pathsep.join([str(site), shell_env.get("PYTHONPATH", "")])}

    created = run_nexus(
        env, "users", "create", "ada", "--admin", "--password-stdin", stdin=PASSWORD, cwd=elsewhere
    )
    assert created.returncode == 0, created.stderr
    database = elsewhere / ".nexus" / "nexus.db"
    assert created.stdout.strip() == (
        f"nexus users: created ada with roles admin in storage sqlite:///{database}"
    )
    assert (elsewhere / ".nexus" / "nexus.db").is_file()

    again = run_nexus(
        env, "users", "create", "ada", "--password-stdin", stdin=PASSWORD, cwd=elsewhere
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr

    login = run_nexus(env, "policy", "explain", "nexus.auth.v1.AuthService/Login", cwd=elsewhere)
    assert login.returncode == 0, login.stderr
    assert "access:        public" in login.stdout


def test_users_create_says_the_storage_is_unreachable(
    shell_env: dict[str, str], elsewhere: Path
) -> None:
    env = {
        **shell_env,
        "NEXUS_STORAGE__URL": "postgresql://ada:hunter2@127.0.0.1:1/nexus",
        "NEXUS_STORAGE__CONNECT_TIMEOUT": "2",
    }
    result = run_nexus(
        env,
        *("users", "create", "ada", "--password-stdin", "--plugin-dir", str(REPO / "plugins")),
        stdin=PASSWORD,
        cwd=elsewhere,
    )
    assert result.returncode == 1
    assert (
        "nexus users: storage postgresql://ada:***@127.0.0.1:1/nexus is not reachable: "
        "connection refused"
    ) in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_users_create_takes_the_data_dir_and_storage_url_serve_takes(
    shell_env: dict[str, str], elsewhere: Path, tmp_path: Path
) -> None:
    plugins = ("--plugin-dir", str(REPO / "plugins"))
    data = tmp_path / "data"
    created = run_nexus(
        shell_env,
        *("users", "create", "ada", "--password-stdin", "--data-dir", str(data), *plugins),
        stdin=PASSWORD,
        cwd=elsewhere,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().endswith(f"in storage sqlite:///{data / 'nexus.db'}")
    assert (data / "nexus.db").is_file()
    assert not (elsewhere / ".nexus").exists()

    database = tmp_path / "other.db"
    url = f"sqlite:///{database}"
    stored = run_nexus(
        shell_env,
        *("users", "create", "bob", "--password-stdin", "--storage-url", url, *plugins),
        stdin=PASSWORD,
        cwd=elsewhere,
    )
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.strip().endswith(f"in storage {url}")
    assert database.is_file()
