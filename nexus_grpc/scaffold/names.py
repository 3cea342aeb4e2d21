"""The names a scaffolded plugin derives from its one given name, validated.

A plugin called ``notes`` becomes the manifest name ``notes``, the Python package
``notes_plugin``, the distribution ``nexus-plugin-notes``, the protobuf package
``notes.v1`` (its stubs the Python package ``notes.v1`` under ``generated/``) and the
service ``notes.v1.NotesService``. Every rule here keeps one of those valid: the
manifest's name rule, Python identifiers, buf's STANDARD lint, and import names that
cannot shadow another module once the plugin is installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import keyword
import re
import sys
from dataclasses import dataclass

from nexus_grpc.plugins.bundled import bundled_names
from nexus_grpc.plugins.manifest import is_plugin_name

__all__ = ["PluginNames", "ScaffoldError", "plugin_names"]

#: A protobuf package buf's STANDARD rules accept: lower_snake_case parts, the last a
#: version (PACKAGE_LOWER_SNAKE_CASE, PACKAGE_VERSION_SUFFIX).
_PROTO_PACKAGE = re.compile(
    r"^[a-z][a-z0-9]*(_[a-z0-9]+)*(\.[a-z][a-z0-9]*(_[a-z0-9]+)*)*"
    r"\.v[1-9][0-9]*((alpha|beta)[1-9][0-9]*)?$"
)

#: Top-level import names a plugin's stubs must not take: the host's own packages and
#: the libraries every plugin imports.
_TAKEN = frozenset(
    {"nexus", "nexus_grpc", "nexus_plugins", "google", "grpc", "grpc_tools", "tests", "test"}
)


class ScaffoldError(ValueError):
    """A name or folder the scaffold refuses; the message says why and what to do."""


@dataclass(frozen=True)
class PluginNames:
    """Every name of one scaffolded plugin."""

    #: The manifest name and entry-point name, e.g. "notes".
    name: str
    #: The plugin's Python package (a folder of the project), e.g. "notes_plugin".
    package: str
    #: The distribution name in pyproject.toml, e.g. "nexus-plugin-notes".
    distribution: str
    #: The protobuf package of the contract, e.g. "notes.v1".
    proto_package: str
    #: The service's simple name, e.g. "NotesService".
    service: str

    @property
    def proto_dir(self) -> str:
        """The contract's folder under ``proto/`` (buf's PACKAGE_DIRECTORY_MATCH)."""
        return self.proto_package.replace(".", "/")

    @property
    def proto_root(self) -> str:
        """The top-level Python package of the generated stubs, e.g. "notes"."""
        return self.proto_package.split(".", 1)[0]

    @property
    def full_service(self) -> str:
        """The fully qualified service name, e.g. "notes.v1.NotesService"."""
        return f"{self.proto_package}.{self.service}"


def plugin_names(name: str, proto_package: str | None = None) -> PluginNames:
    """Validate ``name`` (and ``proto_package``, default ``<name>.v1``) and derive the rest."""
    if not is_plugin_name(name):
        raise ScaffoldError(
            f"plugin name {name!r} must be lower-case letters, digits and _ starting with a "
            "letter, at most 63 characters (e.g. 'notes' or 'billing_v2')"
        )
    if "__" in name or name.endswith("_"):
        raise ScaffoldError(
            f"plugin name {name!r} must not end with _ or hold __ (it names a protobuf "
            "package, which buf requires in lower_snake_case)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ScaffoldError(f"plugin name {name!r} is a Python keyword; choose another")
    if name in bundled_names():
        # Plugins are known by name (plugins.disabled, auth.issuer_plugins, permissions):
        # a second "auth" would be mistaken for the bundled one.
        raise ScaffoldError(
            f"plugin name {name!r} is the name of a plugin bundled with nexus; choose another"
        )
    package = f"{name}_plugin"
    if proto_package is None:
        proto_package = f"{name}.v1"
        hint = f"; pass --package, e.g. --package acme.{name}.v1"
    else:
        hint = ""
    if not _PROTO_PACKAGE.fullmatch(proto_package):
        raise ScaffoldError(
            f"protobuf package {proto_package!r} must be lower_snake_case parts separated by "
            "dots ending in a version such as v1 or v2beta1 (e.g. 'acme.notes.v1')"
        )
    if any(keyword.iskeyword(part) for part in proto_package.split(".")):
        raise ScaffoldError(
            f"protobuf package {proto_package!r} holds a Python keyword; its stubs could "
            "not be imported"
        )
    _check_import_name(proto_package, package, hint)
    camel = "".join(part.capitalize() for part in name.split("_"))
    return PluginNames(
        name=name,
        package=package,
        distribution=f"nexus-plugin-{name.replace('_', '-')}",
        proto_package=proto_package,
        service=f"{camel}Service",
    )


def _check_import_name(proto_package: str, package: str, hint: str) -> None:
    # The stubs are installed as the package ``proto_package`` less its version
    # (``notes`` for notes.v1, ``acme.notes`` for acme.notes.v1): taking a name another
    # module has would shadow it (or be shadowed) in every process loading the plugin.
    # Under an organisation prefix the prefix is shared on purpose (acme.notes and
    # acme.tasks, two plugins), so only the plugin's own part must be free.
    parts = proto_package.split(".")
    root, own = parts[0], ".".join(parts[:-1])
    if root == package:
        problem = "is the name of the plugin's own package"
    elif root in _TAKEN:
        problem = "belongs to nexus or a library it uses"
    elif root in sys.stdlib_module_names:
        problem = "is a module of Python's standard library"
    elif own == root:
        if not _installed(root):
            return
        problem = "is a module already installed here"
    elif not _installed(root):
        return
    elif not _is_package(root):
        problem = "is a module (not a package) already installed here"
    elif (marker := _regular_package_marker(root)) is not None:
        # A shared prefix works only as a namespace package: a regular one (with an
        # __init__.py) is the whole of `root`, so the stubs' folder would never be seen.
        problem = (
            f"is a regular package already installed here, whose {marker} would hide the "
            "stubs (a shared prefix must be a namespace package, a folder without "
            "__init__.py)"
        )
    elif _installed(own):
        root = own
        problem = "is a package already installed here"
    else:
        return
    raise ScaffoldError(
        f"the stubs of protobuf package {proto_package!r} would be the Python package "
        f"{root!r}, which {problem}{hint}"
    )


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported here (a dotted name imports its parents)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False  # a parent that is not a package, or fails to import: not installed


def _regular_package_marker(module: str) -> str | None:
    """The ``__init__.py`` of the installed package ``module``; None for a namespace
    package (no origin, the namespace loader)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin in (None, "namespace"):
        return None
    if isinstance(spec.loader, importlib.machinery.NamespaceLoader):
        return None
    return spec.origin


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None
