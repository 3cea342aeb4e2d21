"""`nexus login` / `nexus logout` and the saved token, against a real `nexus serve`.

Every command runs as its own `nexus` process, in a folder that is not the repository,
with its own XDG_CONFIG_HOME, the way a user's shell runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.conftest import REPO, ServeProcess, run_nexus, start_serve

PASSWORD = "correct horse battery"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell: no NEXUS_TOKEN, a private config home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["NEXUS_DATA_DIR"] = str(tmp_path / "data")
    env["NEXUS_PLUGINS__DIRS"] = str(REPO / "plugins")
    env["NEXUS_PLUGINS__ENTRY_POINTS"] = "false"
    return env


@pytest.fixture
def auth_serve(
    tmp_path: Path, probe_stubs: Path, cli_env: dict[str, str]
) -> Iterator[ServeProcess]:
    """`nexus serve` with the bundled plugins and a user "ada" (admin) made beforehand
    with `nexus users create`."""
    made = run_nexus(
        cli_env, "users", "create", "ada", "--admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert made.returncode == 0, made.stderr
    running = start_serve(tmp_path, probe_stubs, [REPO / "plugins"])
    try:
        yield running
    finally:
        running.close()


def test_login_prints_the_access_token_alone(
    auth_serve: ServeProcess, cli_env: dict[str, str], tmp_path: Path
) -> None:
    address = ("--address", auth_serve.address)
    login = run_nexus(
        cli_env, "login", "ada", "--password-stdin", *address, stdin=PASSWORD + "\n", cwd=tmp_path
    )
    assert login.returncode == 0, login.stderr
    token = login.stdout.strip()
    assert login.stdout == token + "\n" and token.count(".") == 2  # one JWT, one line
    assert not (tmp_path / "config" / "nexus" / "token").exists()
    listed = run_nexus({**cli_env, "NEXUS_TOKEN": token}, "plugins", *address, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "auth" in listed.stdout

    wrong = run_nexus(
        cli_env, "login", "ada", "--password-stdin", *address, stdin="nope\n", cwd=tmp_path
    )
    assert wrong.returncode == 1
    assert "UNAUTHENTICATED" in wrong.stderr and wrong.stdout == ""
    assert "Traceback" not in wrong.stderr

    empty = run_nexus(cli_env, "login", "ada", "--password-stdin", *address, stdin="\n")
    assert empty.returncode == 2
    assert "password is empty" in empty.stderr


def test_login_json_has_both_tokens(auth_serve: ServeProcess, cli_env: dict[str, str]) -> None:
    import json

    login = run_nexus(
        cli_env,
        *("login", "ada", "--password-stdin", "--json", "--address", auth_serve.address),
        stdin=PASSWORD + "\n",
    )
    assert login.returncode == 0, login.stderr
    tokens = json.loads(login.stdout)
    assert tokens["accessToken"] and tokens["refreshToken"]
    assert tokens["tokenType"] == "Bearer" and tokens["expiresIn"] > 0


def test_saved_token_serves_every_remote_command_until_logout(
    auth_serve: ServeProcess, cli_env: dict[str, str], tmp_path: Path
) -> None:
    address = ("--address", auth_serve.address)
    saved = tmp_path / "config" / "nexus" / "token"
    login = run_nexus(
        cli_env, "login", "ada", "--password-stdin", "--save", *address, stdin=PASSWORD + "\n"
    )
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip().startswith(f"nexus login: token saved in {saved}")
    assert f"sent only to {auth_serve.address} over plaintext" in login.stdout
    stored = json.loads(saved.read_text())
    token = stored["token"]
    assert stored == {"token": token, "address": auth_serve.address, "tls": False}
    assert token.count(".") == 2 and token not in login.stdout
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert [p.name for p in saved.parent.iterdir()] == ["token"]  # no temporary left

    listed = run_nexus(cli_env, "plugins", *address, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert token not in listed.stdout + listed.stderr
    stats = run_nexus(cli_env, "events", "stats", *address, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr

    # --token and $NEXUS_TOKEN win over the saved token.
    junk = run_nexus({**cli_env, "NEXUS_TOKEN": "junk"}, "plugins", *address)
    assert junk.returncode == 1
    assert "the token from $NEXUS_TOKEN was refused" in junk.stderr
    junk = run_nexus(cli_env, "plugins", *address, "--token", "junk")
    assert junk.returncode == 1
    assert "the token from --token was refused" in junk.stderr

    logout = run_nexus(cli_env, "logout")
    assert logout.returncode == 0
    assert logout.stdout.strip() == f"nexus logout: removed {saved}"
    assert not saved.exists()
    again = run_nexus(cli_env, "logout")
    assert again.stdout.strip() == "nexus logout: no saved token"
    anonymous = run_nexus(cli_env, "plugins", *address)
    assert anonymous.returncode == 1
    assert "run `nexus login USERNAME --save` first" in anonymous.stderr


def test_an_expired_saved_token_says_log_in_again(
    auth_serve: ServeProcess, cli_env: dict[str, str], tmp_path: Path
) -> None:
    from nexus_grpc.auth import Grant, KeySet, Principal, TokenIssuer
    from nexus_grpc.config import AuthConfig

    config = AuthConfig()
    keys = asyncio.run(KeySet.load(config, auth_serve.data_dir))
    an_hour_ago = TokenIssuer(keys, config, clock=lambda: time.time() - 3600)
    principal = Principal(subject="ada", grants=frozenset({Grant.parse("*.*:all")}))
    saved = tmp_path / "config" / "nexus" / "token"
    saved.parent.mkdir(parents=True)
    saved.write_text(
        json.dumps(
            {
                "token": an_hour_ago.issue_access(principal)[0],
                "address": auth_serve.address,
                "tls": False,
            }
        )
    )

    listed = run_nexus(cli_env, "plugins", "--address", auth_serve.address)
    assert listed.returncode == 1
    assert f"the saved token ({saved}) expired at" in listed.stderr
    assert "run `nexus login USERNAME --save` again" in listed.stderr
    assert "Traceback" not in listed.stderr


class _Recorder(grpc.GenericRpcHandler):
    """A gRPC server's handler that notes each call's metadata and refuses the call."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
        self.metadata.append(
            {key: str(value) for key, value in handler_call_details.invocation_metadata}
        )

        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token for you")
            raise AssertionError("abort raises")

        return grpc.unary_unary_rpc_method_handler(refuse)


def test_a_saved_token_is_sent_only_to_the_address_it_was_saved_for(
    auth_serve: ServeProcess, cli_env: dict[str, str]
) -> None:
    login = run_nexus(
        cli_env,
        "login",
        "ada",
        "--password-stdin",
        "--save",
        "--address",
        auth_serve.address,
        stdin=PASSWORD + "\n",
    )
    assert login.returncode == 0, login.stderr
    recorder = _Recorder()
    other = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        listed = run_nexus(cli_env, "plugins", "--address", f"127.0.0.1:{port}")
    finally:
        other.stop(0)
    assert listed.returncode == 1
    # The other server got the call (the health probe first, then ListPlugins)...
    assert recorder.metadata
    # ...but never the token, and the command says why none was sent.
    assert all("authorization" not in call for call in recorder.metadata)
    assert f"the saved token was saved for {auth_serve.address} (plaintext)" in listed.stderr
    # The host it was saved for still gets it.
    assert run_nexus(cli_env, "plugins", "--address", auth_serve.address).returncode == 0


def test_no_token_over_plaintext_beyond_loopback(cli_env: dict[str, str]) -> None:
    # 192.0.2.1 (TEST-NET-1) is never reached: the command refuses before connecting.
    refused = run_nexus(
        {**cli_env, "NEXUS_TOKEN": "a.b.c"}, "plugins", "--address", "192.0.2.1:50051"
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "nexus: not sending the token from $NEXUS_TOKEN to 192.0.2.1:50051 over plaintext"
    )
    assert "--insecure-token" in refused.stderr and "Traceback" not in refused.stderr
    # Opting in sends it (the command then only fails to reach the address).
    sent = run_nexus(
        {**cli_env, "NEXUS_TOKEN": "a.b.c"},
        "plugins",
        "--address",
        "192.0.2.1:50051",
        "--insecure-token",
        "--timeout",
        "0.5",
    )
    assert sent.returncode == 1
    assert "cannot reach a nexus host at 192.0.2.1:50051" in sent.stderr


def test_no_password_over_plaintext_beyond_loopback(cli_env: dict[str, str]) -> None:
    # Refused before the password is even read (and before connecting).
    refused = run_nexus(cli_env, "login", "ada", "--address", "192.0.2.1:50051")
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "nexus login: not sending a password to 192.0.2.1:50051 over plaintext"
    )
    assert "--insecure-password" in refused.stderr and "Traceback" not in refused.stderr
    sent = run_nexus(
        cli_env,
        "login",
        "ada",
        "--password-stdin",
        "--address",
        "192.0.2.1:50051",
        "--insecure-password",
        "--timeout",
        "0.5",
        stdin="a password\n",
    )
    assert sent.returncode == 1
    assert "cannot reach a nexus host at 192.0.2.1:50051" in sent.stderr
