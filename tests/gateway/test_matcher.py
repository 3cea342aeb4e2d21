"""The REST route matcher: binding, decoding, specificity, verbs and 405 support."""

import itertools

import pytest

from nexus_grpc.gateway.matcher import Match, PathMatcher
from nexus_grpc.gateway.template import DOUBLE_WILDCARD, LITERAL, parse_template


def matcher(*routes: tuple[str, str]) -> PathMatcher[str]:
    """A matcher whose value for each (method, template) is the template text."""
    built: PathMatcher[str] = PathMatcher()
    for method, text in routes:
        built.add(method, parse_template(text), text)
    return built


# registered GET template, request path -> bound variables
BINDS = [
    ("/v1/books", "/v1/books", {}),
    ("/v1/books/{id}", "/v1/books/42", {"id": "42"}),
    ("/shelves/{shelf}/books/{book}", "/shelves/s1/books/b2", {"shelf": "s1", "book": "b2"}),
    ("/v1/{name=shelves/*}", "/v1/shelves/s1", {"name": "shelves/s1"}),
    (
        "/v1/{book.name=shelves/*/books/*}",
        "/v1/shelves/s1/books/b2",
        {"book.name": "shelves/s1/books/b2"},
    ),
    ("/v1/{name=**}", "/v1/a/b/c", {"name": "a/b/c"}),
    ("/v1/{name=**}", "/v1/a", {"name": "a"}),
    ("/v1/{name=**}", "/v1", {"name": ""}),
    ("/v1/{name=shelves/**}", "/v1/shelves", {"name": "shelves"}),
    ("/v1/{name=shelves/**}", "/v1/shelves/a/b", {"name": "shelves/a/b"}),
    ("/v1/{name=books}", "/v1/books", {"name": "books"}),
    ("/v1/*/{id}", "/v1/anything/7", {"id": "7"}),
    ("/v1/**", "/v1/x/y", {}),
    ("/**", "/", {}),
    ("/{path=**}", "/", {"path": ""}),
    ("/{path=**}", "/a/b", {"path": "a/b"}),
    (
        "/v1/{parent=projects/*}/things/{thing_id}/{rest=**}",
        "/v1/projects/p/things/t/x/y",
        {"parent": "projects/p", "thing_id": "t", "rest": "x/y"},
    ),
    ("/v1/{a}/{b.c}/{d=x/*}", "/v1/1/2/x/3", {"a": "1", "b.c": "2", "d": "x/3"}),
    # literals compare with the decoded request segment, in both directions
    ("/v1/books", "/v1/b%6Foks", {}),
    ("/v1/books", "/v1/%62%6F%6F%6B%73", {}),
    ("/v1/b%6Foks", "/v1/books", {}),
    ("/v1/a%3Ab", "/v1/a:b", {}),
    ("/v1/a%3Ab", "/v1/a%3ab", {}),
    ("/v1/caf%C3%A9", "/v1/caf%c3%a9", {}),
    ("/v1/{name=shelves/*}", "/v1/sh%65lves/x", {"name": "shelves/x"}),
]


@pytest.mark.parametrize(("text", "path", "variables"), BINDS)
def test_matches_and_binds_variables(text: str, path: str, variables: dict[str, str]) -> None:
    found = matcher(("GET", text)).match("GET", path)
    assert found == Match(text, variables)
    assert found is not None and list(found.variables) == list(variables)


# registered GET template, request path that must not match it
MISSES = [
    ("/v1/books", ""),
    ("/v1/books", "v1/books"),
    ("/v1/books", "/v1/books/"),
    ("/v1/books", "/v1//books"),
    ("/v1/books", "//v1/books"),
    ("/v1/books", "/v1/Books"),
    ("/v1/books", "/v1/books/x"),
    ("/v1/books", "/v1"),
    ("/v1/books", "/v1/books%2F"),
    ("/v1/{id}", "/v1/"),
    ("/v1/{id}", "/v1"),
    ("/v1/{id}", "/v1/a/b"),
    ("/v1/{id}", "/v1//"),
    ("/v1/{name=shelves/*}", "/v1/shelves"),
    ("/v1/{name=shelves/*}", "/v1/shelves%2Fx"),
    ("/v1/{name=shelves/*}", "/v1/books/x"),
    ("/v1/{name=shelves/**}", "/v1/shelvesx"),
    ("/v1/{name=shelves/**}", "/v1/shelves/"),
    ("/v1/{name=shelves/**}", "/v1/shelves//a"),
    ("/v1/**", "/v1/a//b"),
    ("/v1/**", "/v2"),
    ("/**", "//"),
    ("/**", ""),
    ("/*", "/"),
    # invalid escapes anywhere mean no match rather than a guessed value
    ("/v1/{id}", "/v1/%zz"),
    ("/v1/{id}", "/v1/a%2"),
    ("/v1/{id}", "/v1/a%"),
    ("/v1/{id}", "/v1/%FF"),
    ("/v1/{id}", "/v1/%C3"),
    ("/v1/**", "/v1/ok/%G1"),
    ("/v1/{id}", "/v%zz/a"),
]


@pytest.mark.parametrize(("text", "path"), MISSES)
def test_does_not_match(text: str, path: str) -> None:
    routes = matcher(("GET", text))
    assert routes.match("GET", path) is None
    assert routes.allowed_methods(path) == []


# request path under /v1/things/{name} (single) and /v1/files/{path=**} (multi) -> values
DECODING = [
    ("plain", "plain", "plain"),
    ("a%20b", "a b", "a b"),
    ("a%2Fb", "a/b", "a%2Fb"),
    ("a%2fb", "a/b", "a%2fb"),
    ("a+b", "a+b", "a+b"),
    ("a%2Bb", "a+b", "a+b"),
    ("%25", "%", "%"),
    ("%252F", "%2F", "%2F"),
    ("%3A%3F%23%26%3D", ":?#&=", ":?#&="),
    ("caf%C3%A9", "café", "café"),
    ("~-._", "~-._", "~-._"),
    ("a:b", "a:b", "a:b"),
]


@pytest.mark.parametrize(("segment", "single", "multi"), DECODING)
def test_decodes_single_segment_fully_and_multi_segment_except_slash(
    segment: str, single: str, multi: str
) -> None:
    routes = matcher(("GET", "/v1/things/{name}"), ("GET", "/v1/files/{path=**}"))
    assert routes.match("GET", f"/v1/things/{segment}") == Match(
        "/v1/things/{name}", {"name": single}
    )
    assert routes.match("GET", f"/v1/files/x/{segment}") == Match(
        "/v1/files/{path=**}", {"path": f"x/{multi}"}
    )


def test_multi_segment_literal_pattern_variable_keeps_encoded_slash() -> None:
    routes = matcher(("GET", "/v1/{name=shelves/*}"))
    assert routes.match("GET", "/v1/shelves/a%2Fb%20c") == Match(
        "/v1/{name=shelves/*}", {"name": "shelves/a%2Fb c"}
    )


# templates (all GET), request path -> the template that must win
SPECIFICITY = [
    # a literal beats "*", "*" beats "**"
    (["/v1/books/{id}", "/v1/books/special"], "/v1/books/special", "/v1/books/special"),
    (["/v1/books/{id}", "/v1/books/special"], "/v1/books/other", "/v1/books/{id}"),
    (["/a/*", "/a/**"], "/a/b", "/a/*"),
    (["/a/*", "/a/**"], "/a/b/c", "/a/**"),
    (["/a/b", "/a/**"], "/a/b", "/a/b"),
    (["/a/b/*", "/a/**"], "/a/b/c", "/a/b/*"),
    # a template that ended beats "**" matching zero segments
    (["/a", "/a/**"], "/a", "/a"),
    (["/a/{x=**}", "/a"], "/a", "/a"),
    (["/**", "/a"], "/a", "/a"),
    (["/**", "/*"], "/a", "/*"),
    (["/**", "/*"], "/", "/**"),
    # the first differing position decides, left to right
    (["/a/*", "/*/b"], "/a/b", "/a/*"),
    (["/a/b/**", "/a/*/c"], "/a/b/c", "/a/b/**"),
    (["/*/b/c", "/a/*/*"], "/a/b/c", "/a/*/*"),
    (["/{x}/b/c", "/a/{y=**}"], "/a/b/c", "/a/{y=**}"),
    # backtracking out of a more specific branch that dead-ends
    (["/a/b/c", "/a/*/d", "/*/b/d"], "/a/b/d", "/a/*/d"),
    (["/a/b/c", "/*/b/d"], "/a/b/d", "/*/b/d"),
    (["/a/b/c", "/a/**"], "/a/b/d", "/a/**"),
    (["/a/b/c/d", "/**"], "/a/b/c", "/**"),
    # literals inside variables count as literals
    (["/v1/{name=shelves/*}", "/v1/*/{id}"], "/v1/shelves/1", "/v1/{name=shelves/*}"),
    (["/v1/{name=shelves/*}", "/v1/*/{id}"], "/v1/books/1", "/v1/*/{id}"),
    (
        [
            "/v1/shelves/{shelf}/books/{book}",
            "/v1/shelves/{shelf}/books/special",
            "/v1/{name=**}",
            "/v1/*/books/{book}",
        ],
        "/v1/shelves/s/books/special",
        "/v1/shelves/{shelf}/books/special",
    ),
    (
        [
            "/v1/shelves/{shelf}/books/{book}",
            "/v1/shelves/{shelf}/books/special",
            "/v1/{name=**}",
            "/v1/*/books/{book}",
        ],
        "/v1/other/books/b",
        "/v1/*/books/{book}",
    ),
    (
        [
            "/v1/shelves/{shelf}/books/{book}",
            "/v1/shelves/{shelf}/books/special",
            "/v1/{name=**}",
            "/v1/*/books/{book}",
        ],
        "/v1/shelves/s/books",
        "/v1/{name=**}",
    ),
    # a template with the request's verb beats any template without a verb
    (["/v1/things/{name}", "/v1/{name=**}:cancel"], "/v1/things/a:cancel", "/v1/{name=**}:cancel"),
    (["/v1/things/{name}", "/v1/{name=**}:cancel"], "/v1/things/a", "/v1/things/{name}"),
    (["/v1/things/a:cancel", "/v1/things/*:cancel"], "/v1/things/a:cancel", "/v1/things/a:cancel"),
    (["/**:cancel", "/**"], "/a/b:cancel", "/**:cancel"),
]


@pytest.mark.parametrize(("templates", "path", "winner"), SPECIFICITY)
def test_most_specific_template_wins_in_every_registration_order(
    templates: list[str], path: str, winner: str
) -> None:
    for order in itertools.permutations(templates):
        found = matcher(*(("GET", text) for text in order)).match("GET", path)
        assert found is not None and found.value == winner, order


# templates (with their methods), method, path -> winner (None: no match), variables
VERBS = [
    # custom verb routes
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/x:cancel", "/v1/{name}:cancel", {"name": "x"}),
    ([("POST", "/v1/things:batchGet")], "POST", "/v1/things:batchGet", "/v1/things:batchGet", {}),
    (
        [("POST", "/v1/{name}:cancel"), ("POST", "/v1/{name}:undo")],
        "POST",
        "/v1/x:undo",
        "/v1/{name}:undo",
        {"name": "x"},
    ),
    (
        [("GET", "/v1/{name=**}:download")],
        "GET",
        "/v1/a/b:download",
        "/v1/{name=**}:download",
        {"name": "a/b"},
    ),
    (
        [("GET", "/v1/{name=**}:download")],
        "GET",
        "/v1:download",
        "/v1/{name=**}:download",
        {"name": ""},
    ),
    ([("GET", "/v1/{name=**}:download")], "GET", "/v1/a/b", None, {}),
    # the verb is split at the last colon of the last segment
    (
        [("POST", "/v1/{name}:cancel")],
        "POST",
        "/v1/a:b:cancel",
        "/v1/{name}:cancel",
        {"name": "a:b"},
    ),
    # escaped verb text still names the verb; an escaped colon does not start one
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/x:canc%65l", "/v1/{name}:cancel", {"name": "x"}),
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/x%3Acancel", None, {}),
    (
        [("POST", "/v1/{name}:cancel"), ("POST", "/v1/{name}")],
        "POST",
        "/v1/x%3Acancel",
        "/v1/{name}",
        {"name": "x:cancel"},
    ),
    # a template with a verb needs the verb
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/x", None, {}),
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/x:undo", None, {}),
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/x:", None, {}),
    ([("POST", "/v1/{name}:cancel")], "POST", "/v1/:cancel", None, {}),
    # the colon is part of the segment when no template has that verb
    ([("GET", "/v1/things/{name}")], "GET", "/v1/things/a:b", "/v1/things/{name}", {"name": "a:b"}),
    (
        [("GET", "/v1/things/{name}"), ("POST", "/v1/things/{name}:cancel")],
        "GET",
        "/v1/things/a:b",
        "/v1/things/{name}",
        {"name": "a:b"},
    ),
    ([("GET", "/v1/{name}")], "GET", "/v1/:cancel", "/v1/{name}", {"name": ":cancel"}),
    ([("GET", "/v1/{name=**}")], "GET", "/v1/a:b/c:d", "/v1/{name=**}", {"name": "a:b/c:d"}),
    ([("GET", "/v1/{x}/c")], "GET", "/v1/a:b/c", "/v1/{x}/c", {"x": "a:b"}),
    # ... but a verb another method takes for this path is that verb, never a
    # variable's text: PATCH /v1/orders/abc:cancel must not run UpdateOrder("abc:cancel")
    (
        [("GET", "/v1/things/{name}"), ("POST", "/v1/things/{name}:cancel")],
        "GET",
        "/v1/things/a:cancel",
        None,
        {},
    ),
    # ... and when no template with the verb matches the path, the unsplit path is tried
    (
        [("GET", "/v1/things/{name}"), ("POST", "/v1/other/{name}:cancel")],
        "GET",
        "/v1/things/a:cancel",
        "/v1/things/{name}",
        {"name": "a:cancel"},
    ),
    (
        [("GET", "/v1/{name}:cancel"), ("GET", "/v1/{name=**}")],
        "GET",
        "/v1/a/b:cancel",
        "/v1/{name=**}",
        {"name": "a/b:cancel"},
    ),
    # among templates with the verb, segments decide as usual
    (
        [("GET", "/v1/{name}:cancel"), ("GET", "/v1/a:cancel")],
        "GET",
        "/v1/a:cancel",
        "/v1/a:cancel",
        {},
    ),
    (
        [("GET", "/v1/{name}:cancel"), ("GET", "/v1/a:cancel")],
        "GET",
        "/v1/b:cancel",
        "/v1/{name}:cancel",
        {"name": "b"},
    ),
]


@pytest.mark.parametrize(("routes", "method", "path", "winner", "variables"), VERBS)
def test_custom_verbs(
    routes: list[tuple[str, str]],
    method: str,
    path: str,
    winner: str | None,
    variables: dict[str, str],
) -> None:
    found = matcher(*routes).match(method, path)
    assert found == (None if winner is None else Match(winner, variables))


def test_literal_with_a_colon_is_not_a_verb() -> None:
    # "/v1/a%3Acancel" is the one-segment literal "a:cancel"; the verb reading of the
    # request ("a" + cancel) finds no template, so the whole segment is compared.
    routes = matcher(("GET", "/v1/a%3Acancel"), ("GET", "/v1/{name}:cancel"))
    assert routes.match("GET", "/v1/a:cancel") == Match("/v1/{name}:cancel", {"name": "a"})
    assert routes.match("GET", "/v1/a%3Acancel") == Match("/v1/a%3Acancel", {})


REST = [
    ("GET", "/v1/things/{name}"),
    ("DELETE", "/v1/things/{name}"),
    ("PATCH", "/v1/things/{thing.name}"),
    ("POST", "/v1/things"),
    ("GET", "/v1/things"),
    ("POST", "/v1/things/{name}:cancel"),
    ("PURGE", "/v1/cache/**"),
]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/things/a", ["DELETE", "GET", "PATCH"]),
        ("/v1/things", ["GET", "POST"]),
        # Only the method whose template has the verb applies to a path with it.
        ("/v1/things/a:cancel", ["POST"]),
        ("/v1/things/a:b", ["DELETE", "GET", "PATCH"]),
        ("/v1/cache", ["PURGE"]),
        ("/v1/cache/x/y", ["PURGE"]),
        ("/v1/nothing", []),
        ("/v1/things/a/b", []),
        ("/v1/things/", []),
        ("/v1/things/%zz", []),
        ("v1/things", []),
        ("/", []),
    ],
)
def test_allowed_methods_lists_every_method_that_matches(path: str, allowed: list[str]) -> None:
    routes = matcher(*REST)
    assert routes.allowed_methods(path) == allowed
    methods = {method for method, _ in REST}
    assert sorted(m for m in methods if routes.match(m, path) is not None) == allowed


@pytest.mark.parametrize(
    ("method", "path", "winner"),
    [
        ("GET", "/v1/things/a", "/v1/things/{name}"),
        ("PATCH", "/v1/things/a", "/v1/things/{thing.name}"),
        ("PUT", "/v1/things/a", None),
        ("get", "/v1/things/a", None),
        ("POST", "/v1/things/a", None),
        ("PURGE", "/v1/cache/a", "/v1/cache/**"),
    ],
)
def test_methods_are_matched_exactly(method: str, path: str, winner: str | None) -> None:
    found = matcher(*REST).match(method, path)
    assert (found.value if found else None) == winner


def test_empty_matcher_matches_nothing() -> None:
    empty: PathMatcher[str] = PathMatcher()
    assert empty.match("GET", "/") is None
    assert empty.allowed_methods("/v1/x") == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/v1/things", "/v1/things"),
        ("/v1/{a}", "/v1/{b}"),
        ("/v1/{a}", "/v1/*"),
        ("/v1/{a=**}", "/v1/**"),
        ("/v1/{name=shelves/*}", "/v1/shelves/{id}"),
        ("/v1/b%6Foks", "/v1/books"),
        ("/v1/a%3Ab", "/v1/a%3ab"),
        ("/v1/{name}:cancel", "/v1/*:cancel"),
        ("/v1/{name}:c%61ncel", "/v1/*:cancel"),
    ],
)
def test_equivalent_templates_for_one_method_are_refused_naming_both(
    first: str, second: str
) -> None:
    routes = matcher(("GET", first))
    with pytest.raises(ValueError, match="is equivalent to") as caught:
        routes.add("GET", parse_template(second), "again")
    assert str(caught.value) == f"GET {second} is equivalent to GET {first}, registered already"
    found = routes.match("GET", parse_template(first).expand(_sample_values(first)))
    assert found is not None and found.value == first


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("GET", "/v1/things"), ("POST", "/v1/things")),
        (("GET", "/v1/{a}"), ("GET", "/v1/{a}:cancel")),
        (("POST", "/v1/{a}:cancel"), ("POST", "/v1/{a}:undo")),
        (("GET", "/v1/**"), ("GET", "/v1")),
        (("GET", "/v1/**"), ("GET", "/v1/*")),
        (("GET", "/v1/{a}"), ("GET", "/v1/books")),
    ],
)
def test_distinct_templates_coexist(first: tuple[str, str], second: tuple[str, str]) -> None:
    matcher(first, second)


@pytest.mark.parametrize("method", ["", "GE T", "GET/", "GET\n", "G\u00c9T"])
def test_invalid_method_names_are_refused(method: str) -> None:
    with pytest.raises(ValueError, match="invalid HTTP method"):
        matcher((method, "/v1"))


# template, variables -> expand, then match: the same variables come back
ROUND_TRIPS = [
    ("/v1/things/{name}", {"name": "plain"}),
    ("/v1/things/{name}", {"name": "a/b c+d:e%f?g#h&i=j"}),
    ("/v1/things/{name}", {"name": "café ☕"}),
    ("/v1/things/{name}", {"name": "%2F"}),
    ("/v1/things/{name}:cancel", {"name": "x:cancel"}),
    ("/v1/{name=shelves/*}", {"name": "shelves/a b"}),
    ("/v1/{book.name=shelves/*/books/*}", {"book.name": "shelves/1/books/2 3"}),
    ("/v1/{path=**}", {"path": "a/b/c"}),
    ("/v1/{path=**}", {"path": ""}),
    ("/v1/{path=**}", {"path": "x%2Fy/z"}),
    ("/v1/{path=**}:download", {"path": "x/y:z"}),
    ("/v1/{path=files/**}", {"path": "files"}),
    ("/{a}/{b.c=x/*}/{d=**}", {"a": "1", "b.c": "x/2", "d": "3/4"}),
    ("/v1/caf%C3%A9/{id}", {"id": "é"}),
]


@pytest.mark.parametrize(("text", "values"), ROUND_TRIPS)
def test_expand_then_match_round_trips(text: str, values: dict[str, str]) -> None:
    template = parse_template(text)
    routes: PathMatcher[str] = PathMatcher()
    routes.add("GET", template, text)
    path = template.expand(values)
    assert routes.match("GET", path) == Match(text, values)
    assert set(template.openapi_parameters()) == set(values)


def _sample_values(text: str) -> dict[str, str]:
    """Values that fit every variable of a template: literals kept, wildcards as 'x'."""
    template = parse_template(text)
    values = {}
    for variable in template.variables:
        parts = [s.value if s.kind is LITERAL else "x" for s in variable.segments]
        values[variable.name] = "/".join(parts)
    for index, name in enumerate(template.openapi_parameters()):
        values.setdefault(name, f"w{index}")
    return values


# An independent, brute-force statement of the rules, to check the trie against.
ORACLE_TEMPLATES = [
    "/a",
    "/a/b",
    "/a/*",
    "/*/b",
    "/*",
    "/**",
    "/a/**",
    "/*/*",
    "/a/b/*",
    "/*/b/**",
    "/x/{n=a/*}",
    "/a/*:v",
    "/**:v",
    "/*/b:v",
    "/a/b/x",
]


def _oracle(templates: list[str], path: str) -> str | None:
    parsed = [parse_template(text) for text in templates]
    verbs = {t.verb for t in parsed if t.verb}
    segments = path[1:].split("/") if path != "/" else []
    readings: list[tuple[list[str], str | None]] = []
    head, colon, verb = segments[-1].rpartition(":") if segments else ("", "", "")
    if colon and head and verb in verbs:
        readings.append(([*segments[:-1], head], verb))
    readings.append((segments, None))
    for request, wanted in readings:
        ranked = []
        for template in parsed:
            kinds = [s.kind for s in template.segments]
            fixed = kinds[:-1] if kinds and kinds[-1] is DOUBLE_WILDCARD else kinds
            open_end = len(fixed) < len(kinds)
            if template.verb != wanted or len(request) < len(fixed):
                continue
            if not open_end and len(request) != len(fixed):
                continue
            if any(
                s.kind is LITERAL and s.value != request[i]
                for i, s in enumerate(template.segments[: len(fixed)])
            ):
                continue
            # literal 0, "*" 1, ended 1.5, "**" 2; compared left to right
            key = [0.0 if k is LITERAL else 1.0 for k in fixed] + [2.0 if open_end else 1.5]
            ranked.append((key, template.source))
        if ranked:
            return min(ranked)[1]
    return None


def test_trie_agrees_with_brute_force_oracle_on_every_short_path() -> None:
    paths = ["/"]
    for length in range(1, 5):
        for parts in itertools.product("abx", repeat=length):
            base = "/" + "/".join(parts)
            paths.extend([base, base + ":v", base + ":w"])
    forward = matcher(*(("GET", text) for text in ORACLE_TEMPLATES))
    backward = matcher(*(("GET", text) for text in reversed(ORACLE_TEMPLATES)))
    for path in paths:
        expected = _oracle(ORACLE_TEMPLATES, path)
        for routes in (forward, backward):
            found = routes.match("GET", path)
            assert (found.value if found else None) == expected, path
