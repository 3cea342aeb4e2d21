"""Where `nexus login --save` keeps the token, and which token a remote command sends."""

from __future__ import annotations

import argparse
import stat
import time
from pathlib import Path

import jwt
import pytest

from nexus_grpc.cli.credentials import (
    Credential,
    CredentialError,
    SavedToken,
    check_transport,
    read_saved,
    refused_hint,
    remove_token,
    resolve_token,
    save_token,
    token_path,
)
from nexus_grpc.loopback import is_loopback_address


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NEXUS_TOKEN", raising=False)
    return tmp_path / "xdg"


def test_the_token_lives_under_xdg_config_home_else_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert token_path() == tmp_path / "nexus" / "token"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unusable in ("", "relative/dir"):  # the XDG spec ignores relative paths
        monkeypatch.setenv("XDG_CONFIG_HOME", unusable)
        assert token_path() == tmp_path / "home" / ".config" / "nexus" / "token"


def test_saved_token_is_private_and_replaced_whole(config_home: Path) -> None:
    (config_home / "nexus").mkdir(parents=True, mode=0o755)
    (config_home / "nexus").chmod(0o755)
    path = save_token("first", "127.0.0.1:40443", False)
    path = save_token("second", "nexus.example:443", True)
    assert read_saved() == SavedToken("second", "nexus.example:443", True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # tightened: it is ours
    assert [p.name for p in path.parent.iterdir()] == ["token"]
    assert remove_token() == path
    assert remove_token() is None


LOCAL = "127.0.0.1:40443"


def test_token_order_is_option_then_environment_then_saved(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = argparse.Namespace(token=None)
    assert resolve_token(args, LOCAL, False) is None
    save_token("saved-token", LOCAL, False)
    assert resolve_token(args, LOCAL, False) == Credential("saved-token", "saved")
    monkeypatch.setenv("NEXUS_TOKEN", "env-token")
    assert resolve_token(args, LOCAL, False) == Credential("env-token", "$NEXUS_TOKEN")
    given = argparse.Namespace(token="given")
    assert resolve_token(given, LOCAL, False) == Credential("given", "--token")
    # Empty values (an unset shell variable) count as not given.
    monkeypatch.setenv("NEXUS_TOKEN", "")
    empty = argparse.Namespace(token="")
    assert resolve_token(empty, LOCAL, False) == Credential("saved-token", "saved")


def test_a_saved_token_goes_only_where_it_was_saved_for(config_home: Path) -> None:
    args = argparse.Namespace(token=None)
    save_token("saved-token", "nexus.example:40443", True)
    assert resolve_token(args, "nexus.example:40443", True) == Credential("saved-token", "saved")
    # Another host, or the same host over plaintext: not sent.
    assert resolve_token(args, "evil.example:40443", True) is None
    assert resolve_token(args, "nexus.example:40443", False) is None
    assert resolve_token(args, "nexus.example:50052", True) is None
    hint = refused_hint(None, "evil.example:40443", True)
    assert hint.startswith(
        "the saved token was saved for nexus.example:40443 (TLS), so it is not sent to "
        "evil.example:40443 (TLS); "
    )
    # A bare token from before addresses were stored is sent nowhere, and the hint says why.
    token_path().write_text("old-token\n")
    assert read_saved() == SavedToken("old-token", "", False)
    assert resolve_token(args, LOCAL, False) is None
    assert "without its address" in refused_hint(None, LOCAL, False)
    token_path().write_text('{"token": 1}')
    with pytest.raises(CredentialError, match="not what `nexus login --save` writes"):
        resolve_token(args, LOCAL, False)


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:40443", True),
        ("127.0.0.2:40443", True),
        ("[::1]:40443", True),
        ("localhost:40443", True),
        ("LOCALHOST:1", True),
        ("unix:/run/nexus.sock", True),
        ("10.0.0.5:40443", False),
        ("[2001:db8::1]:40443", False),
        ("nexus.example:40443", False),
        ("localhost.evil.example:40443", False),
        ("0.0.0.0:40443", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback_address(target) is loopback


def test_no_token_over_plaintext_beyond_loopback_without_opt_in() -> None:
    credential = Credential("t", "$NEXUS_TOKEN")
    check_transport(credential, "127.0.0.1:40443", False, False)
    check_transport(credential, "nexus.example:40443", True, False)
    check_transport(None, "nexus.example:40443", False, False)
    check_transport(credential, "nexus.example:40443", False, True)
    with pytest.raises(CredentialError) as refused:
        check_transport(credential, "nexus.example:40443", False, False)
    message = str(refused.value)
    assert "token from $NEXUS_TOKEN" in message and "nexus.example:40443" in message
    assert "--insecure-token" in message and "TLS" in message


def test_refusal_hints_say_which_token_and_whether_it_expired(config_home: Path) -> None:
    expired = jwt.encode({"exp": int(time.time()) - 3600}, "k" * 32, algorithm="HS256")
    live = jwt.encode({"exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")
    saved = refused_hint(Credential(expired, "saved"))
    assert saved.startswith(f"the saved token ({token_path()}) expired at ")
    assert saved.endswith("run `nexus login USERNAME --save` again")
    assert refused_hint(Credential(live, "$NEXUS_TOKEN")) == (
        "the token from $NEXUS_TOKEN was refused; get a new one with `nexus login`"
    )
    assert "was refused" in refused_hint(Credential("not a jwt", "--token"))
    assert "nexus login USERNAME --save" in refused_hint(None)
