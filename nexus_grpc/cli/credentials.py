"""The access token remote commands send: ``--token``, else ``$NEXUS_TOKEN``, else the
token ``nexus login --save`` stored.

The saved token lives in ``$XDG_CONFIG_HOME/nexus/token`` (``~/.config/nexus/token``
when the variable is unset or not absolute, as the XDG spec says), in an owner-only
folder and file. Only the access token is stored: a refresh token is a long-lived
credential, and a file any process of the user can read is no place for it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_TOKEN",
    "Credential",
    "CredentialError",
    "expiry",
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


class CredentialError(Exception):
    """The saved token cannot be read or written; the message says why."""


def token_path() -> Path:
    """Where ``nexus login --save`` keeps the token."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "nexus" / "token"


def resolve_token(args: argparse.Namespace) -> Credential | None:
    """The token to send, read now (not when the parser was built); None for none."""
    given = (getattr(args, "token", None) or "").strip()
    if given:
        return Credential(given, "--token")
    from_env = os.environ.get(ENV_TOKEN, "").strip()
    if from_env:
        return Credential(from_env, f"${ENV_TOKEN}")
    try:
        saved = token_path().read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialError(f"cannot read the saved token {token_path()}: {error}") from None
    return Credential(saved, "saved") if saved else None


def save_token(token: str) -> Path:
    """Store ``token`` atomically in :func:`token_path` (folder 0700, file 0600)."""
    path = token_path()
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
                file.write(token + "\n")
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


def refused_hint(credential: Credential | None) -> str:
    """What to do after the host answered UNAUTHENTICATED to ``credential``."""
    if credential is None:
        return (
            "pass an access token with --token or $NEXUS_TOKEN, or run "
            "`nexus login USERNAME --save` first"
        )
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
