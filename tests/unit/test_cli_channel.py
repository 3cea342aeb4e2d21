"""The remote commands' TLS options: when they mean TLS, and what is wrong with them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nexus_grpc.cli.channel import ChannelError, tls_options
from nexus_grpc.cli.remote import host_options

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch, **environ: str) -> argparse.Namespace:
    for name in ("NEXUS_TLS", "NEXUS_CACERT", "NEXUS_CERT", "NEXUS_KEY", "NEXUS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    host_options(parser)
    return parser.parse_args(argv)


def test_a_bare_address_is_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    options = tls_options(parse(["--address", "db.example:50051"], monkeypatch))
    assert not options.enabled and options.target == "db.example:50051"
    assert options.describe() == "plaintext"


@pytest.mark.parametrize(
    "argv",
    [["--address", "https://h.example:443"], ["--address", "h.example:443", "--tls"]],
)
def test_https_or_tls_means_tls_with_system_roots(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = tls_options(parse(argv, monkeypatch))
    assert options.enabled and options.target == "h.example:443"
    assert options.root_certificates is None and options.describe() == "TLS"


def test_files_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_bytes(PEM)
    args = parse(
        ["--address", "127.0.0.1:1", "--cert", str(tmp_path / "client.pem")],
        monkeypatch,
        NEXUS_CACERT=str(tmp_path / "ca.pem"),
        NEXUS_KEY=str(tmp_path / "client.key"),
        NEXUS_SERVER_NAME="nexus.internal",
    )
    options = tls_options(args)
    assert options.enabled and options.describe() == "mutual TLS"
    assert options.root_certificates == options.private_key == options.certificate_chain == PEM
    assert options.server_name == "nexus.internal"
    assert tls_options(parse(["--address", "h:1"], monkeypatch, NEXUS_TLS="true")).enabled


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cert", "{dir}/ca.pem"], "--cert and --key go together"),
        (["--key", "{dir}/ca.pem"], "--cert and --key go together"),
        (["--cacert", "{dir}/missing.pem"], "--cacert {dir}/missing.pem: cannot read it"),
        (["--cacert", "{dir}/plain.txt"], "not a PEM file"),
        (["--server-name", "x"], "--server-name applies to TLS"),
        (["--address", "http://h:1"], "only https://"),
    ],
)
def test_wrong_options_say_what_is_wrong(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.pem").write_bytes(PEM)
    (tmp_path / "plain.txt").write_text("hello")
    argv = [part.format(dir=tmp_path) for part in argv]
    with pytest.raises(ChannelError, match=message.format(dir=tmp_path)):
        tls_options(parse(argv, monkeypatch))
