"""The live /openapi.json: valid OpenAPI 3.1, and schemathesis finds nothing wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.e2e.conftest import BIN, REPO, start_serve

pytestmark = pytest.mark.e2e

# Checks about the gateway's HTTP behaviour, run with an admin token so every operation
# is reached. Left out on purpose: schemathesis' authentication checks (the attack
# matrix tests cover authentication on both transports), and the positive/negative data
# checks (business rules such as "a create needs items" are in the handlers, not the
# schema).
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


def test_live_document_is_valid_openapi_and_passes_schemathesis(
    tmp_path: Path, probe_stubs: Path
) -> None:
    serve = start_serve(tmp_path, probe_stubs, [REPO / "plugins"], NEXUS_LOG__ACCESS="false")
    try:
        url = f"http://{serve.http_address}/openapi.json"
        document = httpx.get(url, timeout=10).json()
        validate(document)
        assert {
            "/v1/orders",
            "/v1/orders/{id}",
            "/v1/orders/{id}:cancel",
            "/v1/admin/plugins",
        } <= set(document["paths"])
        result = subprocess.run(
            [
                str(BIN / "st"),
                "run",
                url,
                "--checks",
                CHECKS,
                # Endless streams (watches) cannot end within a request timeout.
                "--exclude-path-regex",
                r":watch|/Watch$",
                "--max-examples",
                "20",
                "--generation-deterministic",
                "--phases",
                "examples,coverage,fuzzing",
                "--request-timeout",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-6000:]
        assert " passed" in result.stdout
    finally:
        serve.stop()
