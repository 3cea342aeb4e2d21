"""The plugin manifest (``manifest.toml``): who the plugin is and what it serves.

The manifest is read before the plugin's code is imported, so a plugin that cannot be
imported is still reported by name, with the file and the reason.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_grpc.auth.principal import Grant

__all__ = [
    "CATEGORIES",
    "MANIFEST_FILE",
    "Manifest",
    "ManifestError",
    "is_plugin_name",
    "parse_manifest",
]

MANIFEST_FILE = "manifest.toml"
CATEGORIES = ("business", "integration", "analytics", "security")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*:)?[A-Za-z_][A-Za-z0-9_]*$")


def is_plugin_name(name: str) -> bool:
    """Whether ``name`` is a valid plugin name: lower-case letters, digits and _, starting
    with a letter, at most 63 characters."""
    return _NAME.fullmatch(name) is not None


class ManifestError(ValueError):
    """A manifest is missing, unreadable or has a wrong field."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class Manifest:
    """Validated manifest fields."""

    name: str
    version: str
    category: str
    description: str
    #: Fully qualified protobuf services the plugin serves.
    services: tuple[str, ...]
    #: Fully qualified services the plugin calls (``ctx.services``) and names of
    #: plugins it needs; either kind is loaded before this plugin.
    requires: tuple[str, ...]
    #: Where the Plugin value is: "attribute" of the package or "module:attribute".
    entry: str
    path: str
    #: Full names of the event types the plugin publishes.
    publishes: tuple[str, ...] = ()
    #: Full names of the event types the plugin consumes.
    consumes: tuple[str, ...] = ()
    #: Grants (``resource.action:scope``) of the plugin's own identity, which its
    #: in-process calls made outside any caller's call carry.
    permissions: tuple[str, ...] = ()

    @property
    def required_services(self) -> tuple[str, ...]:
        """The services of ``requires`` (the entries with a dot)."""
        return tuple(entry for entry in self.requires if "." in entry)

    @property
    def namespace(self) -> str:
        """The plugin's storage namespace."""
        return f"plugins/{self.category}/{self.name}"


def parse_manifest(path: Path) -> Manifest:
    """Read and validate ``path``; ManifestError says which field is wrong and how to fix it."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ManifestError(path, f"missing; every plugin needs a {MANIFEST_FILE}") from None
    except tomllib.TOMLDecodeError as error:
        raise ManifestError(path, f"not valid TOML: {error}") from None
    return manifest_from_mapping(raw, path)


def manifest_from_mapping(raw: Mapping[str, Any], path: Path | str) -> Manifest:
    """Validate manifest fields already parsed from TOML."""
    known = {
        "name",
        "version",
        "category",
        "description",
        "services",
        "requires",
        "entry",
        "publishes",
        "consumes",
        "permissions",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ManifestError(
            path, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    name = _text(raw, "name", path)
    if not _NAME.match(name):
        raise ManifestError(
            path, f"name {name!r} must be lower-case letters, digits and _ starting with a letter"
        )
    category = _text(raw, "category", path)
    if category not in CATEGORIES:
        raise ManifestError(path, f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    services = _names(raw, "services", path)
    for service in services:
        if not _SERVICE.match(service):
            raise ManifestError(
                path,
                f"services entry {service!r} must be a fully qualified protobuf service "
                "name such as 'acme.billing.v1.InvoicesService'",
            )
    requires = _names(raw, "requires", path)
    for required in requires:
        if not _NAME.match(required) and not _SERVICE.match(required):
            raise ManifestError(
                path,
                f"requires entry {required!r} is neither a fully qualified service name "
                "such as 'acme.billing.v1.InvoicesService' nor a plugin name",
            )
        if required in services:
            raise ManifestError(path, f"requires lists {required}, which the plugin serves itself")
    if name in requires:
        raise ManifestError(path, "a plugin cannot require itself")
    permissions = _names(raw, "permissions", path)
    for permission in permissions:
        _check_permission(permission, path)
    events = {}
    for key in ("publishes", "consumes"):
        events[key] = _names(raw, key, path)
        for event_type in events[key]:
            if not _SERVICE.match(event_type):
                raise ManifestError(
                    path,
                    f"{key} entry {event_type!r} must be a fully qualified protobuf message "
                    "name such as 'acme.billing.v1.InvoicePaid'",
                )
    entry = raw.get("entry", "plugin")
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise ManifestError(
            path, f"entry {entry!r} must be 'attribute' or 'module:attribute' of the package"
        )
    return Manifest(
        name=name,
        version=_text(raw, "version", path),
        category=category,
        description=_text(raw, "description", path),
        services=services,
        requires=requires,
        entry=entry,
        path=str(path),
        publishes=events["publishes"],
        consumes=events["consumes"],
        permissions=permissions,
    )


def _check_permission(permission: str, path: Path | str) -> None:
    try:
        grant = Grant.parse(permission)
    except ValueError as error:
        raise ManifestError(
            path, f"permissions entry {permission!r}: {error} (e.g. 'inventory.read:all')"
        ) from None
    if "*" in (grant.resource, grant.action):
        # A plugin's identity names what it needs; a wildcard would grant it every
        # permission any plugin ever declares, administration included.
        raise ManifestError(
            path, f"permissions entry {permission!r} must name a resource and an action, not *"
        )


def _text(raw: Mapping[str, Any], key: str, path: Path | str) -> str:
    value = raw.get(key)
    if value is None:
        raise ManifestError(path, f"required field {key!r} is missing")
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(path, f"field {key!r} must be a non-empty string")
    return value.strip()


def _names(raw: Mapping[str, Any], key: str, path: Path | str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(path, f"field {key!r} must be a list of strings")
    if len(set(value)) != len(value):
        raise ManifestError(path, f"field {key!r} lists a name twice")
    return tuple(value)
