"""Methods of a project's contracts that declare no access policy.

The contracts are compiled on the spot into their own descriptor pool, so the check
needs neither generated code nor an installed plugin: it reads the ``.proto`` files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

from nexus_grpc.access.policy import methods_without_policy
from nexus_grpc.codegen import contract_names, run_protoc

__all__ = ["project_methods_without_policy"]


def project_methods_without_policy(proto_root: Path) -> list[str]:
    """Wire paths of the methods under ``proto_root`` without an access rule, sorted.

    CodegenError when protoc rejects the contracts (its messages are on stderr).
    """
    proto_root = proto_root.resolve()
    names = contract_names(proto_root)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "contracts.binpb"
        run_protoc(proto_root, names, f"--descriptor_set_out={out}", "--include_imports")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    # A pool of its own: the project's files may be older or newer than the copies
    # imported into the default pool (the nexus repository's own contracts are).
    pool = descriptor_pool.DescriptorPool()
    for file in files:  # dependencies come first in a set built with --include_imports
        pool.Add(file)
    methods = [
        method
        for name in names
        for service in pool.FindFileByName(name).services_by_name.values()
        for method in service.methods
    ]
    return methods_without_policy(methods)
