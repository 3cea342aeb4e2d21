"""The package layout pyproject.toml cannot express on its own.

Three source trees become one installed distribution:

* ``nexus_grpc/``: the host (``nexus_grpc``).
* ``generated/nexus/``: the compiled core and bundled-plugin contracts (``nexus``),
  with their ``.proto`` sources and descriptor sets beside the modules.
* ``plugins/``: the bundled plugins, installed as ``nexus_grpc.bundled`` (the folder
  keeps its name in the repository, where ``plugins.dirs`` serves it).

Everything else (metadata, dependencies, package data) is in pyproject.toml.
"""

from setuptools import find_packages, setup

BUNDLED = "nexus_grpc.bundled"

setup(
    packages=[
        *find_packages(include=["nexus_grpc", "nexus_grpc.*"]),
        *find_packages("generated", include=["nexus", "nexus.*"]),
        BUNDLED,
        *(f"{BUNDLED}.{name}" for name in find_packages("plugins")),
    ],
    package_dir={"nexus": "generated/nexus", BUNDLED: "plugins"},
)
