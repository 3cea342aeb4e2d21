"""Files the storage keeps on disk are the owner's only: 0700 directories, 0600 files.

They hold every plugin's data (password hashes among it). Nothing here changes the
process-wide umask: other threads create files meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "make_private_dir", "prepare_sqlite_files"]

#: Permission bits of the files and directories we create.
FILE_MODE, DIR_MODE = 0o600, 0o700

_log = logging.getLogger("nexus.storage")

#: Directories already warned about (one warning per process, not one per opener).
_warned: set[Path] = set()


def prepare_sqlite_files(database: str) -> None:
    """Create the directory (0700) and the database file (0600) before SQLite does.

    SQLite creates a new file with 0644 minus the umask, and its -wal and -shm files
    with the database file's own mode: creating the database file owner-only first is
    what keeps all three so, without touching the process-wide umask.
    """
    path = Path(database)
    make_private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for name in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        _tighten_file(name)


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) owner-only; warn when it exists open to others.

    An existing directory is not changed: it may be shared on purpose (the operator's);
    the files we create in it are owner-only all the same.
    """
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077 and directory.resolve() not in _warned:
        _warned.add(directory.resolve())
        _log.warning(
            "data directory %s is open to other users (mode %o); use chmod 700",
            directory,
            mode,
            extra={"path": str(directory), "mode": f"{mode:o}"},
        )


def _tighten_file(path: Path) -> None:
    """Make an existing file of ours owner-only (files made by older versions were 0644)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700)
        except OSError as error:  # a read-only filesystem, another owner: say so
            _log.warning(
                "%s is open to other users (mode %o) and cannot be changed: %s",
                path,
                mode,
                error.strerror,
            )
