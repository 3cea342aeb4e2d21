"""Path templates of google.api.http: the grammar, its errors, expansion and percent-coding."""

import re

import pytest

from nexus_grpc.gateway.template import (
    DOUBLE_WILDCARD,
    LITERAL,
    WILDCARD,
    PathTemplate,
    Segment,
    TemplateError,
    Variable,
    parse_template,
    percent_decode,
    percent_decode_keep_slash,
)

# template -> (segments as text, variables as (dotted name, start, end, pattern, multi), verb)
VALID = [
    # Template = "/" Segments ; Segment = LITERAL
    ("/v1", ["v1"], [], None),
    ("/v1/books", ["v1", "books"], [], None),
    # Segment = "*" | "**"
    ("/*", ["*"], [], None),
    ("/**", ["**"], [], None),
    ("/v1/*/books", ["v1", "*", "books"], [], None),
    ("/*/**", ["*", "**"], [], None),
    ("/*/a/**", ["*", "a", "**"], [], None),
    # Variable = "{" FieldPath "}" is {FieldPath=*}
    ("/v1/{name}", ["v1", "*"], [("name", 1, 2, "*", False)], None),
    ("/{x}", ["*"], [("x", 0, 1, "*", False)], None),
    ("/v1/{name=*}", ["v1", "*"], [("name", 1, 2, "*", False)], None),
    # Variable = "{" FieldPath "=" Segments "}"
    ("/v1/{name=**}", ["v1", "**"], [("name", 1, 2, "**", True)], None),
    ("/v1/{name=books}", ["v1", "books"], [("name", 1, 2, "books", False)], None),
    (
        "/v1/{name=shelves/*}",
        ["v1", "shelves", "*"],
        [("name", 1, 3, "shelves/*", True)],
        None,
    ),
    (
        "/v1/{name=shelves/*/books/**}",
        ["v1", "shelves", "*", "books", "**"],
        [("name", 1, 5, "shelves/*/books/**", True)],
        None,
    ),
    ("/{x=*/*}", ["*", "*"], [("x", 0, 2, "*/*", True)], None),
    ("/{x.y.z=*/a/b}/c", ["*", "a", "b", "c"], [("x.y.z", 0, 3, "*/a/b", True)], None),
    # FieldPath = IDENT { "." IDENT }
    (
        "/v1/{book.name=shelves/*/books/*}",
        ["v1", "shelves", "*", "books", "*"],
        [("book.name", 1, 5, "shelves/*/books/*", True)],
        None,
    ),
    ("/a/{a.b.c}", ["a", "*"], [("a.b.c", 1, 2, "*", False)], None),
    ("/{_x.Y_2}", ["*"], [("_x.Y_2", 0, 1, "*", False)], None),
    # several variables, literals between
    (
        "/shelves/{shelf}/books/{book}",
        ["shelves", "*", "books", "*"],
        [("shelf", 1, 2, "*", False), ("book", 3, 4, "*", False)],
        None,
    ),
    (
        "/v1/{parent=projects/*}/things/{thing_id}/{rest=**}",
        ["v1", "projects", "*", "things", "*", "**"],
        [
            ("parent", 1, 3, "projects/*", True),
            ("thing_id", 4, 5, "*", False),
            ("rest", 5, 6, "**", True),
        ],
        None,
    ),
    # Verb = ":" LITERAL
    ("/a:foo", ["a"], [], "foo"),
    ("/a/b/c:foo", ["a", "b", "c"], [], "foo"),
    ("/*:verb", ["*"], [], "verb"),
    ("/**:verb", ["**"], [], "verb"),
    ("/{x}:verb", ["*"], [("x", 0, 1, "*", False)], "verb"),
    ("/v1/{name=**}:cancel", ["v1", "**"], [("name", 1, 2, "**", True)], "cancel"),
    ("/a/{b=*}/**:verb", ["a", "*", "**"], [("b", 1, 2, "*", False)], "verb"),
    ("/v1/things:batchGet", ["v1", "things"], [], "batchGet"),
    # LITERAL: unreserved, sub-delims except "*", "@" and percent escapes
    ("/a-b.c_d~e", ["a-b.c_d~e"], [], None),
    ("/!$&'()+,;=@", ["!$&'()+,;=@"], [], None),
    ("/a%2Fb/a%3ab", ["a%2Fb", "a%3ab"], [], None),
    ("/v1/caf%C3%A9", ["v1", "caf%C3%A9"], [], None),
    ("/a:v%20x", ["a"], [], "v%20x"),
    ("/...", ["..."], [], None),
]


@pytest.mark.parametrize(("text", "segments", "variables", "verb"), VALID)
def test_parses_every_grammar_production(
    text: str,
    segments: list[str],
    variables: list[tuple[str, int, int, str, bool]],
    verb: str | None,
) -> None:
    template = parse_template(text)
    assert template.source == text
    assert str(template) == text
    assert [str(segment) for segment in template.segments] == segments
    assert [
        (v.name, v.start, v.end, v.pattern, v.multi_segment) for v in template.variables
    ] == variables
    assert template.verb == verb
    for variable in template.variables:
        assert variable.segments == template.segments[variable.start : variable.end]
        assert variable.name == ".".join(variable.field_path)


def test_segments_are_typed_by_kind() -> None:
    template = parse_template("/v1/{name=shelves/*}/**")
    assert template.segments == (
        Segment(LITERAL, "v1"),
        Segment(LITERAL, "shelves"),
        Segment(WILDCARD),
        Segment(DOUBLE_WILDCARD),
    )
    assert template.variables == (
        Variable(("name",), 1, 3, (Segment(LITERAL, "shelves"), Segment(WILDCARD))),
    )
    assert template == PathTemplate(
        "/v1/{name=shelves/*}/**", template.segments, template.variables, None
    )


def test_variable_shorthand_is_a_single_star() -> None:
    assert parse_template("/v1/{name}").segments == parse_template("/v1/{name=*}").segments
    assert parse_template("/v1/{name}").variables == parse_template("/v1/{name=*}").variables


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("books", "books"),
        ("b%6Foks", "books"),
        ("a%2Fb", "a/b"),
        ("caf%C3%A9", "café"),
        ("a+b", "a+b"),
    ],
)
def test_literal_value_is_percent_decoded(text: str, value: str) -> None:
    assert Segment(LITERAL, text).value == value


@pytest.mark.parametrize("segment", [Segment(WILDCARD), Segment(DOUBLE_WILDCARD)])
def test_wildcards_have_no_literal_value(segment: Segment) -> None:
    with pytest.raises(ValueError, match="has no literal value"):
        _ = segment.value


def test_hand_made_literal_with_a_bad_escape_has_no_value() -> None:
    with pytest.raises(ValueError, match="invalid percent escape"):
        _ = Segment(LITERAL, "%zz").value


# template -> (0-based position, what the message says)
INVALID = [
    # missing leading slash
    ("", 0, "expected '/' at the start of the template"),
    ("a", 0, "expected '/' at the start of the template"),
    ("a/b", 0, "expected '/' at the start of the template"),
    ("{x}", 0, "expected '/' at the start of the template"),
    (":verb", 0, "expected '/' at the start of the template"),
    (" /a", 0, "expected '/' at the start of the template"),
    # empty segment
    ("/", 1, "expected a segment (segments may not be empty)"),
    ("//", 1, "expected a segment (segments may not be empty)"),
    ("/a/", 3, "expected a segment (segments may not be empty)"),
    ("/a//b", 3, "expected a segment (segments may not be empty)"),
    ("/:verb", 1, "expected a segment (segments may not be empty)"),
    ("/a/:verb", 3, "expected a segment (segments may not be empty)"),
    ("/{x=}", 4, "expected a segment (segments may not be empty)"),
    ("/{x=a/}", 6, "expected a segment (segments may not be empty)"),
    ("/{x=a//b}", 6, "expected a segment (segments may not be empty)"),
    # unbalanced braces
    ("/a/{", 4, "expected a field name"),
    ("/a/{var", 7, "expected '.', '=' or '}' after a field name, got the end of the template"),
    ("/a/{var=b", 9, "expected '}' to close the variable opened at position 3, got the end"),
    ("/a/{var=b/c", 11, "expected '}' to close the variable opened at position 3"),
    ("/a/{x=var:verb}", 9, "expected '}' to close the variable opened at position 3, got ':'"),
    ("/a}", 2, "unbalanced '}': no variable is open"),
    ("/}", 1, "unbalanced '}': no variable is open"),
    ("/{x}}", 4, "unbalanced '}': no variable is open"),
    ("/a/{x}/}", 7, "unbalanced '}': no variable is open"),
    # nested variables
    ("/{var=a/{nested=b}}", 8, "a variable may not contain another variable"),
    ("/{a={b}}", 4, "a variable may not contain another variable"),
    # "**" not last
    ("/v1/{name=**}/x", 10, "'**' must be the last segment"),
    ("/**/a", 1, "'**' must be the last segment"),
    ("/**/**", 1, "'**' must be the last segment"),
    ("/a/**/*:verb", 3, "'**' must be the last segment"),
    ("/{a=**}/{b}", 4, "'**' must be the last segment"),
    ("/{x=a/**/b}", 6, "'**' must be the last segment"),
    ("/***", 3, "expected '*' or '**', got more stars"),
    # bad field path
    ("/{}", 2, "expected a field name (letters, digits and '_', not starting with a digit)"),
    ("/{1x}", 2, "expected a field name"),
    ("/{x..y}", 4, "expected a field name"),
    ("/{x.}", 4, "expected a field name"),
    ("/{.x}", 2, "expected a field name"),
    ("/a/{var.", 8, "expected a field name"),
    ("/{a-b}", 3, "expected '.', '=' or '}' after a field name, got '-'"),
    ("/{a b}", 3, "expected '.', '=' or '}' after a field name, got ' '"),
    ("/{=a}", 2, "expected a field name"),
    # empty verb, or something after the verb
    ("/a:", 3, "expected a verb after ':', got the end of the template"),
    ("/*:", 3, "expected a verb after ':'"),
    ("/**:", 4, "expected a verb after ':'"),
    ("/{var}:", 7, "expected a verb after ':'"),
    ("/a/b/{var}:", 11, "expected a verb after ':'"),
    ("/a:*", 3, "expected a verb after ':', got '*'"),
    ("/a:b/c", 4, "expected the end of the template after the verb, got '/'"),
    ("/a:b:c", 4, "expected the end of the template after the verb, got ':'"),
    ("/a:b}", 4, "unbalanced '}': no variable is open"),
    # variable bound twice (or a field and one of its sub-fields)
    ("/a/{x}/{x}", 7, "field 'x' is bound twice (first bound at position 3)"),
    ("/{x}/{y}/{x=**}", 9, "field 'x' is bound twice (first bound at position 1)"),
    ("/{a.b}/{a.b=c/*}", 7, "field 'a.b' is bound twice (first bound at position 1)"),
    ("/{a}/{a.b}", 5, "field 'a.b' overlaps 'a' (first bound at position 1)"),
    ("/{a.b.c}/{a}", 9, "field 'a' overlaps 'a.b.c' (first bound at position 1)"),
    # a segment is a whole segment: no literal text glued to a variable or a star
    ("/a{x}", 2, "expected '/', ':' or '}' after a segment, got '{'"),
    ("/{x}a", 4, "expected '/', ':' or '}' after a segment, got 'a'"),
    ("/a/b{x}/s", 4, "expected '/', ':' or '}' after a segment, got '{'"),
    ("/*a", 2, "expected '/', ':' or '}' after a segment, got 'a'"),
    ("/a*", 2, "expected '/', ':' or '}' after a segment, got '*'"),
    # characters outside LITERAL, bad escapes, dot segments
    ("/a b", 2, "expected '/', ':' or '}' after a segment, got ' '"),
    ("/caf\u00e9", 4, "expected '/', ':' or '}' after a segment, got 'é'"),
    ("/a?b", 2, "got '?'"),
    ("/a#b", 2, "got '#'"),
    ('/"', 1, "expected a segment, got '\"'"),
    ("/a/%zz", 3, "expected two hex digits after '%'"),
    ("/a/b%2", 4, "expected two hex digits after '%'"),
    ("/a%", 2, "expected two hex digits after '%'"),
    ("/a:%g0", 3, "expected two hex digits after '%'"),
    ("/a%FF", 1, "percent escapes of 'a%FF' are not UTF-8"),
    ("/a/./b", 3, "expected a segment other than '.'"),
    ("/a/..", 3, "expected a segment other than '..'"),
    ("/{x=..}", 4, "expected a segment other than '..'"),
]


@pytest.mark.parametrize(("text", "position", "reason"), INVALID)
def test_rejects_invalid_templates_naming_template_position_and_expectation(
    text: str, position: int, reason: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template(text)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.template == text
    assert error.position == position
    assert reason in error.reason
    assert str(error) == f"{text}: {error.reason} (position {position})"


def test_error_message_reads_template_reason_position() -> None:
    with pytest.raises(
        TemplateError,
        match=re.escape("/v1/{name=**}/x: '**' must be the last segment (position 10)"),
    ):
        parse_template("/v1/{name=**}/x")


# template -> OpenAPI path, its parameter names
OPENAPI = [
    ("/v1/books", "/v1/books", ()),
    ("/v1/{name}", "/v1/{name}", ("name",)),
    ("/v1/{name=shelves/*}", "/v1/{name}", ("name",)),
    ("/v1/{book.name=shelves/*/books/*}", "/v1/{book.name}", ("book.name",)),
    ("/v1/{name=**}:cancel", "/v1/{name}:cancel", ("name",)),
    ("/v1/things:batchGet", "/v1/things:batchGet", ()),
    ("/v1/*/x/**", "/v1/{_wildcard0}/x/{_wildcard1}", ("_wildcard0", "_wildcard1")),
    ("/{a}/*/{b}/**", "/{a}/{_wildcard0}/{b}/{_wildcard1}", ("a", "_wildcard0", "b", "_wildcard1")),
    ("/{_wildcard0}/*", "/{_wildcard0}/{_wildcard1}", ("_wildcard0", "_wildcard1")),
    ("/v1/b%6Foks/{x}", "/v1/b%6Foks/{x}", ("x",)),
]


@pytest.mark.parametrize(("text", "path", "parameters"), OPENAPI)
def test_openapi_path_names_every_templated_part(
    text: str, path: str, parameters: tuple[str, ...]
) -> None:
    template = parse_template(text)
    assert template.openapi_path() == path
    assert template.openapi_parameters() == parameters


# template, values -> concrete path
EXPAND = [
    ("/v1/books", {}, "/v1/books"),
    ("/v1/books/{id}", {"id": "42", "unused": "x"}, "/v1/books/42"),
    # single segment: everything but [-_.~0-9a-zA-Z] is encoded, "/" included
    ("/v1/{name}", {"name": "a/b c+d:e%f"}, "/v1/a%2Fb%20c%2Bd%3Ae%25f"),
    ("/v1/{name}", {"name": "-_.~09azAZ"}, "/v1/-_.~09azAZ"),
    ("/v1/{name}", {"name": "café"}, "/v1/caf%C3%A9"),
    ("/v1/{name}:cancel", {"name": "a:b"}, "/v1/a%3Ab:cancel"),
    # multi segment: "/" separates segments, the rest is encoded
    ("/v1/{name=shelves/*}", {"name": "shelves/a b"}, "/v1/shelves/a%20b"),
    (
        "/v1/{book.name=shelves/*/books/*}",
        {"book.name": "shelves/1/books/2"},
        "/v1/shelves/1/books/2",
    ),
    ("/v1/{path=**}", {"path": "a/b/c"}, "/v1/a/b/c"),
    ("/v1/{path=**}", {"path": "a%2Fb"}, "/v1/a%252Fb"),
    ("/v1/{path=files/**}", {"path": "files"}, "/v1/files"),
    ("/v1/{path=**}", {"path": ""}, "/v1"),
    ("/{path=**}", {"path": ""}, "/"),
    ("/v1/{path=**}:download", {"path": "x/y"}, "/v1/x/y:download"),
    ("/v1/{name=books}", {"name": "books"}, "/v1/books"),
    # bare wildcards take their OpenAPI names
    ("/v1/*/x/**", {"_wildcard0": "a/b", "_wildcard1": "c/d e"}, "/v1/a%2Fb/x/c/d%20e"),
    ("/v1/{n=a%3Ab/*}", {"n": "a:b/c"}, "/v1/a%3Ab/c"),
]


@pytest.mark.parametrize(("text", "values", "path"), EXPAND)
def test_expand_builds_an_encoded_path(text: str, values: dict[str, str], path: str) -> None:
    assert parse_template(text).expand(values) == path


@pytest.mark.parametrize(
    ("text", "values", "message"),
    [
        ("/v1/{name}", {}, "no value for 'name'"),
        ("/v1/*", {}, "no value for '_wildcard0'"),
        ("/v1/{name}", {"name": ""}, "value '' of 'name' does not fit '*'"),
        ("/v1/{name=shelves/*}", {"name": "books/1"}, "does not fit 'shelves/*'"),
        ("/v1/{name=shelves/*}", {"name": "shelves"}, "does not fit 'shelves/*'"),
        ("/v1/{name=shelves/*}", {"name": "shelves/1/2"}, "does not fit 'shelves/*'"),
        ("/v1/{name=shelves/*}", {"name": "shelves/"}, "does not fit 'shelves/*'"),
        ("/v1/{name=**}", {"name": "a//b"}, "does not fit '**'"),
        ("/v1/{name=**}", {"name": "a/"}, "does not fit '**'"),
        ("/v1/{name=files/**}", {"name": ""}, "does not fit 'files/**'"),
        ("/v1/{name=books}", {"name": "shelves"}, "does not fit 'books'"),
        ("/{name=**}:verb", {"name": ""}, "a verb needs at least one path segment"),
    ],
)
def test_expand_refuses_missing_or_misfit_values(
    text: str, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_template(text).expand(values)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a%20b", "a b"),
        ("a%2Fb", "a/b"),
        ("a%2fb", "a/b"),
        ("a+b", "a+b"),
        ("a%2Bb", "a+b"),
        ("%25", "%"),
        ("%252F", "%2F"),
        ("caf%C3%A9", "café"),
        ("caf%c3%a9", "café"),
        ("café", "café"),
        ("%zz", None),
        ("%2", None),
        ("a%", None),
        ("%%20", None),
        ("%FF", None),
        ("%C3", None),
        ("%C3%28", None),
    ],
)
def test_percent_decode_is_strict_and_leaves_plus(text: str, decoded: str | None) -> None:
    assert percent_decode(text) == decoded


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("a/b", "a/b"),
        ("a%2Fb/c", "a%2Fb/c"),
        ("a%2fb", "a%2fb"),
        ("a%20b%2F%3F", "a b%2F?"),
        ("%252F", "%2F"),
        ("%25%2F", "%%2F"),
        ("%C3%A9%2F%C3%A9", "é%2Fé"),
        ("+", "+"),
        ("%zz%2F", None),
        ("%2F%FF", None),
    ],
)
def test_percent_decode_keep_slash_leaves_encoded_slashes(text: str, decoded: str | None) -> None:
    assert percent_decode_keep_slash(text) == decoded
