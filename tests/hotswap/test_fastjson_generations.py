"""REST JSON of two versions of one message type: each version its own converters.

The first version lives in the default pool (as a plugin's first load does), the
second in a generation's pool; both go through the gateway's codec in one process.
"""

from __future__ import annotations

import gc
import importlib
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, duration_pb2

from nexus_grpc import codegen
from nexus_grpc.errors import InvalidArgumentError
from nexus_grpc.gateway.codec import JsonOptions, message_to_value, parse_json_into
from nexus_grpc.plugins.generations import Generation, load_generation

PB2 = "genjson.box.v1.box_pb2"
CONTRACT = """\
syntax = "proto3";

package genjson.%(package)s.v1;

import "google/protobuf/any.proto";

message Box {
  string id = 1;
  google.protobuf.Any content = 2;
%(box)s}

message Label {
  string text = 1;
%(label)s}
"""
VERSIONS = {
    "v1": {"package": "box", "box": "", "label": ""},
    "v2": {"package": "box", "box": "  int32 size = 3;\n", "label": "  string color = 2;\n"},
    # Types no other test converts: the first generation of them is the first seen.
    "leak": {"package": "leak", "box": "  int32 size = 3;\n", "label": ""},
}
LEAK_PB2 = "genjson.leak.v1.box_pb2"
LENIENT = JsonOptions(reject_unknown_fields=False)
STRICT = JsonOptions()


def _forget() -> None:
    for name in [n for n in sys.modules if n == "genjson" or n.startswith("genjson.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Version → the folder its generated module is in."""
    root = tmp_path_factory.mktemp("genjson")
    out = {}
    for version, parts in VERSIONS.items():
        package = parts["package"]
        proto = root / version / "proto" / "genjson" / package / "v1" / "box.proto"
        proto.parent.mkdir(parents=True)
        proto.write_text(CONTRACT % parts)
        codegen.generate(root / version / "proto", root / version / "generated")
        out[version] = root / version / "generated"
    return out


@pytest.fixture
def v1(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The first version's module, imported the ordinary way (into the default pool)."""
    _forget()
    monkeypatch.syspath_prepend(str(folders["v1"]))
    yield importlib.import_module(PB2)
    _forget()


def _generation(
    folders: dict[str, Path], version: str, label: str, module: str = PB2
) -> Generation:
    return load_generation([module], label=label, search=[folders[version]])


def test_each_version_reads_and_writes_its_own_fields(v1: Any, folders: dict[str, Path]) -> None:
    # The first version goes through the codec first, as it does on a running host.
    assert message_to_value(v1.Box(id="a"), STRICT) == {"id": "a"}
    old = v1.Box()
    parse_json_into({"id": "a", "size": 3}, old, LENIENT, "body")
    assert old.id == "a"
    generation = _generation(folders, "v2", "box@2")
    try:
        v2 = generation.modules[PB2]
        assert message_to_value(v2.Box(id="b", size=3), STRICT) == {"id": "b", "size": 3}
        for options in (LENIENT, STRICT):
            new = v2.Box()
            parse_json_into({"id": "b", "size": 4}, new, options, "body")
            assert (new.id, new.size) == ("b", 4)
        # The first version still does not know the field.
        with pytest.raises(InvalidArgumentError):
            parse_json_into({"id": "a", "size": 3}, v1.Box(), STRICT, "body")
        assert message_to_value(v1.Box(id="a"), JsonOptions(proto_names=True)) == {"id": "a"}
    finally:
        generation.release()


def test_any_resolves_the_generation_s_types(v1: Any, folders: dict[str, Path]) -> None:
    assert message_to_value(v1.Box(id="a"), STRICT) == {"id": "a"}
    generation = _generation(folders, "v2", "box@2")
    try:
        v2 = generation.modules[PB2]
        box = v2.Box(id="b")
        box.content.Pack(v2.Label(text="t", color="red"))
        written = message_to_value(box, STRICT)
        assert written["content"] == {
            "@type": "type.googleapis.com/genjson.box.v1.Label",
            "text": "t",
            "color": "red",
        }
        for options in (STRICT, JSONOPTIONS_DEFAULTS):
            parsed = v2.Box()
            parse_json_into(written, parsed, options, "body")
            label = v2.Label()
            assert parsed.content.Unpack(label)
            assert (label.text, label.color) == ("t", "red")
        # A type the generation's pool does not hold comes from the host's pool.
        box.content.Pack(duration_pb2.Duration(seconds=2))
        written = message_to_value(box, STRICT)
        assert written["content"]["value"] == "2s"
        parsed = v2.Box()
        parse_json_into(written, parsed, STRICT, "body")
        assert parsed.content.value == box.content.value
        # The default pool's version resolves its own type, as before.
        old = v1.Box(id="a")
        old.content.Pack(v1.Label(text="t"))
        assert message_to_value(old, STRICT)["content"]["text"] == "t"
    finally:
        generation.release()


JSONOPTIONS_DEFAULTS = JsonOptions(emit_defaults=True)


def test_a_released_generation_is_freed(folders: dict[str, Path]) -> None:
    """Converters compiled for a generation's types go with the generation."""
    alive: list[weakref.ref[Any]] = []
    for number in range(5):
        generation = _generation(folders, "leak", f"leak@{number}", LEAK_PB2)
        module = generation.modules[LEAK_PB2]
        box = module.Box(id="b", size=number)
        box.content.Pack(module.Label(text="t"))
        for options in (STRICT, JsonOptions(proto_names=True), JSONOPTIONS_DEFAULTS):
            parse_json_into(message_to_value(box, options), module.Box(), options, "body")
        # The generation's own copy of Any, which its Box holds, goes too.
        assert type(box.content) is not any_pb2.Any
        alive += [weakref.ref(c) for c in (type(box), type(box.content), module.Label)]
        alive.append(weakref.ref(generation))
        generation.release()
        del generation, module, box
    gc.collect()
    assert [ref for ref in alive if ref() is not None] == []
