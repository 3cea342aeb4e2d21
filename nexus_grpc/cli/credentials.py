"""The access token remote commands send: ``--token``, else ``$NEXUS_TOKEN``, else the
token ``nexus login --save`` stored — and where a token may be sent at all.

The saved token lives in ``$XDG_CONFIG_HOME/nexus/token`` (``~/.config/nexus/token``
when the variable is unset or not absolute, as the XDG spec says), in an owner-only
folder and file, as JSON with the address it was issued by and whether that was over
TLS: it is sent to that address over that transport only, never to another host a
command is pointed at. Only the access token is stored: a refresh token is a
long-lived credential, and a file any process of the user can read is no place for it.

No token (whatever its source) goes over plaintext to an address that is not loopback
unless the command is given ``--insecure-token``: anyone on the path could replay it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nexus_grpc.loopback import is_loopback_address

__all__ = [
    "ENV_TOKEN",
    "Credential",
    "CredentialError",
    "SavedToken",
    "check_transport",
    "expiry",
    "read_saved",
    "refused_hint",
    "remove_token",
    "resolve_token",
    "save_token",
    "token_path",
]

#: The environment variable remote commands read a token from.
ENV_TOKEN = "NEXUS_TOKEN"
_FOLDER_MODE, _FILE_MODE = 0o700, 0o600


@dataclass(frozen=True)
class Credential:
    """A token and where it came from ("--token", "$NEXUS_TOKEN", "saved"), or none."""

    token: str
    source: str


@dataclass(frozen=True)
class SavedToken:
    """What ``nexus login --save`` stored: the token, and where it may be sent."""

    token: str
    #: host:port as the login's ``--address`` named it (no scheme); empty in a file
    #: written before addresses were stored (such a token is sent nowhere).
    address: str
    #: Whether the login spoke TLS.
    tls: bool

    def transport(self) -> str:
        """``host:port (TLS)`` or ``host:port (plaintext)``, for messages."""
        return f"{self.address} ({'TLS' if self.tls else 'plaintext'})"


class CredentialError(Exception):
    """The saved token cannot be read or written, or may not be sent; the message says why."""


def token_path() -> Path:
    """Where ``nexus login --save`` keeps the token."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "nexus" / "token"


def read_saved() -> SavedToken | None:
    """The saved token, or None when there is none."""
    path = token_path()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialError(f"cannot read the saved token {path}: {error}") from None
    if not text:
        return None
    if not text.startswith("{"):
        # A bare token from an older nexus: bound to no address, so sent nowhere.
        return SavedToken(text, "", False)
    try:
        data = json.loads(text)
        saved = SavedToken(str(data["token"]), str(data["address"]), data["tls"] is True)
    except (ValueError, KeyError, TypeError):
        raise CredentialError(
            f"the saved token {path} is not what `nexus login --save` writes; run it again"
        ) from None
    return saved if saved.token else None


def resolve_token(args: argparse.Namespace, target: str, tls: bool) -> Credential | None:
    """The token to send to ``target`` (host:port, over TLS or not), read now (not when
    the parser was built); None for none. The saved token counts only when it was
    saved for ``target`` over the same transport."""
    given = (getattr(args, "token", None) or "").strip()
    if given:
        return Credential(given, "--token")
    from_env = os.environ.get(ENV_TOKEN, "").strip()
    if from_env:
        return Credential(from_env, f"${ENV_TOKEN}")
    saved = read_saved()
    if saved is None or (saved.address, saved.tls) != (target, tls):
        return None
    return Credential(saved.token, "saved")


def check_transport(credential: Credential | None, target: str, tls: bool, insecure: bool) -> None:
    """Refuse (CredentialError) to send ``credential`` over plaintext beyond loopback,
    unless ``insecure`` (``--insecure-token``) says to."""
    if credential is None or tls or insecure or is_loopback_address(target):
        return
    raise CredentialError(
        f"not sending the token from {credential.source} to {target} over plaintext: anyone "
        "on the network path could read and replay it. Use TLS (an https:// address, "
        "--cacert or --tls), or pass --insecure-token to send it anyway"
    )


def save_token(token: str, address: str, tls: bool) -> Path:
    """Store ``token``, bound to ``address`` over TLS or not, atomically in
    :func:`token_path` (folder 0700, file 0600)."""
    path = token_path()
    content = json.dumps({"token": token, "address": address, "tls": tls}) + "\n"
    try:
        path.parent.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
        # The folder is ours: tighten it if something made it readable by others.
        if stat.S_IMODE(path.parent.stat().st_mode) != _FOLDER_MODE:
            path.parent.chmod(_FOLDER_MODE)
        # mkstemp creates the file 0600; replace() makes the new token appear whole,
        # never a half-written file a concurrent command could read.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".token-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise CredentialError(f"cannot save the token in {path}: {error}") from None
    return path


def remove_token() -> Path | None:
    """Delete the saved token; its path, or None when there was none."""
    path = token_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CredentialError(f"cannot remove the saved token {path}: {error}") from None
    return path


def expiry(token: str) -> datetime.datetime | None:
    """The ``exp`` claim of ``token``, unverified (for messages only); None if unknown."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
        return datetime.datetime.fromtimestamp(float(claims["exp"]), datetime.UTC)
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def refused_hint(credential: Credential | None, target: str = "", tls: bool = False) -> str:
    """What to do after the host at ``target`` answered UNAUTHENTICATED to ``credential``."""
    if credential is None:
        hint = (
            "pass an access token with --token or $NEXUS_TOKEN, or run "
            "`nexus login USERNAME --save` first"
        )
        try:
            saved = read_saved()
        except CredentialError:
            saved = None
        if saved is not None and (saved.address, saved.tls) != (target, tls):
            where = (
                f"was saved for {saved.transport()}"
                if saved.address
                else "was saved without its address (by an older nexus)"
            )
            hint = (
                f"the saved token {where}, so it is not sent to {target} "
                f"({'TLS' if tls else 'plaintext'}); {hint}"
            )
        return hint
    expires = expiry(credential.token)
    now = datetime.datetime.now(datetime.UTC)
    state = (
        f"expired at {expires:%Y-%m-%d %H:%M:%S} UTC"
        if expires is not None and expires <= now
        else "was refused"
    )
    if credential.source == "saved":
        return f"the saved token ({token_path()}) {state}; run `nexus login USERNAME --save` again"
    return f"the token from {credential.source} {state}; get a new one with `nexus login`"
