"""Compile the `.proto` contracts into Python stubs with ``grpc_tools.protoc``.

Each output folder also gets ``nexus_descriptors.binpb``, the compiled contracts with
their comments, which the REST gateway turns into OpenAPI descriptions.

`proto/` is the source of truth and `generated/` is data derived from it: this module
is the one place that knows how, so `scripts/gen`, `nexus gen` and the freshness test
cannot disagree.
"""

from __future__ import annotations

import filecmp
import importlib.resources
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DESCRIPTOR_SET_NAME",
    "CodegenError",
    "StaleFile",
    "find_stale",
    "generate",
    "include_paths",
    "proto_files",
]

#: File written at the root of every output folder: the compiled contracts as a
#: ``FileDescriptorSet`` with source info (comments). The ``_pb2`` modules drop
#: comments, and the gateway's OpenAPI document reads its descriptions from here.
DESCRIPTOR_SET_NAME = "nexus_descriptors.binpb"


class CodegenError(RuntimeError):
    """protoc rejected the contracts; the message carries its diagnostics."""


@dataclass(frozen=True)
class StaleFile:
    """A generated file that differs from what the contracts produce."""

    path: str
    reason: str


#: The host's contracts, imported by plugins' contracts (policies, field rules).
CORE_PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"


def include_paths() -> list[Path]:
    """Import roots for protoc: well-known types and the google/api protos.

    Both come from installed packages (grpcio-tools, googleapis-common-protos), so
    nothing third-party is copied into the repository.
    """
    from google.api import annotations_pb2

    grpc_tools_root = Path(str(importlib.resources.files("grpc_tools"))) / "_proto"
    api_root = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    return [grpc_tools_root, api_root]


def proto_files(proto_root: Path) -> list[Path]:
    """Every `.proto` under ``proto_root``, sorted so output order is stable."""
    return sorted(proto_root.rglob("*.proto"))


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Compile every contract under ``proto_root`` into ``out_dir``; return the files written."""
    from grpc_tools import protoc

    proto_root = proto_root.resolve()
    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # The host's own contracts (nexus/options/v1/options.proto for policies and field
    # rules) are importable from every plugin's contracts.
    core = [CORE_PROTO_ROOT] if CORE_PROTO_ROOT.is_dir() and proto_root != CORE_PROTO_ROOT else []
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        *(f"-I{path}" for path in core),
        *(f"-I{path}" for path in include_paths()),
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # Only the compiled files, not their imports: each folder documents its own
        # contracts, and the well-known types would just repeat in every set.
        f"--descriptor_set_out={out_dir / DESCRIPTOR_SET_NAME}",
        "--include_source_info",
        *(str(path.relative_to(proto_root)) for path in files),
    ]
    # protoc prints its diagnostics on stderr and returns non-zero.
    code = protoc.main(args)
    if code != 0:
        raise CodegenError(f"protoc failed with exit code {code}; see its messages above")
    _add_package_markers(out_dir)
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def _add_package_markers(out_dir: Path) -> None:
    # Regular packages (not namespace packages) keep setuptools, mypy and importlib in
    # agreement about what `nexus.orders.v1` is.
    for directory in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        if directory == out_dir or directory.name == "__pycache__":
            continue
        marker = directory / "__init__.py"
        if not marker.exists():
            marker.write_text("")


def find_stale(proto_root: Path, generated_dir: Path) -> list[StaleFile]:
    """Compare ``generated_dir`` with a fresh compilation; empty when up to date."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(proto_root, fresh_root)
        fresh = _tree(fresh_root)
        current = _tree(generated_dir)
        stale = [
            StaleFile(name, "missing: run scripts/gen")
            for name in sorted(fresh.keys() - current.keys())
        ]
        stale += [
            StaleFile(name, "no contract produces it: delete it or run scripts/gen")
            for name in sorted(current.keys() - fresh.keys())
        ]
        stale += [
            StaleFile(name, "differs from the contract: run scripts/gen")
            for name in sorted(fresh.keys() & current.keys())
            if not filecmp.cmp(fresh[name], current[name], shallow=False)
        ]
        return stale


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
