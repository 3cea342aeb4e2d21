"""generated/ is exactly what the contracts compile to."""

from pathlib import Path

import pytest

from nexus_grpc.codegen import find_stale

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("proto", "generated"),
    [("proto", "generated"), ("examples/greeter/proto", "examples/greeter/generated")],
)
def test_generated_code_is_fresh(proto: str, generated: str) -> None:
    stale = find_stale(REPO / proto, REPO / generated)
    assert stale == [], f"run `nexus gen --proto {proto} --out {generated}`: {stale}"


def test_stale_detection_names_the_file(tmp_path: Path) -> None:
    proto = tmp_path / "proto" / "demo" / "v1"
    proto.mkdir(parents=True)
    (proto / "demo.proto").write_text(
        'syntax = "proto3";\npackage demo.v1;\nmessage A { string a = 1; }\n'
    )
    out = tmp_path / "generated"
    assert [s.path for s in find_stale(tmp_path / "proto", out)][:1] == ["demo/__init__.py"]
    from nexus_grpc.codegen import generate

    generate(tmp_path / "proto", out)
    assert find_stale(tmp_path / "proto", out) == []
    (proto / "demo.proto").write_text(
        'syntax = "proto3";\npackage demo.v1;\nmessage A { string b = 1; }\n'
    )
    stale = {s.path: s.reason for s in find_stale(tmp_path / "proto", out)}
    assert stale["demo/v1/demo_pb2.py"] == "differs from the contract: run nexus gen"
