"""Passwords are masked in the service URLs messages show."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from nexus_grpc.urls import mask_url, unreachable


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:5432/app", "postgresql://u:***@db:5432/app"),
        ("postgresql://u:se@cret@db/app", "postgresql://u:***@db/app"),  # an unescaped @
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "mongodb://u:secret@h1:1,h2:2/app?authSource=admin",
            "mongodb://u:***@h1:1,h2:2/app?authSource=admin",
        ),
        ("postgresql://db/app?user=u&password=secret", "postgresql://db/app?user=u&password=***"),
        ("postgresql://u@db/app", "postgresql://u@db/app"),
        ("sqlite:////srv/nexus/nexus.db", "sqlite:////srv/nexus/nexus.db"),
        (make_url("postgresql+asyncpg://u:secret@db/app"), "postgresql+asyncpg://u:***@db/app"),
    ],
)
def test_passwords_are_masked(url: object, shown: str) -> None:
    assert mask_url(url) == shown


def test_unreachable_names_the_component_url_and_cause() -> None:
    assert unreachable("storage", "postgresql://u:p@db/app", "connection refused.") == (
        "storage postgresql://u:***@db/app is not reachable: connection refused"
    )
