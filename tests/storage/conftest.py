"""Fixtures shared by the storage tests: one storage per backend (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus_grpc.storage import Storage

from . import BACKENDS, backend_url, connected


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend: a SQLite file, a fresh PostgreSQL database."""
    return backend_url(request, tmp_path)


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    """A connected storage, closed after the test."""
    async with connected(storage_url) as storage:
        yield storage
