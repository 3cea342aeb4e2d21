"""Service URLs as messages and logs may show them: the password masked.

``postgresql://u:secret@db/app`` is shown as ``postgresql://u:***@db/app``,
``redis://:secret@cache:6379/0`` as ``redis://:***@cache:6379/0``, and a
``password=`` query parameter likewise.
"""

from __future__ import annotations

import re

__all__ = ["mask_url", "unreachable"]

_USERINFO_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)


def mask_url(url: object) -> str:
    """``url`` (a string or SQLAlchemy URL) with its password replaced by ``***``."""
    render = getattr(url, "render_as_string", None)
    text = render(hide_password=True) if render is not None else str(url)
    text = _USERINFO_PASSWORD.sub(r"\g<head>:***@", text, count=1)
    return _QUERY_PASSWORD.sub(r"\g<head>***", text)


def unreachable(component: str, url: object, cause: object) -> str:
    """The start-up error of a ``component`` that cannot reach ``url``: "storage
    postgresql://u:***@db/app is not reachable: connection refused"."""
    return f"{component} {mask_url(url)} is not reachable: {str(cause).rstrip('. ')}"
