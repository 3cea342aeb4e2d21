"""A plugin loaded or reloaded while the host runs gets the storage indexes its
contract declares, without the host's other indexes being dropped; one its new
contract stops declaring is retired, not dropped."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_grpc import codegen
from nexus_grpc.config import HotSwapConfig
from nexus_grpc.storage.declared import declared_indexes
from nexus_grpc.testing import running_host
from tests.storage.test_indexes import captured_statements, nexus_indexes, query_plan

pytestmark = pytest.mark.asyncio

NOTES_PB2 = "genidx.notes.v1.notes_pb2"

PROTO = """\
syntax = "proto3";

package genidx.notes.v1;

import "nexus/options/v1/options.proto";

// Notes, stored by shelf{extra_doc}.
service NotesService {{
  option (nexus.options.v1.default_policy) = {{public: true}};

  // Returns one note.
  rpc GetNote(GetNoteRequest) returns (Note);
}}

// Request of NotesService.GetNote.
message GetNoteRequest {{
  // The note's id.
  string id = 1;
}}

// A stored note.
message Note {{
  option (nexus.options.v1.storage) = {{
    indexes: {{fields: ["shelf"]}}{extra_index}
  }};
  // Its id.
  string id = 1;
  // The shelf it is on.
  string shelf = 2;
  // How heavy it is.
  int64 weight = 3;
}}
"""

MANIFEST = """\
name = "notes"
version = "{version}"
category = "business"
description = "Notes, for the storage index tests."
services = ["genidx.notes.v1.NotesService"]
"""

CODE = '''\
"""The notes plugin, {version}."""

from typing import Any

from genidx.notes.v1 import notes_pb2, notes_pb2_grpc

from nexus_grpc import Plugin


class NotesService(notes_pb2_grpc.NotesServiceServicer):
    async def GetNote(self, request: Any, context: Any) -> Any:
        return notes_pb2.Note(id=request.id, shelf="{version}")


plugin = Plugin(services=[NotesService])
'''


def _forget_modules() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "genidx"]:
        del sys.modules[name]


@pytest.fixture
def clean_modules() -> Iterator[None]:
    _forget_modules()
    yield
    _forget_modules()


def _write(root: Path, stubs: Path, version: str, *, weight_index: bool) -> None:
    """Version ``version`` of the plugin's code and contract, its stubs generated."""
    contract = root / f"proto-{version}" / "genidx" / "notes" / "v1"
    contract.mkdir(parents=True)
    extra = ', indexes: {fields: ["weight desc"]}' if weight_index else ""
    text = PROTO.format(extra_doc=" and weight" if weight_index else "", extra_index=extra)
    (contract / "notes.proto").write_text(text)
    codegen.generate(root / f"proto-{version}", stubs)
    plugin = root / "plugins" / "notes"
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "manifest.toml").write_text(MANIFEST.format(version=version))
    (plugin / "__init__.py").write_text(CODE.format(version=version))


async def _plan_of_a_list(url: str, repository: Any, **query: Any) -> str:
    """The database's plan of the statement ``repository.list(**query)`` sends."""
    with captured_statements() as seen:
        await repository.list(**query)
    selects = [(sql, parameters) for sql, parameters in seen if sql.startswith("SELECT")]
    assert len(selects) == 1, seen
    return await query_plan(url, *selects[0])


@pytest.mark.usefixtures("clean_modules")
async def test_a_plugin_loaded_and_upgraded_at_runtime_gets_its_declared_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    monkeypatch.syspath_prepend(str(stubs))
    (tmp_path / "plugins").mkdir()
    url = f"sqlite:///{tmp_path}/nexus.db"
    settings = HotSwapConfig(enabled=True, drain_timeout=10.0, start_timeout=2.0)
    async with running_host(
        plugin_dirs=[tmp_path / "plugins"],
        data_dir=tmp_path / "data",
        storage_url=url,
        hot_swap=settings,
    ) as running:
        at_start = await nexus_indexes(url)
        # The plugin appears in its folder after the start, and is loaded at runtime.
        _write(tmp_path, stubs, "v1", weight_index=False)
        await running.host.plugins.load("notes")
        from genidx.notes.v1 import notes_pb2

        (shelf,) = (i.name for i in declared_indexes(notes_pb2.Note.DESCRIPTOR))
        assert await nexus_indexes(url) == at_start | {shelf}
        record = running.host.plugins.record("notes")
        assert record is not None and record.context is not None
        notes = record.context.storage.repository(notes_pb2.Note)
        await notes.create(notes_pb2.Note(id="n1", shelf="top", weight=3))
        plan = await _plan_of_a_list(url, notes, filter={"shelf": "top"})
        assert shelf in plan and "SCAN" not in plan, plan

        # A contract upgrade declaring a second index gets it; the first one stays.
        _write(tmp_path, stubs, "v2", weight_index=True)
        await running.host.plugins.reload("notes")
        assert record.current is not None and record.current.contract is not None
        note_v2 = record.current.contract.module(NOTES_PB2).Note
        names = {i.name for i in declared_indexes(note_v2.DESCRIPTOR)}
        (weight,) = names - {shelf}
        assert await nexus_indexes(url) == at_start | {shelf, weight}
        notes_v2 = record.context.storage.repository(note_v2)
        plan = await _plan_of_a_list(url, notes_v2, order_by="weight desc", page_size=10)
        assert weight in plan and "TEMP B-TREE" not in plan, plan

        # An upgrade that stops declaring it retires it (storage.index_drop_delay, 15
        # minutes by default): generations still serving and a swap back keep it.
        _write(tmp_path, stubs, "v3", weight_index=False)
        await running.host.plugins.reload("notes")
        assert await nexus_indexes(url) == at_start | {shelf, weight}
        assert _retired(url) == {weight}


def _retired(url: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(url.split("///", 1)[1])) as connection:
        return {row[0] for row in connection.execute("SELECT index_name FROM nexus_index_retired")}
