"""A griffe extension: read nexus's docstrings the way the source writes them.

The code documents attributes with ``#:`` comments above them (as Sphinx autodoc reads
them) and cross-references with reST roles (:class:`Plugin`); mkdocstrings renders
Markdown and reads neither. This extension turns ``#:`` comments into attribute
docstrings, roles into code spans, ``::`` literal-block markers into a colon and
``>>>`` example lines into fenced blocks, so the API reference shows what the source
says without rewriting it in another dialect.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


class NexusDocstrings(griffe.Extension):
    """Attribute comments become docstrings; reST idioms become Markdown."""

    def on_attribute_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        attr: griffe.Attribute,
        agent: Any,
        **kwargs: Any,
    ) -> None:
        """Take the ``#:`` comment lines right above an attribute as its docstring."""
        if attr.docstring is not None or not isinstance(node, ast.AST) or not attr.lineno:
            return
        code = getattr(agent, "code", "")
        if not code:
            return
        lines = code.splitlines()
        comment: list[str] = []
        index = attr.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#:"):
            comment.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment), lineno=index + 2, endlineno=attr.lineno - 1, parent=attr
            )

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite reST roles, ``::`` markers and ``>>>`` lines of a docstring."""
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)


def markdown_of(text: str) -> str:
    """The docstring ``text`` with its reST idioms in Markdown."""
    text = _ROLE.sub(r"`\1`", text)
    text = _LITERAL_MARKER.sub(r"\1:", text)
    out: list[str] = []
    in_example = False
    for line in text.splitlines():
        example = line.lstrip().startswith(">>>")
        if example and not in_example:
            out.extend(["", "```pycon"])
        elif not example and in_example:
            out.append("```")
        in_example = example
        out.append(line.strip() if example else line)
    if in_example:
        out.append("```")
    return "\n".join(out)
