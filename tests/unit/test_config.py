"""Configuration: defaults, TOML, environment, and the errors for bad values."""

import re
from pathlib import Path

import pytest

from nexus_grpc.config import Config, ConfigError, load_config


def test_defaults_need_no_file_or_environment() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.server.grpc_address == "127.0.0.1:50051"
    assert config.storage_url().startswith("sqlite:///")
    assert config.storage_url().endswith("/.nexus/nexus.db")


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(
        'data_dir = "/var/lib/nexus"\n'
        "[server]\ngrace_period = 3\nreuse_port = true\n"
        '[plugins]\ndirs = ["a", "b"]\nstrict = true\n'
        "[plugin.orders]\nmax = 5\n"
    )
    config = load_config(path, environ={})
    assert config.data_dir == "/var/lib/nexus"
    assert config.server.grace_period == 3.0
    assert config.server.reuse_port is True
    assert config.plugins.dirs == ("a", "b")
    assert config.plugins.strict is True
    assert config.plugin == {"orders": {"max": 5}}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text('[server]\ngrpc_address = "0.0.0.0:1"\n')
    config = load_config(
        path,
        environ={
            "NEXUS_SERVER__GRPC_ADDRESS": "127.0.0.1:9",
            "NEXUS_PLUGINS__DISABLED": "a, b",
            "NEXUS_PLUGINS__STRICT": "yes",
            "NEXUS_PLUGIN__ORDERS__LIMIT": "7",
            "NEXUS_CONFIG": "ignored: names the file",
            "OTHER": "ignored",
        },
    )
    assert config.server.grpc_address == "127.0.0.1:9"
    assert config.plugins.disabled == ("a", "b")
    assert config.plugins.strict is True
    assert config.plugin["orders"] == {"limit": "7"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"NEXUS_SERVER__GRACE_PERIOD": "soon"},
            "server.grace_period (from NEXUS_SERVER__GRACE_PERIOD): expected a number, got 'soon'",
        ),
        (
            {"NEXUS_SERVER__GRACE_PERIOD": "-1"},
            "server.grace_period (from NEXUS_SERVER__GRACE_PERIOD): expected a number >= 0",
        ),
        (
            {"NEXUS_PLUGINS__STRICT": "maybe"},
            "plugins.strict (from NEXUS_PLUGINS__STRICT): expected true or false",
        ),
        (
            {"NEXUS_SERVER__PORT": "1"},
            "environment variable NEXUS_SERVER__PORT names no config key (did you mean "
            "NEXUS_SERVER__REUSE_PORT",
        ),
        (
            {"NEXUS_SERVR__GRPC_ADDRESS": "0.0.0.0:1"},
            "environment variable NEXUS_SERVR__GRPC_ADDRESS names no config key (did you "
            "mean NEXUS_SERVER__GRPC_ADDRESS",
        ),
        ({"NEXUS_DATADIR": "/srv"}, "did you mean NEXUS_DATA_DIR"),
        ({"NEXUS_URL": "https://repo.example"}, "If it is another tool's, unset it for nexus."),
        (
            {"NEXUS_SERVER": "x"},
            "NEXUS_SERVER names the table server, not a key; set one key of it: "
            "NEXUS_SERVER__<KEY>",
        ),
        (
            {"NEXUS_PLUGIN__ORDERS": "x"},
            "set one key of it: NEXUS_PLUGIN__ORDERS__<KEY>",
        ),
        (
            {"NEXUS_LIMITS__RATE_CLASSES__BULK__SPEED": "1"},
            "unknown config key limits.rate_classes.bulk.speed (known: burst, rate)",
        ),
        (
            {"NEXUS_LOG__FORMAT": "xml"},
            "log.format (from NEXUS_LOG__FORMAT): expected one of auto, json, text",
        ),
        (
            {"NEXUS_STORAGE__GROUP_COMMIT_UNITS": "0"},
            "storage.group_commit_units: expected a count from 1 (each unit commits alone) "
            "to 64, got 0",
        ),
    ],
)
def test_bad_environment_values_name_key_and_expectation(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert message in str(caught.value)


def test_bad_file_values_name_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text('[server]\nmax_message_bytes = "big"\n')
    with pytest.raises(
        ConfigError, match=r"server.max_message_bytes: expected an integer, got 'big'"
    ):
        load_config(path, environ={})
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})
    path.write_text("server = 3\n")
    with pytest.raises(ConfigError, match="server: expected a table"):
        load_config(path, environ={})


def test_nexus_variables_that_are_not_config_keys_are_accepted() -> None:
    # The config file, the CLI's token, the test suite's MongoDB server choice.
    environ = {"NEXUS_CONFIG": "x.toml", "NEXUS_TOKEN": "t", "NEXUS_MONGO_SERVER": "nx"}
    assert load_config(environ=environ) == Config()


def test_every_mapping_level_of_the_environment_is_accepted() -> None:
    config = load_config(
        environ={
            "NEXUS_LIMITS__RATE_CLASSES__BULK__RATE": "2",
            "NEXUS_LIMITS__RATE_CLASSES__BULK__BURST": "4",
            "NEXUS_AUTH__PLUGIN_PERMISSIONS__REPORTS": "orders.read:all",
            "NEXUS_PLUGIN__ORDERS__PRICES__BOLT": "7",
        }
    )
    assert config.limits.rate_classes["bulk"] == {"rate": 2.0, "burst": 4.0}
    assert config.auth.plugin_permissions == {"reports": ("orders.read:all",)}
    assert config.plugin == {"orders": {"prices": {"bolt": "7"}}}


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"NEXUS_URL": "u", "NEXUS_LOG__LEVL": "debug"})
    assert "NEXUS_LOG__LEVL names no config key (did you mean NEXUS_LOG__LEVEL" in str(caught.value)
    assert "NEXUS_URL names no config key" in str(caught.value)


def test_nested_plugin_settings_from_the_environment_are_plain_values() -> None:
    config = load_config(environ={"NEXUS_PLUGIN__ORDERS__DB__PASSWORD": "p"})
    assert config.plugin == {"orders": {"db": {"password": "p"}}}


def test_a_directory_as_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, environ={})


def test_plugin_permissions_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text('[auth.plugin_permissions]\nshop = ["inventory.manage:all"]\n')
    config = load_config(
        path, environ={"NEXUS_AUTH__PLUGIN_PERMISSIONS__REPORTS": "orders.read:all,orders.list:all"}
    )
    assert config.auth.plugin_permissions == {
        "shop": ("inventory.manage:all",),
        "reports": ("orders.read:all", "orders.list:all"),
    }


def test_a_plugin_permission_that_is_no_grant_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text('[auth.plugin_permissions]\nshop = ["inventory"]\n')
    with pytest.raises(ConfigError, match=r"auth\.plugin_permissions\.shop: grant 'inventory'"):
        load_config(path, environ={})


def test_bundled_plugins_are_chosen_by_name_or_star() -> None:
    assert load_config(environ={}).plugins.bundled == ()
    config = load_config(environ={"NEXUS_PLUGINS__BUNDLED": "auth,orders"})
    assert config.plugins.bundled == ("auth", "orders")
    assert load_config(environ={"NEXUS_PLUGINS__BUNDLED": "*"}).plugins.bundled == ("*",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "billing",
            "plugins.bundled (from NEXUS_PLUGINS__BUNDLED): 'billing' is not a bundled plugin "
            "(bundled: auth, inventory, orders)",
        ),
        ("*,auth", 'plugins.bundled (from NEXUS_PLUGINS__BUNDLED): "*" selects every bundled'),
    ],
)
def test_unknown_bundled_plugins_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(environ={"NEXUS_PLUGINS__BUNDLED": value})


def test_the_group_commit_default_is_the_storage_layers() -> None:
    # The config is read without importing the storage (SQLAlchemy); the two defaults
    # are written twice and must not drift apart.
    from nexus_grpc.config import StorageConfig
    from nexus_grpc.storage._sqlite import GROUP_COMMIT_UNITS

    assert StorageConfig().group_commit_units == GROUP_COMMIT_UNITS
