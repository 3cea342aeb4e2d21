"""Path templates of ``google.api.http`` rules: parsing, expansion and percent-coding.

The grammar is the one in the comment of ``google/api/http.proto``::

    Template  = "/" Segments [ Verb ] ;
    Segments  = Segment { "/" Segment } ;
    Segment   = "*" | "**" | LITERAL | Variable ;
    Variable  = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb      = ":" LITERAL ;

with its rules: ``{var}`` means ``{var=*}``; ``**`` may only be the last segment
(before the verb); a variable may not contain another variable.

The grammar leaves the lexical classes open, so this module fixes them:

* ``IDENT`` is a protobuf field name: ``[A-Za-z_][A-Za-z0-9_]*``.
* ``LITERAL`` (a path segment or the verb) is one or more RFC 3986 path
  characters -- unreserved ``A-Za-z0-9-._~``, sub-delims ``!$&'()+,;=`` and
  ``@`` -- or percent escapes ``%XX`` that decode to UTF-8.  ``*`` (it means a
  wildcard), ``:`` (it starts the verb), ``/``, ``{`` and ``}`` are excluded; the
  spec says reserved characters of a literal are written percent-encoded.  ``.``
  and ``..`` are refused as whole segments because clients normalise them away,
  so such a route could never be reached.
* The template ``/`` alone is refused, as the grammar (one segment at least) and
  Google's reference parser do.
* The same field (or a field and one of its sub-fields, such as ``a`` and
  ``a.b``) may be bound once only: the request message cannot take both.

Unlike Google's reference parser, which accepts literals after ``**``
(``/a/**/b``), ``**`` must be the very last segment, as ``http.proto`` states.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "DOUBLE_WILDCARD",
    "LITERAL",
    "WILDCARD",
    "PathTemplate",
    "Segment",
    "SegmentKind",
    "TemplateError",
    "Variable",
    "parse_template",
    "percent_decode",
    "percent_decode_keep_slash",
]


class TemplateError(ValueError):
    """A path template that does not follow the grammar or its rules.

    The message reads ``"<template>: <what was expected> (position <n>)"`` with a
    0-based character position; the parts are also kept as attributes.
    """

    def __init__(self, template: str, position: int, reason: str) -> None:
        super().__init__(f"{template}: {reason} (position {position})")
        self.template = template
        self.position = position
        self.reason = reason


class SegmentKind(enum.Enum):
    """What a template segment matches."""

    LITERAL = "literal"
    WILDCARD = "*"
    DOUBLE_WILDCARD = "**"


LITERAL = SegmentKind.LITERAL
WILDCARD = SegmentKind.WILDCARD
DOUBLE_WILDCARD = SegmentKind.DOUBLE_WILDCARD


@dataclass(frozen=True)
class Segment:
    """One segment of a template: a literal, ``*`` (one segment) or ``**`` (zero or more).

    ``text`` is the literal as written in the template (percent escapes kept) and
    is empty for wildcards.
    """

    kind: SegmentKind
    text: str = ""

    @property
    def value(self) -> str:
        """The literal percent-decoded, which is what request segments are compared with."""
        if self.kind is not LITERAL:
            raise ValueError(f"a {self.kind.value} segment has no literal value")
        decoded = percent_decode(self.text)
        # The parser only builds literals whose escapes decode; this guards hand-made ones.
        if decoded is None:
            raise ValueError(f"literal {self.text!r} has an invalid percent escape")
        return decoded

    def __str__(self) -> str:
        return self.text if self.kind is LITERAL else self.kind.value


@dataclass(frozen=True)
class Variable:
    """A ``{field.path=...}`` binding: the request field it sets and the segments it covers."""

    field_path: tuple[str, ...]
    start: int
    end: int
    # The covered segments themselves, so the variable can describe its own pattern
    # without a reference back to its template.
    segments: tuple[Segment, ...]

    @property
    def name(self) -> str:
        """The dotted field path, e.g. ``"book.name"``."""
        return ".".join(self.field_path)

    @property
    def multi_segment(self) -> bool:
        """True when the variable covers ``**`` or more than one segment.

        Such values may contain ``/`` and are decoded except for ``%2F``.
        """
        return len(self.segments) > 1 or self.segments[0].kind is DOUBLE_WILDCARD

    @property
    def pattern(self) -> str:
        """The covered segments as text, e.g. ``"shelves/*/books/*"`` or ``"*"``."""
        return "/".join(str(segment) for segment in self.segments)


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template; build one with :func:`parse_template`."""

    source: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str | None

    def __str__(self) -> str:
        return self.source

    def openapi_path(self) -> str:
        """The template as an OpenAPI path, e.g. ``/v1/{name}:cancel``.

        Literals and the verb are kept as written.  Each variable becomes
        ``{field.path}`` whatever it covers -- OpenAPI has no multi-segment
        parameters, so ``/v1/{name=shelves/*}`` becomes ``/v1/{name}`` and the
        parameter's value carries the slashes (``shelves/1``).  A bare ``*`` or
        ``**`` outside any variable must be named too, since OpenAPI path
        templates cannot contain wildcards: it becomes ``{_wildcardN}``, N
        counting bare wildcards from 0 left to right (skipping names a variable
        already uses).  :meth:`openapi_parameters` lists the names in order and
        :meth:`expand` takes values under the same names.
        """
        parts: list[str] = []
        for piece in self._named_pieces():
            parts.append(piece if isinstance(piece, str) else "{" + piece[0] + "}")
        path = "/" + "/".join(parts)
        return path if self.verb is None else f"{path}:{self.verb}"

    def openapi_parameters(self) -> tuple[str, ...]:
        """The path parameter names of :meth:`openapi_path`, left to right."""
        return tuple(piece[0] for piece in self._named_pieces() if not isinstance(piece, str))

    def expand(self, values: Mapping[str, str]) -> str:
        """Build a concrete request path from variable values: the inverse of matching.

        ``values`` maps each variable's dotted field path (and each bare wildcard's
        ``_wildcardN`` name, see :meth:`openapi_path`) to its decoded value; other
        keys are ignored.  Values are percent-encoded as ``http.proto`` prescribes:
        single-segment values keep only ``[-_.~0-9a-zA-Z]``, multi-segment values
        keep ``/`` as well.  Raises ValueError when a value is missing or does not
        fit its pattern (a ``*`` needs a non-empty segment, literals must be
        equal, ``/`` splits multi-segment values into segments).
        """
        parts: list[str] = []
        for piece in self._named_pieces():
            if isinstance(piece, str):
                parts.append(piece)
                continue
            name, covered = piece
            if name not in values:
                raise ValueError(f"{self.source}: no value for {name!r}")
            parts.extend(_expand_value(self.source, name, covered, values[name]))
        if self.verb is not None and not parts:
            # "/:verb" would read as an empty segment plus a verb, not as a verb alone.
            raise ValueError(f"{self.source}: a verb needs at least one path segment before it")
        path = "/" + "/".join(parts)
        return path if self.verb is None else f"{path}:{self.verb}"

    def _named_pieces(self) -> list[str | tuple[str, tuple[Segment, ...]]]:
        """Literal text for segments outside variables, (name, covered segments) otherwise."""
        taken = {variable.name for variable in self.variables}
        by_start = {variable.start: variable for variable in self.variables}
        pieces: list[str | tuple[str, tuple[Segment, ...]]] = []
        counter = 0
        index = 0
        while index < len(self.segments):
            variable = by_start.get(index)
            if variable is not None:
                pieces.append((variable.name, variable.segments))
                index = variable.end
                continue
            segment = self.segments[index]
            if segment.kind is LITERAL:
                pieces.append(segment.text)
            else:
                while f"_wildcard{counter}" in taken:
                    counter += 1
                pieces.append((f"_wildcard{counter}", (segment,)))
                counter += 1
            index += 1
        return pieces


def _expand_value(source: str, name: str, covered: tuple[Segment, ...], value: str) -> list[str]:
    """The encoded path segments for one variable's value, checked against its pattern."""
    multi = len(covered) > 1 or covered[0].kind is DOUBLE_WILDCARD
    # A single-segment value is one segment whatever it contains ("/" is encoded).
    pieces = value.split("/") if multi else [value]
    if value == "" and covered[-1].kind is DOUBLE_WILDCARD:
        pieces = []  # "**" alone may cover zero segments; "".split would give one empty one.

    def misfit() -> ValueError:
        pattern = "/".join(str(segment) for segment in covered)
        return ValueError(f"{source}: value {value!r} of {name!r} does not fit {pattern!r}")

    encoded: list[str] = []
    for position, segment in enumerate(covered):
        if segment.kind is DOUBLE_WILDCARD:
            rest = pieces[position:]
            if any(piece == "" for piece in rest):
                raise misfit()
            encoded.extend(quote(piece, safe="") for piece in rest)
            return encoded
        if position >= len(pieces):
            raise misfit()
        piece = pieces[position]
        if piece == "" or (segment.kind is LITERAL and piece != segment.value):
            raise misfit()
        encoded.append(quote(piece, safe=""))
    if len(pieces) != len(covered):
        raise misfit()
    return encoded


# Percent-coding --------------------------------------------------------------

# A "%" not followed by two hex digits.  Compiled once: decoding runs per request.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# An encoded slash, kept as written (either case) in multi-segment values.
_ENCODED_SLASH = re.compile(r"(%2[Ff])")


def percent_decode(text: str) -> str | None:
    """Decode every ``%XX`` escape; ``+`` stays ``+`` (it is not a space in paths).

    Returns None when an escape is malformed (``%`` without two hex digits) or
    the decoded bytes are not UTF-8: such text is not a valid URL path and
    guessing what it meant would hand wrong values to the service.
    """
    if "%" not in text:
        return text
    if _BAD_ESCAPE.search(text):
        return None
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return None


def percent_decode_keep_slash(text: str) -> str | None:
    """Like :func:`percent_decode` but ``%2F``/``%2f`` stay encoded, as written.

    This is how ``http.proto`` decodes multi-segment variables: an encoded slash
    inside a segment must stay distinguishable from a segment separator.
    """
    if "%" not in text:
        return text
    pieces = _ENCODED_SLASH.split(text)
    # Odd indices are the captured "%2F"s; a UTF-8 sequence never contains 0x2F,
    # so cutting there never splits a character.
    for index in range(0, len(pieces), 2):
        decoded = percent_decode(pieces[index])
        if decoded is None:
            return None
        pieces[index] = decoded
    return "".join(pieces)


# Parsing ---------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@%]+")


class _Parser:
    """Recursive descent over the grammar, remembering where each segment started."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[Segment] = []
        self.segment_positions: list[int] = []
        self.variables: list[Variable] = []
        self.variable_positions: list[int] = []
        self.in_variable = False

    def fail(self, position: int, reason: str) -> TemplateError:
        return TemplateError(self.text, position, reason)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> PathTemplate:
        if not self.text.startswith("/"):
            raise self.fail(0, "expected '/' at the start of the template")
        self.pos = 1
        self.parse_segments()
        verb: str | None = None
        if self.peek() == ":":
            self.pos += 1
            verb = self.parse_literal("a verb after ':'")
        if self.pos < len(self.text):
            char = self.peek()
            if char == "}":
                raise self.fail(self.pos, "unbalanced '}': no variable is open")
            if verb is not None:
                raise self.fail(
                    self.pos, f"expected the end of the template after the verb, got {char!r}"
                )
            raise self.fail(self.pos, f"expected '/', ':' or the end of the template, got {char!r}")
        self.check_double_wildcard_last()
        return PathTemplate(self.text, tuple(self.segments), tuple(self.variables), verb)

    def parse_segments(self) -> None:
        self.parse_segment()
        while self.peek() == "/":
            self.pos += 1
            self.parse_segment()

    def parse_segment(self) -> None:
        start = self.pos
        char = self.peek()
        if char == "*":
            double = self.text.startswith("**", start)
            self.pos += 2 if double else 1
            if self.peek() == "*":
                raise self.fail(self.pos, "expected '*' or '**', got more stars")
            self.add_segment(Segment(DOUBLE_WILDCARD if double else WILDCARD), start)
        elif char == "{":
            if self.in_variable:
                raise self.fail(start, "a variable may not contain another variable")
            self.parse_variable()
        elif char == "}" and not self.in_variable:
            raise self.fail(start, "unbalanced '}': no variable is open")
        elif char in ("", "/", ":", "}"):
            raise self.fail(start, "expected a segment (segments may not be empty)")
        else:
            literal = self.parse_literal("a segment")
            if literal in (".", ".."):
                # Clients normalise dot segments away, so such a route is unreachable.
                raise self.fail(start, f"expected a segment other than {literal!r}")
            self.add_segment(Segment(LITERAL, literal), start)
        # A segment ends at a separator; "a{x}", "*a" and "{x}a" are not segments.
        follower = self.peek()
        if follower not in ("", "/", ":", "}"):
            raise self.fail(
                self.pos, f"expected '/', ':' or '}}' after a segment, got {follower!r}"
            )

    def parse_literal(self, what: str) -> str:
        start = self.pos
        found = _LITERAL_CHARS.match(self.text, start)
        if found is None:
            char = self.peek()
            if char == "":
                raise self.fail(start, f"expected {what}, got the end of the template")
            raise self.fail(start, f"expected {what}, got {char!r}")
        literal = found.group()
        bad = _BAD_ESCAPE.search(literal)
        if bad is not None:
            raise self.fail(start + bad.start(), "expected two hex digits after '%'")
        if percent_decode(literal) is None:
            raise self.fail(start, f"percent escapes of {literal!r} are not UTF-8")
        self.pos = found.end()
        return literal

    def parse_variable(self) -> None:
        opening = self.pos
        self.pos += 1
        field_path = self.parse_field_path()
        first = len(self.segments)
        self.in_variable = True
        if self.peek() == "=":
            self.pos += 1
            self.parse_segments()
        else:
            self.add_segment(Segment(WILDCARD), opening)  # {var} is {var=*}
        self.in_variable = False
        if self.peek() != "}":
            got = "the end of the template" if self.pos >= len(self.text) else repr(self.peek())
            raise self.fail(
                self.pos,
                f"expected '}}' to close the variable opened at position {opening}, got {got}",
            )
        self.pos += 1
        variable = Variable(field_path, first, len(self.segments), tuple(self.segments[first:]))
        self.check_not_bound(variable, opening)
        self.variables.append(variable)
        self.variable_positions.append(opening)

    def parse_field_path(self) -> tuple[str, ...]:
        names: list[str] = []
        while True:
            found = _IDENT.match(self.text, self.pos)
            if found is None:
                raise self.fail(
                    self.pos,
                    "expected a field name (letters, digits and '_', not starting with a digit)",
                )
            names.append(found.group())
            self.pos = found.end()
            if self.peek() != ".":
                break
            self.pos += 1
        if self.peek() not in ("=", "}"):
            got = "the end of the template" if self.pos >= len(self.text) else repr(self.peek())
            raise self.fail(self.pos, f"expected '.', '=' or '}}' after a field name, got {got}")
        return tuple(names)

    def add_segment(self, segment: Segment, position: int) -> None:
        self.segments.append(segment)
        self.segment_positions.append(position)

    def check_not_bound(self, variable: Variable, position: int) -> None:
        path = variable.field_path
        for other, other_position in zip(self.variables, self.variable_positions, strict=True):
            shorter = min(len(path), len(other.field_path))
            if path[:shorter] != other.field_path[:shorter]:
                continue
            if path == other.field_path:
                reason = f"field {variable.name!r} is bound twice"
            else:
                reason = f"field {variable.name!r} overlaps {other.name!r}"
            raise self.fail(position, f"{reason} (first bound at position {other_position})")

    def check_double_wildcard_last(self) -> None:
        for index, segment in enumerate(self.segments[:-1]):
            if segment.kind is DOUBLE_WILDCARD:
                raise self.fail(self.segment_positions[index], "'**' must be the last segment")


def parse_template(text: str) -> PathTemplate:
    """Parse a path template such as ``/v1/{name=shelves/*}:cancel``.

    Raises TemplateError naming the template, the position and what was expected.
    """
    return _Parser(text).parse()
