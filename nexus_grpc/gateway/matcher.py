"""Route matching for the REST gateway: (HTTP method, raw path) -> registered value.

Templates are stored in one trie per HTTP method, a node per template segment
(literal children in a dict keyed by the decoded literal, one ``*`` child, and
the routes whose final segment is ``**``), so a lookup walks the request's
segments instead of scanning routes and never compiles anything per request.

Request paths
    ``path`` is the raw path as sent (percent-encoded, no query string).  It must
    start with ``/``; ``/`` alone has zero segments.  Any empty segment (``//``,
    a trailing ``/``) means no match: ``/v1/orders/`` does not match
    ``/v1/orders``.  A malformed escape (``%`` not followed by two hex digits) or
    escapes that do not decode to UTF-8 anywhere in the path also mean no match
    (the gateway answers 404): the path is not a valid URL path and guessing its
    meaning would hand wrong values to the service.  ``+`` is never a space.

Literals
    A literal matches the request segment once that is percent-decoded, so
    ``/v1/b%6Foks`` matches ``books``.  Literals written with escapes in the
    template are decoded the same way, and two templates that differ only in
    how a literal is escaped are the same template.

Verbs
    If the last segment contains ``:`` and the text after its last ``:``
    (decoded) is the verb of some registered template (of any method), the
    request is first matched as that segment's prefix plus the verb, against
    templates with that verb.  When a template with that verb matches the path
    under some other HTTP method, the verb is taken as the verb and the request
    matches nothing (the gateway answers 405 with that method in ``Allow``):
    ``PATCH /v1/orders/abc:cancel``, where only ``POST /v1/orders/{id}:cancel``
    exists, must not run ``PATCH /v1/orders/{id}`` with id ``abc:cancel``.  This is
    what Google's and Envoy's transcoders do (a registered custom verb is always
    split off).  Only when no template with the verb matches the path at all, or
    the verb is not registered, is the whole segment -- colon included -- matched
    against templates without a verb, so ``/v1/things/a:b`` can still bind
    ``{name}`` to ``a:b``.  An encoded colon (``%3A``) never starts a verb.

Specificity -- which template wins when several match
    1. A template with a verb beats every template without one (a request only
       reaches verbless templates when no template with its verb matches).
    2. Otherwise templates are compared segment by segment, left to right; at
       the first position where they differ, a literal beats ``*``, ``*`` beats
       ``**``, and a template that has ended (its last segment matched the last
       request segment) beats one whose ``**`` would match zero segments there.
       Two matching templates can only differ in these ways: different literals
       at a position cannot both match.
    3. Templates that never differ are equivalent (same segment kinds, same
       decoded literals, same verb, whatever their variable names), and
       :meth:`PathMatcher.add` refuses a second equivalent template for one
       method, so the order is total and registration order never matters.
    The trie's depth-first search visits children in exactly this order and
    stops at the first route, which is therefore the most specific one.

Variables
    Single-segment variables are fully decoded (``%2F`` becomes ``/``).
    Multi-segment ones (covering ``**`` or more than one segment) are the
    covered raw segments joined by ``/`` and decoded except ``%2F``/``%2f``,
    which stay as written, per ``http.proto``.  (Google's reference decoder by
    default also keeps every other RFC 6570 reserved character encoded; this
    follows the text of ``http.proto`` instead, which only exempts the slash.)
    ``**`` matches zero or more segments, as in the reference implementation:
    ``/v1/{name=shelves/**}`` matches ``/v1/shelves`` with name ``shelves``.

A matcher is built by :meth:`~PathMatcher.add` calls and then only read; reads
do not mutate it, so one instance can serve any number of concurrent requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from nexus_grpc.gateway.template import (
    DOUBLE_WILDCARD,
    WILDCARD,
    PathTemplate,
    percent_decode,
    percent_decode_keep_slash,
)

__all__ = ["Match", "PathMatcher"]

T = TypeVar("T")

# RFC 9110 method token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True)
class Match(Generic[T]):
    """The route a request matched and the values its path binds."""

    value: T
    #: Dotted field path -> decoded value, in template order.
    variables: dict[str, str]


# (field name, first request segment, end segment or -1 for "to the end", multi-segment)
_Binding = tuple[str, int, int, bool]


class _Route(Generic[T]):
    __slots__ = ("bindings", "method", "template", "value")

    def __init__(self, method: str, template: PathTemplate, value: T) -> None:
        self.method = method
        self.template = template
        self.value = value
        # A variable holding "**" ends with the template, hence with the request.
        self.bindings: tuple[_Binding, ...] = tuple(
            (
                variable.name,
                variable.start,
                -1 if variable.segments[-1].kind is DOUBLE_WILDCARD else variable.end,
                variable.multi_segment,
            )
            for variable in template.variables
        )


class _Node(Generic[T]):
    __slots__ = ("ended", "literals", "rest", "star")

    def __init__(self) -> None:
        self.literals: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        # Routes whose next (and last) template segment is "**", by decoded verb.
        self.rest: dict[str | None, _Route[T]] = {}
        # Routes whose template ends here, by decoded verb (None: no verb).
        self.ended: dict[str | None, _Route[T]] = {}


def _find(node: _Node[T], segments: list[str], index: int, verb: str | None) -> _Route[T] | None:
    """The most specific route under ``node`` for ``segments[index:]``, depth first."""
    if index == len(segments):
        route = node.ended.get(verb)
        # A template that has ended beats one whose "**" matches nothing.
        return route if route is not None else node.rest.get(verb)
    child = node.literals.get(segments[index])
    if child is not None:
        route = _find(child, segments, index + 1, verb)
        if route is not None:
            return route
    if node.star is not None:
        route = _find(node.star, segments, index + 1, verb)
        if route is not None:
            return route
    return node.rest.get(verb)


class _Request:
    """A request path cut into segments, with its verb reading when one applies."""

    __slots__ = ("decoded", "raw", "split_decoded", "split_raw", "verb")

    def __init__(
        self,
        raw: list[str],
        decoded: list[str],
        verb: str | None,
        split_raw: list[str],
        split_decoded: list[str],
    ) -> None:
        self.raw = raw
        self.decoded = decoded
        self.verb = verb
        self.split_raw = split_raw
        self.split_decoded = split_decoded


class PathMatcher(Generic[T]):
    """Maps (HTTP method, request path) to registered values by path template.

    See the module documentation for the matching and specificity rules.
    """

    def __init__(self) -> None:
        self._roots: dict[str, _Node[T]] = {}
        # Decoded verbs of all registered templates: only these split a last segment.
        self._verbs: set[str] = set()

    def add(self, http_method: str, template: PathTemplate, value: T) -> None:
        """Register ``value`` for requests with ``http_method`` whose path fits ``template``.

        ``http_method`` is compared case-sensitively (GET, POST, ... or a custom
        method).  Raises ValueError for an invalid method name, or when an
        equivalent template (see the module documentation) is registered for the
        same method already; the message names both templates.
        """
        if _METHOD.fullmatch(http_method) is None:
            raise ValueError(f"invalid HTTP method {http_method!r} for {template.source}")
        verb = None if template.verb is None else percent_decode(template.verb)
        node = self._roots.setdefault(http_method, _Node())
        slots: dict[str | None, _Route[T]] | None = None
        for segment in template.segments:
            if segment.kind is DOUBLE_WILDCARD:
                # The parser guarantees "**" is last, so it is a terminal of its node.
                slots = node.rest
                break
            if segment.kind is WILDCARD:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                node = node.literals.setdefault(segment.value, _Node())
        if slots is None:
            slots = node.ended
        existing = slots.get(verb)
        if existing is not None:
            raise ValueError(
                f"{http_method} {template.source} is equivalent to {existing.method} "
                f"{existing.template.source}, registered already"
            )
        slots[verb] = _Route(http_method, template, value)
        if verb is not None:
            self._verbs.add(verb)

    def match(self, http_method: str, path: str) -> Match[T] | None:
        """The most specific route for a request, with its bound variables, or None.

        ``path`` is the raw request path: percent-encoded, without query string.
        """
        root = self._roots.get(http_method)
        if root is None:
            return None
        request = self._split(path)
        if request is None:
            return None
        if request.verb is not None:
            route = _find(root, request.split_decoded, 0, request.verb)
            if route is not None:
                return _bind(route, request.split_raw, request.split_decoded)
            if self._verb_methods(request):
                return None  # the verb is another method's: 405, never a variable's text
        route = _find(root, request.decoded, 0, None)
        if route is not None:
            return _bind(route, request.raw, request.decoded)
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Sorted methods for which some template matches ``path`` (for 405 and Allow)."""
        request = self._split(path)
        if request is None:
            return []
        # As in match(): a verb some template takes for this path is the verb, and only
        # the methods with that verb apply.
        verb_methods = self._verb_methods(request)
        if verb_methods:
            return verb_methods
        return [
            method
            for method, root in sorted(self._roots.items())
            if _find(root, request.decoded, 0, None) is not None
        ]

    def _verb_methods(self, request: _Request) -> list[str]:
        """Sorted methods with a template for the request's path and verb."""
        if request.verb is None:
            return []
        return [
            method
            for method, root in sorted(self._roots.items())
            if _find(root, request.split_decoded, 0, request.verb) is not None
        ]

    def _split(self, path: str) -> _Request | None:
        """Cut, validate and decode a request path; None when it can match nothing."""
        if not path.startswith("/"):
            return None
        raw = path[1:].split("/") if len(path) > 1 else []
        if "" in raw:
            return None
        if "%" in path:
            decoded: list[str] = []
            for segment in raw:
                text = percent_decode(segment)
                if text is None:
                    return None
                decoded.append(text)
        else:
            decoded = raw
        verb: str | None = None
        split_raw = split_decoded = raw
        if self._verbs and raw:
            last = raw[-1]
            colon = last.rfind(":")
            # An empty remainder ("/v1/:cancel") would be an empty segment: no verb.
            if colon > 0:
                candidate = percent_decode(last[colon + 1 :])
                if candidate in self._verbs:
                    head = last[:colon]
                    head_decoded = percent_decode(head)
                    if head_decoded is not None:
                        verb = candidate
                        split_raw = [*raw[:-1], head]
                        split_decoded = [*decoded[:-1], head_decoded]
        return _Request(raw, decoded, verb, split_raw, split_decoded)


def _bind(route: _Route[T], raw: list[str], decoded: list[str]) -> Match[T]:
    """The match of ``route`` with its variables read from the request segments."""
    variables: dict[str, str] = {}
    for name, start, end, multi in route.bindings:
        if not multi:
            variables[name] = decoded[start]
            continue
        # Every segment decoded already, so the slash-keeping decode cannot fail.
        joined = "/".join(raw[start : len(raw) if end < 0 else end])
        value = percent_decode_keep_slash(joined)
        variables[name] = joined if value is None else value
    return Match(route.value, variables)
