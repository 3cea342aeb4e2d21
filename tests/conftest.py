"""Shared pytest configuration for the whole test suite."""

pytest_plugins = [
    "tests.fixtures.disk",
    "tests.fixtures.mongo",
    "tests.fixtures.postgres",
    "tests.fixtures.probe",
    "tests.fixtures.redis",
    "tests.fixtures.swap",
]
