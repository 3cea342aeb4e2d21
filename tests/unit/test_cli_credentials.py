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
    refused_hint,
    remove_token,
    resolve_token,
    save_token,
    token_path,
)


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
    path = save_token("first")
    path = save_token("second")
    assert path.read_text() == "second\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # tightened: it is ours
    assert [p.name for p in path.parent.iterdir()] == ["token"]
    assert remove_token() == path
    assert remove_token() is None


def test_token_order_is_option_then_environment_then_saved(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = argparse.Namespace(token=None)
    assert resolve_token(args) is None
    save_token("saved-token")
    assert resolve_token(args) == Credential("saved-token", "saved")
    monkeypatch.setenv("NEXUS_TOKEN", "env-token")
    assert resolve_token(args) == Credential("env-token", "$NEXUS_TOKEN")
    assert resolve_token(argparse.Namespace(token="given")) == Credential("given", "--token")
    # Empty values (an unset shell variable) count as not given.
    monkeypatch.setenv("NEXUS_TOKEN", "")
    assert resolve_token(argparse.Namespace(token="")) == Credential("saved-token", "saved")


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
