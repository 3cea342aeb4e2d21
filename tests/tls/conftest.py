"""A throwaway CA per test, and hosts serving the bundled orders plugin over TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_grpc.tls.certs import TestCA

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    """A new CA whose files live in ``tmp_path/pki``."""
    return TestCA.create(tmp_path / "pki")


@pytest.fixture
def other_ca(tmp_path: Path) -> TestCA:
    """A second CA nobody trusts."""
    return TestCA.create(tmp_path / "other-pki", name="other")
