"""What a plugin generation is made of: the hash of its code and of its contract.

The code hash is what an operator pins in ``plugins.hot_swap.allowed_hashes`` and what
the audit log records for every load: sha256 over the plugin's files, in a stable
order, so the same folder hashes the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from google.protobuf.descriptor import ServiceDescriptor

__all__ = ["MAX_CODE_BYTES", "CodeTooLargeError", "code_hash", "contract_hash"]

#: A plugin folder larger than this is refused rather than read into the hash: the
#: folder is the operator's, but a runaway data file must not stall the host.
MAX_CODE_BYTES = 256 * 1024 * 1024

#: Written by Python or editors, never part of what a plugin is.
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo", ".swp", "~")


class CodeTooLargeError(ValueError):
    """The plugin folder holds more than :data:`MAX_CODE_BYTES`."""


def _files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, names in os.walk(root):
        # Sorted in place: os.walk then descends in a stable order too.
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES):
                continue
            found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def code_hash(package_dir: Path) -> str:
    """sha256 (hex) over every file of the plugin folder: its path relative to the
    folder, its length and its bytes, in path order. Blocking: run it in a thread."""
    digest = hashlib.sha256()
    total = 0
    for path in _files(package_dir):
        data = path.read_bytes()
        total += len(data)
        if total > MAX_CODE_BYTES:
            raise CodeTooLargeError(
                f"{package_dir} holds more than {MAX_CODE_BYTES // (1024 * 1024)} MiB; "
                "keep data files out of the plugin folder"
            )
        name = path.relative_to(package_dir).as_posix().encode()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def contract_hash(services: Iterable[ServiceDescriptor]) -> str:
    """sha256 (hex) over the serialized ``.proto`` files defining ``services``; ""
    for a plugin serving none. Two generations with the same value speak the same
    contract."""
    files = {service.file.name: service.file.serialized_pb for service in services}
    if not files:
        return ""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(len(files[name]).to_bytes(8, "big") + files[name])
    return digest.hexdigest()
