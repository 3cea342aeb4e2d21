"""generated/ is exactly what the contracts compile to."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_grpc.cli import main
from nexus_grpc.codegen import (
    DESCRIPTOR_SET_NAME,
    MANIFEST_NAME,
    OutputFolderError,
    find_stale,
    generate,
)

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
    missing = [s.path for s in find_stale(tmp_path / "proto", out)]
    assert missing[:2] == [MANIFEST_NAME, "demo/v1/__init__.py"]
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
        MANIFEST_NAME,
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


def _listed(out: Path) -> list[str]:
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    return [line for line in lines if not line.startswith("#")]


def test_the_record_lists_every_produced_file_sorted(tmp_path: Path) -> None:
    proto, out = tmp_path / "proto", tmp_path / "generated"
    _contract(proto, "demo.v1")
    generate(proto, out)
    assert _listed(out) == sorted(_files(out) - {MANIFEST_NAME})
    assert "demo/v1/demo_pb2.py" in _listed(out)
    before = (out / MANIFEST_NAME).read_bytes()
    generate(proto, out)
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_files_nexus_gen_did_not_write_are_never_deleted_nor_stale(tmp_path: Path) -> None:
    proto, out = tmp_path / "proto", tmp_path / "generated"
    _contract(proto, "demo.v1")
    generate(proto, out)
    # The user's own files, named like generated ones or empty package markers.
    mine = {
        "mine/__init__.py": "",
        "mine/v1/__init__.py": "",
        "mine/v1/other_pb2.py": "X = 1\n",
        "mine/v1/other.proto": 'syntax = "proto3";\n',
        f"mine/v1/{DESCRIPTOR_SET_NAME}": "",
        "demo/v1/extra_pb2.py": "Y = 2\n",
        ".venv/lib/site-packages/google/protobuf/descriptor_pb2.py": "Z = 3\n",
    }
    for name, text in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    assert find_stale(proto, out) == []
    assert generate(proto, out).removed == []
    assert {name: (out / name).read_text() for name in mine} == mine


def test_without_a_record_nothing_is_deleted(tmp_path: Path) -> None:
    # A folder generated before records existed: its left-overs stay, and --check asks
    # for the record to be written.
    proto, out = tmp_path / "proto", tmp_path / "generated"
    _contract(proto, "demo.v1")
    gone = _contract(proto, "gone.v1")
    generate(proto, out)
    (out / MANIFEST_NAME).unlink()
    gone.unlink()
    assert [(s.path, s.reason) for s in find_stale(proto, out)] == [
        (MANIFEST_NAME, "missing: run nexus gen")
    ]
    assert generate(proto, out).removed == []
    assert (out / "gone/v1/gone_pb2.py").is_file()
    assert "gone/v1/gone_pb2.py" not in _listed(out)


def test_a_record_never_leads_outside_the_folder_nor_to_a_users_init(tmp_path: Path) -> None:
    proto, out = tmp_path / "proto", tmp_path / "generated"
    _contract(proto, "demo.v1")
    gone = _contract(proto, "gone.v1")
    generate(proto, out)
    (out / "gone/v1/__init__.py").write_text('"""Mine."""\n')
    outside = tmp_path / "outside_pb2.py"
    outside.write_text("X = 1\n")
    record = out / MANIFEST_NAME
    record.write_text(record.read_text() + f"../outside_pb2.py\n{outside}\n")
    gone.unlink()
    removed = {str(p.relative_to(out)) for p in generate(proto, out).removed}
    assert "gone/v1/gone_pb2.py" in removed and "gone/v1/__init__.py" not in removed
    assert outside.is_file()
    assert (out / "gone/v1/__init__.py").read_text() == '"""Mine."""\n'


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        (".", "holds the contracts folder"),
        ("proto/build", "is inside the contracts folder"),
        ("elsewhere", "holds pyproject.toml, so it is a project folder"),
    ],
)
def test_an_output_folder_that_holds_the_users_files_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    out: str,
    problem: str,
) -> None:
    # `nexus gen --out .` in a project once deleted its contracts and its .venv's stubs.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "1"\n')
    contract = _contract(tmp_path / "proto", "demo.v1")
    venv_stub = tmp_path / ".venv/lib/site-packages/google/protobuf/descriptor_pb2.py"
    venv_stub.parent.mkdir(parents=True)
    venv_stub.write_text("X = 1\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    for check in ([], ["--check"]):
        assert main(["gen", "--out", out, *check]) == 2
        assert problem in capsys.readouterr().err
    assert _files(tmp_path) == before and contract.is_file()
    with pytest.raises(OutputFolderError, match=problem):
        generate(tmp_path / "proto", tmp_path / out)
