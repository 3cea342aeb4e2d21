"""``nexus lint``: nexus's own checks and buf's, on one project's contracts.

A plugin project needs no copy of the nexus repository: the nexus contracts and the
google/api protos its contracts import come from the installed packages, and buf from
the ``buf-bin`` package (``pip install 'nexus-grpc[author]'``).
"""

from nexus_grpc.lint.buf import BufError, BufReport, find_buf, run_buf_checks
from nexus_grpc.lint.policies import project_methods_without_policy
from nexus_grpc.lint.workspace import LintRules, read_rules

__all__ = [
    "BufError",
    "BufReport",
    "LintRules",
    "find_buf",
    "project_methods_without_policy",
    "read_rules",
    "run_buf_checks",
]
