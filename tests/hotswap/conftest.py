"""Hot swap tests: the swap contract's stubs (compiled at import, as the other test
contracts are) and a folder of plugins the tests rewrite while the host runs."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

from nexus_grpc.codegen import generate

HERE = Path(__file__).resolve().parent


def _compile() -> Path:
    out = Path(tempfile.mkdtemp(prefix="nexus-swap-stubs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    generate(HERE / "proto", out)
    sys.path.insert(0, str(out))
    return out


#: Folder of the compiled swap stubs (for subprocesses' PYTHONPATH).
SWAP_STUBS = _compile()
