"""The built-in upgrade check and buf agree: the same verdict on every change below.

Each case is a pair of versions of one small contract, compiled by protoc into a pool of
its own; both checkers run on the pair (buf from the venv's buf-bin), and the test
asserts the built-in check refuses exactly what buf refuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from nexus_grpc.codegen import run_protoc
from nexus_grpc.lint.buf import BufError, find_buf
from nexus_grpc.plugins.upgrade import run_upgrade_check

FILE = "parity/v1/parity.proto"
HEAD = 'syntax = "proto3";\npackage parity.v1;\n'
PROTO2 = 'syntax = "proto2";\npackage parity.v1;\n'
SERVICE = """
service S {
  rpc Get(M) returns (M);
  rpc Watch(M) returns (stream M);
}
"""
BASE = (
    HEAD
    + SERVICE
    + """
message M {
  string name = 1;
  int32 count = 2;
  map<string, string> labels = 3;
  Color color = 4;
  oneof choice {
    string text = 5;
    int64 number = 6;
  }
  string note = 7;
  optional string maybe = 8;
  repeated string tags = 9;
  int64 big = 10;
  reserved 20;
  reserved "old";
}
enum Color {
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
  COLOR_GREEN = 2;
}
"""
)


def _edit(*pairs: tuple[str, str], base: str = BASE) -> str:
    text = base
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


BASE2 = (
    PROTO2
    + """
message M {
  optional string name = 1 [default = "x"];
  required int32 id = 2;
  optional float ratio = 3 [default = 0.5];
}
"""
)

EXT = (
    PROTO2
    + """
message Base {
  extensions 100 to 200;
}
extend Base {
  optional int32 level = 100;
}
message Holder {
  extend Base {
    repeated string notes = 101;
  }
}
"""
)
SMALL3 = HEAD + "message A {\n  string x = 1;\n}\nenum E {\n  E_UNSPECIFIED = 0;\n}\n"

EDITION = 'edition = "2023";\npackage parity.v1;\n' + SMALL3.removeprefix(HEAD)

#: name → (old contract, new contract, whether buf refuses it)
CASES: dict[str, tuple[str, str, bool]] = {
    "same": (BASE, BASE, False),
    "field added": (
        BASE,
        _edit(("  int64 big = 10;", "  int64 big = 10;\n  bool fresh = 11;")),
        False,
    ),
    "enum value added": (
        BASE,
        _edit(("COLOR_GREEN = 2;", "COLOR_GREEN = 2;\n  COLOR_BLUE = 3;")),
        False,
    ),
    "method added": (
        BASE,
        _edit(("rpc Get(M) returns (M);", "rpc Get(M) returns (M);\n  rpc Put(M) returns (M);")),
        False,
    ),
    "enum value deleted, number reserved only": (
        BASE,
        _edit(("  COLOR_GREEN = 2;\n", "  reserved 2;\n")),
        True,
    ),
    "enum value deleted, number and name reserved": (
        BASE,
        _edit(("  COLOR_GREEN = 2;\n", '  reserved 2;\n  reserved "COLOR_GREEN";\n')),
        False,
    ),
    "enum value deleted outright": (BASE, _edit(("  COLOR_GREEN = 2;\n", "")), True),
    "enum value renamed": (BASE, _edit(("COLOR_GREEN = 2;", "COLOR_LIME = 2;")), True),
    "enum value number changed": (BASE, _edit(("COLOR_GREEN = 2;", "COLOR_GREEN = 3;")), True),
    "enum alias added": (
        BASE,
        _edit(
            ("enum Color {\n", "enum Color {\n  option allow_alias = true;\n"),
            ("COLOR_GREEN = 2;", "COLOR_GREEN = 2;\n  COLOR_LIME = 2;"),
        ),
        False,
    ),
    "enum alias removed": (
        _edit(
            ("enum Color {\n", "enum Color {\n  option allow_alias = true;\n"),
            ("COLOR_GREEN = 2;", "COLOR_GREEN = 2;\n  COLOR_LIME = 2;"),
        ),
        BASE,
        True,
    ),
    "field deleted, number reserved only": (
        BASE,
        _edit(("  string note = 7;\n", ""), ("reserved 20;", "reserved 7, 20;")),
        True,
    ),
    "field deleted, number and name reserved": (
        BASE,
        _edit(
            ("  string note = 7;\n", ""),
            ("reserved 20;", "reserved 7, 20;"),
            ('reserved "old";', 'reserved "old", "note";'),
        ),
        False,
    ),
    "field deleted outright": (BASE, _edit(("  string note = 7;\n", "")), True),
    "map value type changed": (
        BASE,
        _edit(("map<string, string> labels", "map<string, int64> labels")),
        True,
    ),
    "map key type changed": (
        BASE,
        _edit(("map<string, string> labels", "map<int32, string> labels")),
        True,
    ),
    "map to repeated": (
        BASE,
        _edit(
            (
                "map<string, string> labels = 3;",
                "repeated LabelsEntry labels = 3;\n  message LabelsEntry {\n    string key = 1;\n    string value = 2;\n  }",
            )
        ),
        True,
    ),
    "field moved into a oneof": (
        BASE,
        _edit(
            ("  string note = 7;\n", ""),
            ("    int64 number = 6;\n", "    int64 number = 6;\n    string note = 7;\n"),
        ),
        True,
    ),
    "field moved out of a oneof": (
        BASE,
        _edit(
            ("    int64 number = 6;\n", ""),
            ("  string note = 7;\n", "  string note = 7;\n  int64 number = 6;\n"),
        ),
        True,
    ),
    "oneof renamed": (BASE, _edit(("oneof choice {", "oneof pick {")), True),
    "oneof gains a new field": (
        BASE,
        _edit(("    int64 number = 6;\n", "    int64 number = 6;\n    bool flag = 12;\n")),
        False,
    ),
    "int32 to uint32": (BASE, _edit(("int32 count = 2;", "uint32 count = 2;")), False),
    "int32 to int64": (BASE, _edit(("int32 count = 2;", "int64 count = 2;")), True),
    "int32 to sint32": (BASE, _edit(("int32 count = 2;", "sint32 count = 2;")), True),
    "int64 to uint64": (BASE, _edit(("int64 big = 10;", "uint64 big = 10;")), False),
    "int64 to fixed64": (BASE, _edit(("int64 big = 10;", "fixed64 big = 10;")), True),
    "string to bytes": (BASE, _edit(("string name = 1;", "bytes name = 1;")), True),
    "enum to int32": (BASE, _edit(("Color color = 4;", "int32 color = 4;")), True),
    "field number changed": (BASE, _edit(("string note = 7;", "string note = 17;")), True),
    "enum field to another enum": (
        BASE,
        _edit(
            ("Color color = 4;", "Shade color = 4;"),
            ("enum Color {", "enum Shade {\n  SHADE_UNSPECIFIED = 0;\n}\nenum Color {"),
        ),
        True,
    ),
    "enum field to a nested enum of the same name and values": (
        BASE,
        _edit(
            ("Color color = 4;", "Inner.Color color = 4;"),
            (
                "enum Color {",
                "message Inner {\n  enum Color {\n    COLOR_UNSPECIFIED = 0;\n"
                "    COLOR_RED = 1;\n    COLOR_GREEN = 2;\n  }\n}\nenum Color {",
            ),
        ),
        False,
    ),
    "field renamed": (BASE, _edit(("string note = 7;", "string remark = 7;")), True),
    "json_name changed": (
        BASE,
        _edit(("string note = 7;", 'string note = 7 [json_name = "memo"];')),
        True,
    ),
    "json_name set to its default": (
        BASE,
        _edit(("string note = 7;", 'string note = 7 [json_name = "note"];')),
        False,
    ),
    "singular to repeated": (BASE, _edit(("string note = 7;", "repeated string note = 7;")), True),
    "repeated to singular": (BASE, _edit(("repeated string tags = 9;", "string tags = 9;")), True),
    "implicit to explicit presence": (
        BASE,
        _edit(("string note = 7;", "optional string note = 7;")),
        False,
    ),
    "explicit to implicit presence": (
        BASE,
        _edit(("optional string maybe = 8;", "string maybe = 8;")),
        False,
    ),
    "message type of a field changed": (
        BASE,
        _edit(
            ("  string name = 1;", "  N name = 1;"),
            ("enum Color {", "message N {\n  string name = 1;\n}\nenum Color {"),
        ),
        True,
    ),
    "method request type changed": (
        BASE,
        _edit(
            ("rpc Get(M) returns (M);", "rpc Get(N) returns (M);"),
            ("enum Color {", "message N {}\nenum Color {"),
        ),
        True,
    ),
    "method client streaming added": (
        BASE,
        _edit(("rpc Get(M) returns (M);", "rpc Get(stream M) returns (M);")),
        True,
    ),
    "method server streaming removed": (
        BASE,
        _edit(("rpc Watch(M) returns (stream M);", "rpc Watch(M) returns (M);")),
        True,
    ),
    "method idempotency changed": (
        BASE,
        _edit(
            (
                "rpc Get(M) returns (M);",
                "rpc Get(M) returns (M) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n  }",
            )
        ),
        True,
    ),
    "method deleted": (BASE, _edit(("  rpc Watch(M) returns (stream M);\n", "")), True),
    "service deleted": (BASE, _edit((SERVICE, "\n")), True),
    "reserved number dropped": (BASE, _edit(("  reserved 20;\n", "")), True),
    "reserved name dropped": (BASE, _edit(('  reserved "old";\n', "")), True),
    "reserved range widened": (BASE, _edit(("reserved 20;", "reserved 20 to 25;")), False),
    "message deleted, unused": (
        BASE,
        _edit(("enum Color {", "message Spare {}\nenum Color {")),
        False,
    ),
    "extension type changed": (
        EXT,
        _edit(("optional int32 level", "optional string level"), base=EXT),
        True,
    ),
    "extension int32 to uint32": (
        EXT,
        _edit(("optional int32 level", "optional uint32 level"), base=EXT),
        False,
    ),
    "extension renamed": (
        EXT,
        _edit(("optional int32 level", "optional int32 depth"), base=EXT),
        True,
    ),
    "nested extension to singular": (
        EXT,
        _edit(("repeated string notes", "optional string notes"), base=EXT),
        True,
    ),
    "extension deleted": (
        EXT,
        _edit(("extend Base {\n  optional int32 level = 100;\n}\n", ""), base=EXT),
        False,
    ),
    "proto3 file to proto2": (
        SMALL3,
        _edit((HEAD, PROTO2), ("string x = 1;", "optional string x = 1;"), base=SMALL3),
        True,
    ),
    "message JSON format to legacy (editions)": (
        EDITION,
        _edit(
            ("message A {\n", "message A {\n  option features.json_format = LEGACY_BEST_EFFORT;\n"),
            base=EDITION,
        ),
        True,
    ),
    "enum JSON format to legacy (editions)": (
        EDITION,
        _edit(
            ("enum E {\n", "enum E {\n  option features.json_format = LEGACY_BEST_EFFORT;\n"),
            base=EDITION,
        ),
        True,
    ),
    "file JSON format to legacy (editions)": (
        EDITION,
        _edit(
            (
                "package parity.v1;\n",
                "package parity.v1;\noption features.json_format = LEGACY_BEST_EFFORT;\n",
            ),
            base=EDITION,
        ),
        True,
    ),
    "package changed": (
        SMALL3,
        _edit(("package parity.v1;", "package parity.v2;"), base=SMALL3),
        True,
    ),
    "enum value deleted, name reserved only": (
        BASE,
        _edit(("  COLOR_GREEN = 2;\n", '  reserved "COLOR_GREEN";\n')),
        True,
    ),
    "enum reserved number dropped": (
        _edit(("COLOR_GREEN = 2;", "COLOR_GREEN = 2;\n  reserved 9;")),
        BASE,
        True,
    ),
    "proto2 default changed": (
        BASE2,
        _edit(('[default = "x"]', '[default = "y"]'), base=BASE2),
        True,
    ),
    "proto2 float default to double": (
        BASE2,
        _edit(("optional float ratio = 3", "optional double ratio = 3"), base=BASE2),
        True,
    ),
    "proto2 required to optional": (
        BASE2,
        _edit(("required int32 id", "optional int32 id"), base=BASE2),
        True,
    ),
    "proto2 optional to required": (
        BASE2,
        _edit(("optional string name = 1", "required string name = 1"), base=BASE2),
        True,
    ),
    "proto2 required field added": (
        BASE2,
        _edit(
            ("  optional float ratio", "  required bool flag = 4;\n  optional float ratio"),
            base=BASE2,
        ),
        True,
    ),
}


@pytest.fixture(scope="module")
def buf() -> str:
    try:
        return find_buf()
    except BufError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


def _compile(text: str, folder: Path) -> FileDescriptor:
    """The contract ``text`` compiled by protoc, in a pool of its own."""
    proto = folder / FILE
    proto.parent.mkdir(parents=True)
    proto.write_text(text)
    run_protoc(folder, [FILE], f"--descriptor_set_out={folder / 'set.binpb'}", "--include_imports")
    files = descriptor_pb2.FileDescriptorSet.FromString((folder / "set.binpb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindFileByName(FILE)


@pytest.mark.parametrize("case", list(CASES))
def test_the_built_in_check_agrees_with_buf(case: str, buf: str, tmp_path: Path) -> None:
    """buf and the built-in check, on one pair: both refuse it or both accept it."""
    old_text, new_text, refused = CASES[case]
    old = _compile(old_text, tmp_path / "old")
    new = _compile(new_text, tmp_path / "new")
    by_buf = run_upgrade_check([old], [new], use_buf=True).changes
    built_in = run_upgrade_check([old], [new], use_buf=False).changes
    # buf's verdict is the reference; the case's expectation documents it.
    assert bool(by_buf) == refused, by_buf
    assert bool(built_in) == bool(by_buf), f"buf: {by_buf}\nbuilt-in: {built_in}"
    if by_buf:
        assert all(change.startswith(f"{FILE}: ") for change in built_in), built_in


@pytest.mark.parametrize(
    "case",
    [
        "enum value deleted, number reserved only",
        "enum value renamed",
        "field deleted, number reserved only",
        "map value type changed",
        "field moved into a oneof",
        "int32 to uint32",
        "field deleted, number and name reserved",
    ],
)
def test_the_built_in_check_alone(case: str, tmp_path: Path) -> None:
    """The production case (no buf in the image): the verdicts buf gives above."""
    old_text, new_text, refused = CASES[case]
    old = _compile(old_text, tmp_path / "old")
    new = _compile(new_text, tmp_path / "new")
    result = run_upgrade_check([old], [new], use_buf=False)
    assert result.checker == "built-in"
    assert bool(result.changes) == refused, result.changes
