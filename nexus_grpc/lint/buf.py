"""Running buf (lint, format, breaking) on a project's contracts.

buf comes from the ``buf-bin`` package (the same release as npm's ``@bufbuild/buf``),
found beside the running Python or on ``PATH``. Each check runs in a temporary
workspace (:mod:`nexus_grpc.lint.workspace`); buf's messages name the project's own
files.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nexus_grpc.lint.workspace import PROTO_MODULE, LintRules, build_workspace

__all__ = [
    "BUF_PACKAGE",
    "BufError",
    "BufReport",
    "breaking_between_images",
    "find_buf",
    "run_buf_checks",
]

#: The PyPI package that ships the buf binary.
BUF_PACKAGE = "buf-bin"
#: Seconds one buf run may take.
_TIMEOUT = 300


class BufError(RuntimeError):
    """buf cannot run, or the comparison base cannot be read; the message says why."""


@dataclass
class BufReport:
    """What the buf checks found: failed check names, notes, and what ran."""

    failed: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: str = ""
    #: What buf breaking compared with ("main", a folder); empty when it was skipped.
    against: str = ""


def find_buf() -> str:
    """Path of the buf executable; BufError naming the package to install when missing."""
    beside = Path(sys.executable).parent / ("buf.exe" if os.name == "nt" else "buf")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("buf")
    if found:
        return found
    raise BufError(
        f"buf is not installed: pip install 'nexus-grpc[author]' (or pip install {BUF_PACKAGE})"
    )


def run_buf_checks(
    proto_root: Path,
    rules: LintRules,
    *,
    against: str | None,
    out: Callable[[str], None],
) -> BufReport:
    """buf lint, buf format and buf breaking on ``proto_root``; buf's findings go to ``out``.

    ``against`` is a folder with the previous contracts (a proto root, or a project
    holding ``proto/``) or a git ref; None compares with git's HEAD when the contracts
    are in a git checkout, else breaking is skipped with a note.
    """
    buf = find_buf()
    proto_root = proto_root.resolve()
    report = BufReport(version=_run([buf, "--version"], Path.cwd()).stdout.strip())
    shown = _shown(proto_root)
    with tempfile.TemporaryDirectory(prefix="nexus-lint-") as tmp:
        current = Path(tmp) / "current"
        current.mkdir()
        build_workspace(proto_root, current, rules)
        checks = [
            ("lint", [buf, "lint"]),
            ("format", [buf, "format", PROTO_MODULE, "--diff", "--exit-code"]),
        ]
        base = _comparison_base(proto_root, against, Path(tmp) / "base", report)
        if base is not None:
            previous = Path(tmp) / "previous"
            previous.mkdir()
            build_workspace(base, previous, rules)
            checks.append(("breaking", [buf, "breaking", "--against", str(previous)]))
        for name, command in checks:
            result = _run(command, current)
            text = (result.stdout + result.stderr).strip()
            if text:
                out(_rename(text, shown))
            report.ran.append(name)
            if result.returncode != 0:
                report.failed.append(name)
    return report


def breaking_between_images(new: bytes, old: bytes, breaking: dict[str, object]) -> list[str]:
    """buf breaking of image ``new`` against image ``old``: one line per breaking change.

    Images are serialized ``FileDescriptorSet``s holding every file and its imports (a
    running contract generation's pool gives one; no source tree is needed). ``breaking``
    is the ``breaking`` section of a buf.yaml v2 (``{"use": ["WIRE_JSON"]}``). Lines
    read ``file: message``: images carry no source positions. BufError when buf is
    missing or fails for another reason than breaking changes.
    """
    buf = find_buf()
    config = json.dumps({"version": "v2", "breaking": breaking})
    with tempfile.TemporaryDirectory(prefix="nexus-breaking-") as tmp:
        new_image, old_image = Path(tmp) / "new.binpb", Path(tmp) / "old.binpb"
        new_image.write_bytes(new)
        old_image.write_bytes(old)
        command = [buf, "breaking", str(new_image), "--against", str(old_image)]
        result = _run([*command, "--config", config, "--error-format", "json"], Path(tmp))
    if result.returncode == 0:
        return []
    changes = []
    for line in result.stdout.splitlines():
        try:
            finding = json.loads(line)
        except ValueError:
            continue
        if isinstance(finding, dict) and "message" in finding:
            where = str(finding.get("path", ""))
            changes.append(f"{where}: {finding['message']}" if where else str(finding["message"]))
    if not changes:
        # A failure that is no finding: a broken image, an unknown rule.
        raise BufError(f"buf breaking failed: {(result.stderr or result.stdout).strip()}")
    return changes


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BufError(f"running {' '.join(command[:2])} failed: {error}") from None


def _shown(proto_root: Path) -> str:
    # buf names files by their path in the workspace (proto/acme/v1/acme.proto);
    # the user wants the path of their own file.
    try:
        return os.path.relpath(proto_root)
    except ValueError:  # another drive (Windows)
        return str(proto_root)


def _rename(text: str, shown: str) -> str:
    return re.sub(rf"(^|[\s:]){PROTO_MODULE}/", lambda m: f"{m.group(1)}{shown}/", text, flags=re.M)


def _comparison_base(
    proto_root: Path, against: str | None, into: Path, report: BufReport
) -> Path | None:
    """The previous contracts, or None (with a note) when there is nothing to compare."""
    if against is not None and Path(against).is_dir():
        folder = Path(against)
        report.against = against
        return folder / "proto" if (folder / "proto").is_dir() else folder
    top = _git(["rev-parse", "--show-toplevel"], proto_root)
    if top is None:
        if against is not None:
            raise BufError(f"--against {against}: no such folder, and no git checkout here")
        report.notes.append("buf breaking skipped: not a git checkout (pass --against FOLDER)")
        return None
    ref = against or "HEAD"
    if _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], proto_root) is None:
        if against is not None:
            raise BufError(f"--against {against}: neither a folder nor a git commit")
        report.notes.append("buf breaking skipped: the git checkout has no commit yet")
        return None
    inside = proto_root.relative_to(Path(top).resolve()).as_posix()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, *(["--", inside] if inside != "." else [])],
        cwd=top,
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if archive.returncode != 0:
        # `git archive` fails on a path the commit does not have.
        report.notes.append(f"buf breaking skipped: {ref} has no {inside}/ to compare with")
        return None
    # git archive reads the object store, so it works in shallow clones, detached HEADs
    # and fresh CI clones, and touches neither the index nor the work tree.
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    base = into / inside
    if not any(base.rglob("*.proto")):
        report.notes.append(f"buf breaking skipped: {ref} has no contracts in {inside}/")
        return None
    report.against = ref
    return base


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
