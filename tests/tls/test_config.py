"""TLS configuration: keys, environment variables, and the errors a wrong value gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_grpc.config import ConfigError, TlsConfig, load_config
from nexus_grpc.host import Host
from nexus_grpc.tls.certs import TestCA
from nexus_grpc.tls.identity import certificate_names
from nexus_grpc.tls.material import NOT_BEFORE_LEEWAY, load_material, plaintext_exposed


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_tls_keys_load_from_toml_and_environment(tmp_path: Path, ca: TestCA) -> None:
    server = ca.issue("server", dns=("localhost",))
    path = _toml(
        tmp_path,
        f"""
[http.tls]
cert_file = "{server.cert_file}"
key_file = "{server.key_file}"
client_ca_file = "{ca.cert_file}"
client_auth = "optional"
min_version = "1.3"

[auth]
identity_precedence = "certificate"

[auth.clients."spiffe://acme/orders"]
roles = ["service"]
grants = ["orders.read:all"]
""",
    )
    environ = {
        "NEXUS_SERVER__TLS__CERT_FILE": str(server.cert_file),
        "NEXUS_SERVER__TLS__KEY_FILE": str(server.key_file),
        "NEXUS_SERVER__TLS__RELOAD_INTERVAL": "2.5",
        "NEXUS_SERVER__REQUIRE_TLS": "true",
    }
    config = load_config(path, environ=environ)
    assert config.server.tls.cert_file == str(server.cert_file)
    assert config.server.tls.reload_interval == 2.5
    assert config.server.require_tls
    assert config.http.tls.client_auth == "optional"
    assert config.http.tls.min_version == "1.3"
    assert config.auth.identity_precedence == "certificate"
    client = config.auth.clients["spiffe://acme/orders"]
    assert client.grants == ("orders.read:all",) and client.roles == ("service",)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"CERT_FILE": "/nonexistent/server.crt", "KEY_FILE": "{key}"}, "does not exist"),
        ({"CERT_FILE": "{cert}"}, "server.tls.key_file is empty"),
        ({"CERT_FILE": "{other_cert}", "KEY_FILE": "{key}"}, "is not the key of the certificate"),
        ({"CERT_FILE": "{key}", "KEY_FILE": "{key}"}, "no PEM certificate"),
        ({"CERT_FILE": "{cert}", "KEY_FILE": "{cert}"}, "not a PEM private key"),
        ({"KEY_FILE": "{key}"}, "key_file is set but server.tls.cert_file is empty"),
        (
            {"CERT_FILE": "{cert}", "KEY_FILE": "{key}", "CLIENT_AUTH": "require"},
            "needs server.tls.client_ca_file",
        ),
        (
            {"CERT_FILE": "{cert}", "KEY_FILE": "{key}", "CLIENT_CA_FILE": "{ca}"},
            "client_auth is 'none'",
        ),
        (
            {"CERT_FILE": "{cert}", "KEY_FILE": "{key}", "CLIENT_AUTH": "sometimes"},
            "expected one of none, optional, require",
        ),
        (
            {"CERT_FILE": "{cert}", "KEY_FILE": "{key}", "MIN_VERSION": "1.1"},
            "expected one of 1.2, 1.3",
        ),
        # grpcio's limits on the gRPC port, refused with the reason.
        (
            {
                "CERT_FILE": "{cert}",
                "KEY_FILE": "{key}",
                "CLIENT_CA_FILE": "{ca}",
                "CLIENT_AUTH": "optional",
            },
            "'optional' is not available on the gRPC port",
        ),
        (
            {"CERT_FILE": "{cert}", "KEY_FILE": "{key}", "MIN_VERSION": "1.3"},
            "no minimum-version setting",
        ),
    ],
)
def test_wrong_tls_settings_are_refused_with_the_reason(
    tmp_path: Path, ca: TestCA, variables: dict[str, str], message: str
) -> None:
    server = ca.issue("server", dns=("localhost",))
    other = ca.issue("other", dns=("localhost",))
    names = {
        "cert": str(server.cert_file),
        "key": str(server.key_file),
        "other_cert": str(other.cert_file),
        "ca": str(ca.cert_file),
    }
    environ = {
        f"NEXUS_SERVER__TLS__{name}": value.format(**names) for name, value in variables.items()
    }
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(environ=environ)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("expired", "the certificate expired at "),
        ("not_yet_valid", "the certificate is not valid before "),
    ],
)
async def test_a_server_certificate_out_of_its_validity_stops_start_up(
    tmp_path: Path, ca: TestCA, when: str, message: str
) -> None:
    server = ca.issue("server", dns=("localhost",), **{when: True})
    environ = {
        "NEXUS_SERVER__TLS__CERT_FILE": str(server.cert_file),
        "NEXUS_SERVER__TLS__KEY_FILE": str(server.key_file),
        "NEXUS_SERVER__GRPC_ADDRESS": "127.0.0.1:0",
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
    }
    # Loading the configuration does not look at the dates: commands that serve no TLS
    # (users create, policy explain) read it too.
    config = load_config(environ=environ)
    host = Host(config)
    with pytest.raises(ConfigError, match=f"server.tls.cert_file {server.cert_file}: {message}"):
        await host.start()


def test_a_not_before_slightly_ahead_is_clock_skew(ca: TestCA) -> None:
    # Issued by a machine whose clock runs 20 s ahead: within the leeway.
    ahead = ca.issue("ahead", dns=("localhost",), starts_in=NOT_BEFORE_LEEWAY / 3)
    load_material(TlsConfig(cert_file=str(ahead.cert_file), key_file=str(ahead.key_file)), "t")
    beyond = ca.issue("beyond", dns=("localhost",), starts_in=NOT_BEFORE_LEEWAY + 60)
    tls = TlsConfig(cert_file=str(beyond.cert_file), key_file=str(beyond.key_file))
    with pytest.raises(ConfigError, match="is not valid before"):
        load_material(tls, "t")


def test_require_tls_refuses_plaintext_beyond_loopback(tmp_path: Path, ca: TestCA) -> None:
    environ = {"NEXUS_SERVER__REQUIRE_TLS": "true", "NEXUS_SERVER__GRPC_ADDRESS": "0.0.0.0:7443"}
    with pytest.raises(ConfigError, match=r"server.grpc_address 0.0.0.0:7443 listens beyond"):
        load_config(environ=environ)
    # Loopback plaintext stays allowed (a sidecar proxy terminating TLS in front).
    assert load_config(environ={"NEXUS_SERVER__REQUIRE_TLS": "true"}).server.require_tls
    server = ca.issue("server", dns=("localhost",))
    environ |= {
        "NEXUS_SERVER__TLS__CERT_FILE": str(server.cert_file),
        "NEXUS_SERVER__TLS__KEY_FILE": str(server.key_file),
        "NEXUS_HTTP__ADDRESS": "[::]:8443",
    }
    with pytest.raises(ConfigError, match=r"http.address \[::\]:8443 listens beyond"):
        load_config(environ=environ)


def test_plaintext_beyond_loopback_is_named_for_the_warning() -> None:
    exposed = load_config(
        environ={
            "NEXUS_SERVER__GRPC_ADDRESS": "0.0.0.0:7443",
            "NEXUS_HTTP__ADDRESS": "localhost:7080",
        }
    )
    assert plaintext_exposed(exposed) == ["server.grpc_address 0.0.0.0:7443"]
    assert plaintext_exposed(load_config(environ={})) == []


def test_client_identities_need_valid_grants(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[auth.clients."spiffe://acme/x"]\ngrants = ["orders.read"]\n')
    with pytest.raises(ConfigError, match=r'auth.clients."spiffe://acme/x".grants: grant'):
        load_config(path, environ={})
    path = _toml(tmp_path, '[auth.clients."spiffe://acme/x"]\npowers = ["all"]\n')
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="expected one of token, certificate"):
        load_config(environ={"NEXUS_AUTH__IDENTITY_PRECEDENCE": "both"})


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("spiffe://acme/x", None),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", None),
        ("dns:api.acme.internal", None),
        ("dns:alice", None),
        ("alice", "neither a URI SAN as written"),
        ("api.acme.internal", "neither a URI SAN as written"),
        ("dns:API.acme", "all lowercase"),
        ("DNS:api.acme", "all lowercase"),
        ("dns:", "not dns: followed by a DNS name"),
        ("dns:-bad-.acme", "not dns: followed by a DNS name"),
    ],
)
def test_client_identities_are_uris_or_dns_names_never_user_names(
    tmp_path: Path, name: str, problem: str | None
) -> None:
    path = _toml(tmp_path, f'[auth.clients."{name}"]\ngrants = ["orders.read:all"]\n')
    if problem is None:
        assert name in load_config(path, environ={}).auth.clients
        return
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert str(refused.value).startswith(f'auth.clients."{name}": ')
    assert problem in str(refused.value)


def test_certificate_names_keep_uris_and_prefix_dns_names() -> None:
    context = {
        "peer_uri": [b"spiffe://acme/app", b"DNS:forged"],
        "peer_dns": [b"API.acme.internal", b"alice"],
    }
    assert certificate_names(context) == (
        "spiffe://acme/app",
        "dns:api.acme.internal",
        "dns:alice",
    )
    assert certificate_names({}) == ()
    # grpc core keeps the first handshake's SANs on a resumed session: no identity.
    assert certificate_names({**context, "ssl_session_reused": [b"true"]}) == ()
    assert len(certificate_names({**context, "ssl_session_reused": [b"false"]})) == 3
