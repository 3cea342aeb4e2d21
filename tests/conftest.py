"""Shared pytest configuration for the whole test suite."""

from __future__ import annotations

from typing import Any

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

#: The groups that take longest (measured: `--durations=0` summed per file, runs on 2,
#: 3 and 4 workers), longest first. They start first; the rest follow in collection order.
_LONGEST_FIRST = (
    "installed-wheel",
    "tests/storage/test_repository.py",
    "tests/docs/test_docs.py",
    "tests/supervisor/test_supervisor.py",
    "tests/hotswap/test_workers_hold.py",
    "tests/e2e/test_openapi_live.py",
    "tests/e2e/test_cli_login.py",
    "tests/e2e/test_tls_clients.py",
    "tests/security/test_http_connections.py",
    "tests/events/test_admin_events.py",
    "tests/scaffold/test_new_plugin.py",
    "tests/security/test_authentication.py",
)


def _group(nodeid: str) -> str:
    """The work unit of a test under ``--dist loadfile``: its file, or its shared group."""
    path = nodeid.split("::", 1)[0]
    return _SHARED_GROUPS.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (scripts/test) with the groups of :data:`_SHARED_GROUPS`.

    Each test file goes whole to one worker, so its module fixtures (a `nexus serve`,
    compiled contracts) start once, as in a serial run. (``--dist loadgroup`` cannot
    do this here: it renames the tests, which pytest 9 no longer lets it do.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class GroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker, put the longest groups first.

    The controller hands out the groups in this order (scripts/test passes
    --no-loadscope-reorder): one that started last would keep the other workers waiting
    at the end.
    """
    if not hasattr(config, "workerinput"):
        return
    rank = {name: index for index, name in enumerate(_LONGEST_FIRST)}
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(_group(item.nodeid), len(first_seen))

    def order(item: pytest.Item) -> tuple[int, int]:
        group = _group(item.nodeid)
        return rank.get(group, len(rank)), first_seen[group]

    items.sort(key=order)  # stable: each group keeps its own order
