"""The code samples of the documentation (`docs/*.md`), read as the tests run them.

A fenced block's language says what it is; an HTML comment on the line right above the
fence (invisible in the rendered page) may say more:

- ``<!-- file: PATH -->``: the block is (a part of) the file PATH of the sample
  project shared by every page; blocks naming one path are joined in page order, so a
  page can explain a file piece by piece.
- ``<!-- skip: REASON -->``: the block is not run, for the reason given (it must say
  one).

Without a marker, ``python`` blocks of one page are joined into one test module of the
sample project (module-level code runs on import, ``async def test_*`` under pytest),
``proto`` blocks are compiled on their own, ``toml`` blocks are host configurations
loaded with :func:`nexus_grpc.config.load_config`, and ``sh`` blocks are commands run
in one shell against a real ``nexus serve`` of the sample project's plugins. ``text``
blocks show output and are not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: Languages a sample may have; anything else is a mistake the tests report.
LANGUAGES = frozenset({"python", "proto", "toml", "sh", "text"})

_FENCE = re.compile(r"^```([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*(file|skip):\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Sample:
    """One fenced block of a page."""

    page: str
    line: int
    language: str
    code: str
    #: Path in the sample project (``<!-- file: ... -->``), or "".
    file: str = ""
    #: Why the block is not run (``<!-- skip: ... -->``), or "".
    skip: str = ""

    @property
    def where(self) -> str:
        """``page.md:line`` for messages."""
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """Every Markdown page of the docs (the API reference pages hold no samples)."""
    return sorted(DOCS.rglob("*.md"))


def samples_of(page: Path) -> list[Sample]:
    """The fenced blocks of ``page`` in order, with their markers."""
    name = page.relative_to(DOCS).as_posix()
    lines = page.read_text().splitlines()
    found: list[Sample] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        start = index
        end = start + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{name}:{start + 1}: code block never closed")
        marker = _MARKER.match(lines[start - 1].strip()) if start else None
        kind, value = (marker.group(1), marker.group(2)) if marker else ("", "")
        found.append(
            Sample(
                page=name,
                line=start + 1,
                language=fence.group(1),
                code="\n".join(lines[start + 1 : end]) + "\n",
                file=value if kind == "file" else "",
                skip=value if kind == "skip" else "",
            )
        )
        index = end + 1
    return found


def all_samples() -> list[Sample]:
    """Every fenced block of every page."""
    return [sample for page in pages() for sample in samples_of(page)]


def project_files(samples: list[Sample]) -> dict[str, str]:
    """Path → text of the sample project: the ``file:`` blocks joined per path."""
    files: dict[str, list[str]] = {}
    for sample in samples:
        if sample.file and not sample.skip:
            files.setdefault(sample.file, []).append(sample.code)
    # Two blank lines between parts: a part may continue a class or start a new def.
    return {path: "\n\n".join(parts) for path, parts in files.items()}


def page_module(samples: list[Sample]) -> str:
    """The page's unmarked python blocks, as one module."""
    parts = [s.code for s in samples if s.language == "python" and not s.file and not s.skip]
    return "\n\n".join(parts)


def module_name(page: str) -> str:
    """``test_doc_<page>.py`` for ``page`` (``guide.md`` → ``test_doc_guide.py``)."""
    stem = re.sub(r"[^a-z0-9]+", "_", page.removesuffix(".md").lower())
    return f"test_doc_{stem}.py"
