"""Shared pytest configuration for the whole test suite."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.disk",
    "tests.fixtures.mongo",
    "tests.fixtures.postgres",
    "tests.fixtures.probe",
    "tests.fixtures.redis",
    "tests.fixtures.swap",
]

#: Test files whose tests share one expensive session fixture: they run on the same
#: pytest-xdist worker, so it is built once per run, not once per worker.
_SHARED_GROUPS = {
    # The sdist, the wheel and a fresh venv with it (tests/e2e/conftest.py's dist,
    # wheel_venv): minutes of building and installing.
    "tests/e2e/test_installed.py": "installed-wheel",
    "tests/e2e/test_readme_guide.py": "installed-wheel",
}


def _group(item: pytest.Item) -> str:
    path = item.nodeid.split("::", 1)[0]
    return _SHARED_GROUPS.get(path, path)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (scripts/test), send each test file whole to one worker.

    Module fixtures (a `nexus serve`, compiled contracts) then start once, as in a serial
    run, and the files of :data:`_SHARED_GROUPS` go together. The slowest groups go
    first: a worker that starts one late would keep the others waiting at the end.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_group(item)))
