"""Whether a contract upgrade breaks the clients of the running version.

A plugin upgraded in a running host keeps its clients: stubs generated from the old
contract, REST callers of the old JSON. :func:`check_upgrade` lists what the new
contract breaks for them, so the upgrade can be refused unless forced. The rules are
buf's ``WIRE_JSON`` category (field numbers, types, cardinality, JSON names, enum
values) plus the deletion of services and methods, which wire rules allow but which
leaves callers of the deleted method with ``UNIMPLEMENTED``.

buf runs on images of the two versions (:func:`~nexus_grpc.lint.buf.breaking_between_images`).
Where buf is not installed (the container image has none), the same rules run in
Python (:func:`~nexus_grpc.lint.breaking.wire_json_breaking`) and reach the same
verdicts (``tests/hotswap/test_upgrade_parity.py`` runs both); only the wording of the
changes differs. ``UpgradeCheck.checker`` says which ran.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.descriptor import FileDescriptor

from nexus_grpc.lint.breaking import wire_json_breaking
from nexus_grpc.lint.buf import BufError, breaking_between_images, find_buf
from nexus_grpc.plugins.generations import file_set

__all__ = ["UPGRADE_RULES", "UpgradeCheck", "check_upgrade", "run_upgrade_check"]

_log = logging.getLogger("nexus.plugins")

#: The buf.yaml ``breaking`` section an upgrade is checked with.
UPGRADE_RULES: Mapping[str, object] = {
    "use": ["WIRE_JSON", "RPC_NO_DELETE", "PACKAGE_SERVICE_NO_DELETE"],
}


@dataclass(frozen=True)
class UpgradeCheck:
    """The breaking changes found, and which checker found them ("buf" or "built-in")."""

    changes: list[str] = field(default_factory=list)
    checker: str = "buf"


def check_upgrade(
    old_files: Sequence[FileDescriptor], new_files: Sequence[FileDescriptor]
) -> list[str]:
    """The changes in ``new_files`` that break clients of ``old_files``; empty when none.

    Both are the contract's own files (their imports are taken along). buf decides
    when installed, else the built-in check (logged once per call).
    """
    return run_upgrade_check(old_files, new_files).changes


def run_upgrade_check(
    old_files: Sequence[FileDescriptor],
    new_files: Sequence[FileDescriptor],
    *,
    use_buf: bool | None = None,
) -> UpgradeCheck:
    """:func:`check_upgrade` saying which checker ran; ``use_buf`` forces one (None: buf
    when installed). BufError when buf is asked for and cannot run."""
    if use_buf is None:
        try:
            find_buf()
            use_buf = True
        except BufError:
            _log.warning(
                "buf is not installed: contract upgrades are checked with the built-in "
                "copy of buf's WIRE_JSON rules; pip install buf-bin to run buf itself"
            )
            use_buf = False
    if use_buf:
        changes = breaking_between_images(
            file_set(new_files).SerializeToString(),
            file_set(old_files).SerializeToString(),
            dict(UPGRADE_RULES),
        )
        return UpgradeCheck(sorted(changes), "buf")
    return UpgradeCheck(sorted(wire_json_breaking(old_files, new_files)), "built-in")
