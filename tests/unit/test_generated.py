"""generated/ is exactly what the contracts compile to."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_grpc.codegen import DESCRIPTOR_SET_NAME, find_stale, generate

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
    assert [s.path for s in find_stale(tmp_path / "proto", out)][:1] == ["demo/v1/__init__.py"]
    generate(tmp_path / "proto", out)
    assert find_stale(tmp_path / "proto", out) == []
    (proto / "demo.proto").write_text(
        'syntax = "proto3";\npackage demo.v1;\nmessage A { string b = 1; }\n'
    )
    stale = {s.path: s.reason for s in find_stale(tmp_path / "proto", out)}
    assert stale["demo/v1/demo_pb2.py"] == "differs from the contract: run nexus gen"


def _contract(root: Path, package: str, message: str = "A") -> Path:
    folder = root.joinpath(*package.split("."))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.split('.')[-2]}.proto"
    path.write_text(f'syntax = "proto3";\npackage {package};\nmessage {message} {{}}\n')
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_generate_removes_what_deleted_and_renamed_contracts_left(tmp_path: Path) -> None:
    proto, out = tmp_path / "proto", tmp_path / "generated"
    old = _contract(proto, "demo.v1")
    _contract(proto, "gone.v1")
    first = generate(proto, out)
    assert first.removed == [] and out / "demo/v1/demo_pb2.py" in first.written
    # The user's own files in the output folder, which generating never touches.
    (out / "demo" / "v1" / "helpers.py").write_text("X = 1\n")
    (out / "demo" / "v1" / "notes.txt").write_text("mine\n")
    (out / "gone" / "v1" / "__pycache__").mkdir()
    (out / "gone" / "v1" / "__pycache__" / "gone_pb2.cpython-311.pyc").write_bytes(b"")
    old.rename(old.with_name("renamed.proto"))
    (proto / "gone" / "v1" / "gone.proto").unlink()

    stale = {s.path: s.reason for s in find_stale(proto, out)}
    assert stale["demo/v1/demo_pb2.py"] == "no contract produces it: run nexus gen to delete it"
    assert "demo/v1/helpers.py" not in stale and "demo/v1/notes.txt" not in stale

    second = generate(proto, out)
    names = [str(p.relative_to(out)) for p in second.removed]
    assert names == [
        "demo/v1/demo.proto",
        "demo/v1/demo_pb2.py",
        "demo/v1/demo_pb2.pyi",
        "demo/v1/demo_pb2_grpc.py",
        "gone/v1/__init__.py",
        "gone/v1/gone.proto",
        "gone/v1/gone_pb2.py",
        "gone/v1/gone_pb2.pyi",
        "gone/v1/gone_pb2_grpc.py",
        f"gone/v1/{DESCRIPTOR_SET_NAME}",
    ]
    # Only what this run wrote: the renamed contract's files, not the kept __init__.py.
    assert {str(p.relative_to(out)) for p in second.written} == {
        "demo/v1/renamed.proto",
        "demo/v1/renamed_pb2.py",
        "demo/v1/renamed_pb2.pyi",
        "demo/v1/renamed_pb2_grpc.py",
        f"demo/v1/{DESCRIPTOR_SET_NAME}",
    }
    assert not (out / "gone").exists()
    assert _files(out) == {
        "demo/v1/__init__.py",
        "demo/v1/helpers.py",
        "demo/v1/notes.txt",
        *(str(p.relative_to(out)) for p in second.written),
    }
    assert find_stale(proto, out) == []


def test_a_package_marker_of_the_users_is_kept(tmp_path: Path) -> None:
    proto, out = tmp_path / "proto", tmp_path / "generated"
    _contract(proto, "demo.v1")
    generate(proto, out)
    (out / "demo" / "v1" / "__init__.py").write_text('"""Mine."""\n')
    generate(proto, out)
    assert (out / "demo" / "v1" / "__init__.py").read_text() == '"""Mine."""\n'
    assert find_stale(proto, out) == []


def test_a_shared_prefix_is_a_namespace_package_two_projects_join(tmp_path: Path) -> None:
    # acme.notes.v1 and acme.tasks.v1 in two projects (two plugin distributions): the
    # top level acme has no __init__.py, so importing one does not hide the other.
    for name in ("notes", "tasks"):
        _contract(tmp_path / name / "proto", f"acme.{name}.v1")
        generate(tmp_path / name / "proto", tmp_path / name / "generated")
        assert not (tmp_path / name / "generated" / "acme" / "__init__.py").exists()
        assert (tmp_path / name / "generated" / "acme" / name / "__init__.py").is_file()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(tmp_path / n / "generated") for n in ("notes", "tasks")),
    }
    imported = subprocess.run(
        [sys.executable, "-c", "import acme.notes.v1.notes_pb2, acme.tasks.v1.tasks_pb2"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
