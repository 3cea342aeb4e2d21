"""Compile the `.proto` contracts into Python stubs with ``grpc_tools.protoc``.

Beside every generated ``_pb2`` module go its ``.proto`` source (so an installed
package ships the contracts it was built from, as googleapis-common-protos does) and
``nexus_descriptors.binpb``, that folder's compiled contracts with their comments,
which the REST gateway turns into OpenAPI descriptions.

`proto/` is the source of truth and `generated/` is data derived from it: this module
is the one place that knows how, so `scripts/gen`, `nexus gen` and the freshness test
cannot disagree. Each run records the files it produced in ``.nexus-gen`` at the top
of the output folder; the next run deletes only files listed there that no contract
produces any more (see :func:`generate`), so nothing it did not write is ever removed.

Every folder gets an ``__init__.py`` but the top-level ones other than ``nexus``: a
protobuf package's first part is often an organisation prefix (``acme`` of
``acme.notes.v1``) that several plugin distributions share, so it is a namespace
package, which no distribution owns and which joins the ``acme`` folders of every
installed or editable plugin. ``nexus`` belongs to nexus-grpc alone.
"""

from __future__ import annotations

import filecmp
import importlib.resources
import importlib.util
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from google.protobuf import descriptor_pb2

__all__ = [
    "DESCRIPTOR_SET_NAME",
    "MANIFEST_NAME",
    "CodegenError",
    "Generated",
    "OutputFolderError",
    "StaleFile",
    "check_folders",
    "contract_names",
    "core_proto_root",
    "find_stale",
    "generate",
    "include_paths",
    "proto_files",
    "run_protoc",
]

#: File written beside the generated modules of every contract folder: that folder's
#: contracts as a ``FileDescriptorSet`` with source info (comments). The ``_pb2``
#: modules drop comments, and the gateway's OpenAPI document reads its descriptions
#: from here.
DESCRIPTOR_SET_NAME = "nexus_descriptors.binpb"

#: The record, at the top of the output folder, of every file a run produced (sorted
#: relative POSIX paths): what the next run may delete. It lies outside every package,
#: so wheels never ship it; it belongs in version control beside the stubs.
MANIFEST_NAME = ".nexus-gen"
_MANIFEST_HEADER = (
    "# Written by `nexus gen`: the files it produced here. The next run deletes those of\n"
    "# them no contract produces any more, and nothing else. Do not edit.\n"
)

#: Files that mark a project folder; the output folder must not be one.
_PROJECT_MARKERS = ("pyproject.toml", "buf.yaml", "setup.py", "setup.cfg")

#: The generated package of the host's own contracts, and a file every copy of it has.
CORE_PACKAGE = "nexus"
_CORE_MARKER = "nexus/options/v1/options.proto"


class CodegenError(RuntimeError):
    """protoc rejected the contracts; the message carries its diagnostics."""


class OutputFolderError(CodegenError):
    """The output folder is one generating must not write to; the message says why."""


@dataclass(frozen=True)
class Generated:
    """What :func:`generate` did to the output folder."""

    #: Files written (every file the contracts produce, but an ``__init__.py`` that was
    #: already there).
    written: list[Path]
    #: Files of deleted or renamed contracts that were removed.
    removed: list[Path]


@dataclass(frozen=True)
class StaleFile:
    """A generated file that differs from what the contracts produce."""

    path: str
    reason: str


def core_proto_root() -> Path | None:
    """The import root of the installed nexus contracts (``nexus/options/v1/...``).

    They ship beside the generated ``nexus`` package's modules, so this is the folder
    holding that package: ``site-packages`` when installed, ``generated/`` in an
    editable install of the repository. None when the package ships no sources.
    """
    try:
        spec = importlib.util.find_spec(CORE_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location).resolve().parent
        if (root / _CORE_MARKER).is_file():
            return root
    return None


def include_paths() -> list[Path]:
    """Import roots for protoc: the nexus contracts, well-known types, google/api.

    All come from installed packages (nexus-grpc, grpcio-tools,
    googleapis-common-protos), so nothing is copied into a project and nothing depends
    on where the nexus repository is.
    """
    from google.api import annotations_pb2

    grpc_tools_root = Path(str(importlib.resources.files("grpc_tools"))) / "_proto"
    api_root = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    core = core_proto_root()
    roots = [*([core] if core else []), grpc_tools_root, api_root]
    return list(dict.fromkeys(roots))


def proto_files(proto_root: Path) -> list[Path]:
    """Every `.proto` under ``proto_root``, sorted so output order is stable."""
    return sorted(proto_root.rglob("*.proto"))


def generate(proto_root: Path, out_dir: Path) -> Generated:
    """Compile every contract under ``proto_root`` into ``out_dir``.

    Then delete what no contract produces any more: the files the previous run listed
    in ``out_dir/.nexus-gen`` that this run did not produce (an ``__init__.py`` only
    while empty), and the folders (with their ``__pycache__``) this leaves empty. With
    no such record nothing is deleted. Anything else is never touched, and an existing
    ``__init__.py`` is never overwritten. Raises :class:`OutputFolderError` for an
    ``out_dir`` that holds ``proto_root``, lies inside it or is a project folder.
    """
    check_folders(proto_root, out_dir)
    previous = _read_manifest(out_dir)  # before this run's record replaces it
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "out"
        _compile(proto_root, fresh)
        produced = _tree(fresh)
        written = []
        for name, source in produced.items():
            target = out_dir / name
            if source.name == "__init__.py" and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            written.append(target)
    removed = _remove_leftovers(out_dir, _leftovers(out_dir, previous, produced.keys()))
    return Generated(written=sorted(written), removed=removed)


def check_folders(proto_root: Path, out_dir: Path) -> None:
    """Refuse an output folder where generating could overwrite or delete the user's
    files: one holding the contracts, one inside them, or a project folder."""
    proto, out = proto_root.resolve(), out_dir.resolve()
    advice = "use a folder of generated code only, such as <project>/generated"
    if proto.is_relative_to(out):
        raise OutputFolderError(
            f"output folder {out_dir} holds the contracts folder {proto_root}; {advice}"
        )
    if out.is_relative_to(proto):
        raise OutputFolderError(
            f"output folder {out_dir} is inside the contracts folder {proto_root} (its "
            f"copies of the contracts would be compiled again); {advice}"
        )
    for marker in _PROJECT_MARKERS:
        if (out / marker).exists():
            raise OutputFolderError(
                f"output folder {out_dir} holds {marker}, so it is a project folder; {advice}"
            )


def contract_names(proto_root: Path) -> list[str]:
    """The `.proto` files under ``proto_root`` (resolved), as protoc names them;
    CodegenError when there is none."""
    names = [path.relative_to(proto_root).as_posix() for path in proto_files(proto_root)]
    if not names:
        raise CodegenError(f"no .proto files under {proto_root}")
    return names


def run_protoc(proto_root: Path, names: list[str], *outputs: str) -> None:
    """protoc on ``names`` under ``proto_root`` with the ``outputs`` options;
    CodegenError when it fails (its diagnostics are on stderr)."""
    from grpc_tools import protoc

    code = protoc.main(
        [
            "grpc_tools.protoc",
            # The project's own folder first: its files win over installed copies (the
            # nexus repository compiles the core contracts it also has installed).
            f"-I{proto_root}",
            *(f"-I{path}" for path in include_paths()),
            *outputs,
            *names,
        ]
    )
    if code != 0:
        raise CodegenError(f"protoc failed with exit code {code}; see its messages above")


def _compile(proto_root: Path, out_dir: Path) -> None:
    """protoc's output for every contract under ``proto_root``, into the new ``out_dir``."""
    proto_root = proto_root.resolve()
    names = contract_names(proto_root)
    files = [proto_root / name for name in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / DESCRIPTOR_SET_NAME
        run_protoc(
            proto_root,
            names,
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            # Only the compiled files, not their imports: each folder documents its own
            # contracts, and the well-known types would just repeat in every set.
            f"--descriptor_set_out={descriptor_set}",
            "--include_source_info",
        )
        _split_descriptor_set(descriptor_set.read_bytes(), out_dir)
    for path, name in zip(files, names, strict=True):
        shutil.copyfile(path, out_dir / name)
    _add_package_markers(out_dir)
    _write_manifest(out_dir)


def _write_manifest(out_dir: Path) -> None:
    # Sorted POSIX paths: the same contracts give the same bytes on every machine, so
    # the record is compared like any generated file (find_stale).
    names = sorted(name for name in _tree(out_dir) if name != MANIFEST_NAME)
    (out_dir / MANIFEST_NAME).write_text(
        _MANIFEST_HEADER + "".join(f"{name}\n" for name in names), encoding="utf-8"
    )


def _read_manifest(out_dir: Path) -> list[str]:
    """The files the previous run in ``out_dir`` recorded; none without a record."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CodegenError(f"cannot read {path}: {error}; delete it to start over") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _leftovers(out_dir: Path, listed: Iterable[str], produced: Iterable[str]) -> list[str]:
    """Files ``listed`` in the previous record that are not ``produced`` now, still
    there and safe to delete: inside ``out_dir`` and, for ``__init__.py``, empty (one
    with content is the user's)."""
    keep = {*produced, MANIFEST_NAME}
    root = out_dir.resolve()
    found = []
    for name in sorted(set(listed) - keep):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            continue  # not something a run writes; never follow it out of the folder
        path = out_dir.joinpath(*relative.parts)
        if not path.is_file() or path.is_symlink() or not path.resolve().is_relative_to(root):
            continue
        if path.name == "__init__.py" and path.stat().st_size:
            continue
        found.append(relative.as_posix())
    return found


def _remove_leftovers(out_dir: Path, leftovers: Iterable[str]) -> list[Path]:
    removed = []
    for name in leftovers:
        (out_dir / name).unlink()
        removed.append(out_dir / name)
    # Folders emptied by that, deepest first; a __pycache__ alone holds only caches of
    # the modules just deleted.
    for folder in sorted({p.parent for p in removed}, key=lambda p: len(p.parts), reverse=True):
        while folder != out_dir and folder.is_relative_to(out_dir) and folder.is_dir():
            rest = [p for p in folder.iterdir() if p.name != "__pycache__"]
            if rest:
                break
            shutil.rmtree(folder)
            folder = folder.parent
    return removed


def _split_descriptor_set(data: bytes, out_dir: Path) -> None:
    # One set per contract folder, beside its modules: a package carries the
    # descriptions of exactly the contracts it ships, wherever it is installed.
    by_folder: defaultdict[str, list[descriptor_pb2.FileDescriptorProto]] = defaultdict(list)
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        by_folder[str(PurePosixPath(file.name).parent)].append(file)
    for folder, folder_files in by_folder.items():
        target = out_dir / folder / DESCRIPTOR_SET_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=folder_files).SerializeToString(
                deterministic=True
            )
        )


def _add_package_markers(out_dir: Path) -> None:
    # Regular packages (not namespace packages) keep setuptools, mypy and importlib in
    # agreement about what `nexus.orders.v1` is; the top level (but nexus) is a
    # namespace package, which plugins under one prefix share (module docstring).
    for directory in out_dir.rglob("*"):
        if not directory.is_dir() or directory.name == "__pycache__":
            continue
        if directory.parent == out_dir and directory.name != CORE_PACKAGE:
            continue
        marker = directory / "__init__.py"
        if not marker.exists():
            marker.write_text("")


def find_stale(proto_root: Path, generated_dir: Path) -> list[StaleFile]:
    """Compare ``generated_dir`` with a fresh compilation; empty when up to date.

    Left-over files are those the record of the last run lists and no contract
    produces now; the user's own files in the folder are never stale.
    """
    check_folders(proto_root, generated_dir)
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        _compile(proto_root, fresh_root / "out")
        fresh = _tree(fresh_root / "out")
        current = _tree(generated_dir)
        stale = [
            StaleFile(name, "missing: run nexus gen")
            for name in sorted(fresh.keys() - current.keys())
        ]
        stale += (
            [
                StaleFile(name, "no contract produces it: run nexus gen to delete it")
                for name in _leftovers(generated_dir, _read_manifest(generated_dir), fresh)
            ]
            if generated_dir.is_dir()
            else []
        )
        stale += [
            StaleFile(name, "differs from the contract: run nexus gen")
            for name in sorted(fresh.keys() & current.keys())
            if not filecmp.cmp(fresh[name], current[name], shallow=False)
            # An __init__.py of the user's is kept by generate, so it is not stale.
            and not (name.endswith("__init__.py") and current[name].stat().st_size)
        ]
        return stale


def _tree(root: Path) -> dict[str, Path]:
    """Every file under ``root`` but caches, by its POSIX path relative to ``root``."""
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
