"""Request validation from the ``nexus.options.v1.rules`` field options of the contracts.

A contract annotates fields with :class:`FieldRules`; :class:`ValidationStage` checks
every request against them before the handler runs, whatever the transport, and fails
the call with INVALID_ARGUMENT and a ``google.rpc.BadRequest`` naming each bad field.
A handler is never called with a request that breaks its contract.

Rules are compiled once per message type (:func:`compile_validator`, cached by full
name) into a short list of check closures per field; a method whose request type
reaches no rule at all gets no validation, at no cost. The cache holds types of the
default descriptor pool only: a plugin upgraded to a changed contract has its types in
a pool of its own (:mod:`nexus_grpc.plugins.generations`), where a name may carry other
rules than in the first version, so its validators are compiled apart, once per route
binding, and go when the generation goes.

Semantics
---------
Field paths
    Proto field names, dotted for nested messages, ``[i]`` for list elements and
    ``["key"]`` for map values (integer keys ``[7]``, bool keys ``[true]``):
    ``order.items[0].quantity``, ``labels["env"]``.
``required``
    A non-empty string or bytes, a present singular message (``HasField``), a
    non-empty list or map, an enum other than 0, a non-zero number, a true bool.
    Description ``required``. A field that fails ``required`` is not checked further
    (its other rules would only repeat that it is empty).
``min_len`` / ``max_len``
    Characters (``len`` of the str) for strings, bytes for bytes; 0 means no check.
    ``at least 12 characters``, ``at most 500 characters`` (``bytes`` for bytes).
``pattern``
    ``re.fullmatch`` of the whole string, compiled once; the empty string is checked
    too, so a pattern that does not match "" makes the field required.
    ``must match <pattern>``.
``min`` / ``max``
    Integer fields only (every int, uint, sint, fixed and sfixed kind), compared when
    set in the rules (presence, not zero). ``must be at least N`` / ``must be at most N``.
``min_items`` / ``max_items``
    Repeated and map fields; 0 means no check. ``at least N items`` / ``at most N items``.
``defined_only``
    The enum value must be one its enum declares. ``must be one of A, B, C``.
Lists and maps
    ``required``, ``min_items`` and ``max_items`` apply to the list or map; every other
    rule applies to each element of a list and to each value of a map.
Nested messages
    Set singular message fields, message list elements and message map values are
    checked against their own type's rules, recursively (recursive types included).
    The only rule a message-typed field itself takes is ``required`` (plus the item
    counts on lists and maps). Well-known types (``google.protobuf.*``) are not
    descended into; instead every Timestamp, Duration, FieldMask and Any a request
    holds, with rules or without, is checked against its own type's contract
    (:mod:`nexus_grpc.access.well_known`): ``since_time.seconds``, ``update_mask.paths[0]``.
Values are what the request holds: like proto3 itself, the checks do not tell an unset
scalar from its zero value (also for fields with explicit presence).

Every violation is reported, in field declaration order (map values in key order);
:class:`~nexus_grpc.errors.InvalidArgumentError` caps how many are sent.

Rules that cannot work are errors when the contract is loaded (``ValueError`` naming
the field), never per-request failures: a pattern that does not compile, ``min``/``max``
on a non-integer field, length or pattern rules on a field that is not a string (or
bytes, for lengths), ``defined_only`` on a non-enum, item counts on a singular field,
value rules on a message-typed field, and bounds whose minimum exceeds the maximum.

Client-streaming requests are validated message by message as the handler reads them
(the request iterator is wrapped); the first invalid message ends the stream with the
error, and it stays ended.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from nexus.options.v1 import options_pb2

from nexus_grpc.access.well_known import CHECKS as _WELL_KNOWN_CHECKS
from nexus_grpc.errors import FieldViolation, InvalidArgumentError
from nexus_grpc.routing import Arity, CallHandler, MethodInfo
from nexus_grpc.tracing.refusal import refusing

__all__ = ["ValidationStage", "Validator", "compile_validator"]

#: A compiled validator: the violations of one message, empty when it is valid.
Validator = Callable[[Message], list[FieldViolation]]

# A field check appends violations (paths relative to the message it is given).
_Violations = list[FieldViolation]
_FieldCheck = Callable[[Message, _Violations], None]
# A value check returns what is wrong with one value, or None.
_ValueCheck = Callable[[Any], str | None]

_REQUIRED = "required"
_INTEGERS = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_WELL_KNOWN_PREFIX = "google.protobuf."
# The generated stub types the extension as a plain FieldDescriptor, which the
# Extensions API does not accept.
_RULES_EXTENSION: Any = options_pb2.rules


class _Node:
    """The field checks of one message type.

    ``checks`` is filled after the node is cached, so fields of a recursive type can
    capture the list before it is complete.
    """

    __slots__ = ("checks",)

    def __init__(self) -> None:
        self.checks: list[_FieldCheck] = []


def _well_known_node(name: str) -> _Node | None:
    check = _WELL_KNOWN_CHECKS.get(name)
    if check is None:
        return None
    node = _Node()
    node.checks.append(check)
    return node


# One node per checked well-known type, shared by every field of that type.
_WELL_KNOWN_NODES = {name: _well_known_node(name) for name in _WELL_KNOWN_CHECKS}

_DEFAULT_POOL = descriptor_pool.Default()
_lock = threading.Lock()
_nodes: dict[str, _Node | None] = {}
_validators: dict[str, Validator | None] = {}


def compile_validator(descriptor: Descriptor) -> Validator | None:
    """The validator of ``descriptor``'s messages; None when nothing it reaches has rules.

    Compiled once per message type and cached by full name (types of the default pool
    only; see the module docstring). Raises ValueError, naming the field, when a rule
    of the type or of a type it reaches cannot be enforced.
    """
    if descriptor.file.pool is not _DEFAULT_POOL:
        node = _Compiler({}).node(descriptor)
        return None if node is None else _validator(node)
    name = descriptor.full_name
    try:
        return _validators[name]
    except KeyError:
        pass
    with _lock:
        if name in _validators:
            return _validators[name]
        compiler = _Compiler(_nodes)
        node = compiler.node(descriptor)
        # Only a compilation that succeeded as a whole is kept.
        _nodes.update(compiler.nodes)
        validator = None if node is None else _validator(node)
        _validators[name] = validator
        return validator


class ValidationStage:
    """Rejects requests that break their contract's field rules before the handler runs."""

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """``next`` itself when the request type has no rules, else ``next`` behind the checks."""
        validate = compile_validator(method.descriptor.input_type)
        if validate is None:
            return next
        if method.arity in (Arity.STREAM_UNARY, Arity.STREAM_STREAM):

            async def validate_each(requests: Any, context: Any) -> Any:
                return await next(_ValidatedStream(requests, validate), context)

            return validate_each

        async def validate_request(request: Any, context: Any) -> Any:
            violations = validate(request)
            if violations:
                raise InvalidArgumentError(violations)
            return await next(request, context)

        return validate_request


class _ValidatedStream:
    """A request stream whose messages are validated as they are read."""

    __slots__ = ("_error", "_requests", "_validate")

    def __init__(self, requests: AsyncIterable[Any], validate: Validator) -> None:
        self._requests: AsyncIterator[Any] = requests.__aiter__()
        self._validate = validate
        self._error: InvalidArgumentError | None = None

    def __aiter__(self) -> _ValidatedStream:
        return self

    async def __anext__(self) -> Any:
        if self._error is not None:
            # A handler that swallowed the error must not read on past the bad message.
            raise refusing(self._error)
        request = await self._requests.__anext__()
        violations = self._validate(request)
        if violations:
            self._error = InvalidArgumentError(violations)
            # Raised inside the handler, yet this stage's refusal (for its trace span).
            raise refusing(self._error)
        return request


def _validator(node: _Node) -> Validator:
    checks = node.checks

    def validate(message: Message) -> list[FieldViolation]:
        found: list[FieldViolation] = []
        for check in checks:
            check(message, found)
        return found

    return validate


class _Compiler:
    """Builds the nodes of one type and the types it reaches, on a copy of the cache."""

    def __init__(self, cached: dict[str, _Node | None]) -> None:
        self.nodes = dict(cached)
        self._reaches_rules: dict[str, bool] = {}

    def node(self, descriptor: Descriptor) -> _Node | None:
        """The node of ``descriptor``; None when no rule is reachable from it."""
        name = descriptor.full_name
        if name in self.nodes:
            return self.nodes[name]
        if name in _WELL_KNOWN_NODES:  # a method whose request is itself one
            return _WELL_KNOWN_NODES[name]
        if not self._has_rules(descriptor):
            self.nodes[name] = None
            return None
        node = _Node()
        self.nodes[name] = node  # before the fields: recursive references find it
        for field in descriptor.fields:
            check = self._field_check(field)
            if check is not None:
                node.checks.append(check)
        return node

    def _has_rules(self, descriptor: Descriptor) -> bool:
        name = descriptor.full_name
        known = self._reaches_rules.get(name)
        if known is not None:
            return known
        seen: set[str] = set()
        stack = [descriptor]
        found = False
        while stack and not found:
            current = stack.pop()
            if current.full_name in seen:
                continue
            seen.add(current.full_name)
            for field in current.fields:
                if _rules_of(field) is not None:
                    found = True
                    break
                child = field.message_type
                if child is None:
                    continue
                if child.full_name in _WELL_KNOWN_NODES:
                    found = True  # a checked well-known type is a rule of its own
                    break
                if not _well_known(child):
                    stack.append(child)
        self._reaches_rules[name] = found
        return found

    def _child(self, descriptor: Descriptor) -> _Node | None:
        if _well_known(descriptor):
            return _WELL_KNOWN_NODES.get(descriptor.full_name)
        return self.node(descriptor)

    def _field_check(self, field: FieldDescriptor) -> _FieldCheck | None:
        rules = _rules_of(field) or options_pb2.FieldRules()
        where = field.full_name
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            value_type = value_field.message_type
            node = None if value_type is None else self._child(value_type)
            return _map_check(
                field.name, where, rules, _value_checks(value_field, rules, where), node
            )
        if field.is_repeated:
            node = None if message_type is None else self._child(message_type)
            return _list_check(field.name, where, rules, _value_checks(field, rules, where), node)
        if rules.min_items or rules.max_items:
            raise ValueError(f"{where}: min_items/max_items apply to repeated and map fields only")
        if message_type is not None:
            _value_checks(field, rules, where)  # rejects value rules on a message field
            return _message_check(field.name, rules.required, self._child(message_type))
        return _scalar_check(field.name, rules.required, _value_checks(field, rules, where))


def _rules_of(field: FieldDescriptor) -> options_pb2.FieldRules | None:
    """The field's rules, None when it has none (or only defaults)."""
    if not field.has_options:
        return None
    options = field.GetOptions()
    if not options.HasExtension(_RULES_EXTENSION):
        return None
    rules: options_pb2.FieldRules = options.Extensions[_RULES_EXTENSION]
    return rules if rules.ListFields() else None


def _well_known(descriptor: Descriptor) -> bool:
    return descriptor.full_name.startswith(_WELL_KNOWN_PREFIX)


def _value_checks(
    value_field: FieldDescriptor, rules: options_pb2.FieldRules, where: str
) -> list[_ValueCheck]:
    """Checks of one value (the field's, or each element's or map value's) in rule order.

    Raises ValueError, naming ``where``, for a rule that does not fit the value's type.
    """
    checks: list[_ValueCheck] = []
    kind = value_field.type
    is_string = kind == FieldDescriptor.TYPE_STRING
    is_bytes = kind == FieldDescriptor.TYPE_BYTES
    if rules.min_len or rules.max_len:
        if not (is_string or is_bytes):
            raise ValueError(f"{where}: min_len/max_len apply to string and bytes fields only")
        checks.append(_length_check(rules.min_len, rules.max_len, is_string, where))
    if rules.pattern:
        if not is_string:
            raise ValueError(f"{where}: pattern applies to string fields only")
        checks.append(_pattern_check(rules.pattern, where))
    has_min, has_max = rules.HasField("min"), rules.HasField("max")
    if has_min or has_max:
        if value_field.cpp_type not in _INTEGERS:
            raise ValueError(f"{where}: min/max apply to integer fields only")
        checks.append(
            _range_check(rules.min if has_min else None, rules.max if has_max else None, where)
        )
    if rules.defined_only:
        if value_field.enum_type is None:
            raise ValueError(f"{where}: defined_only applies to enum fields only")
        values = value_field.enum_type.values
        numbers = frozenset(value.number for value in values)
        described = f"must be one of {', '.join(value.name for value in values)}"

        def defined(value: int) -> str | None:
            return None if value in numbers else described

        checks.append(defined)
    return checks


def _length_check(least: int, most: int, characters: bool, where: str) -> _ValueCheck:
    if most and least > most:
        raise ValueError(f"{where}: min_len {least} is greater than max_len {most}")
    unit = "character" if characters else "byte"
    too_short = f"at least {_count(least, unit)}"
    too_long = f"at most {_count(most, unit)}"
    most = most or -1

    def length(value: str | bytes) -> str | None:
        size = len(value)
        if size < least:
            return too_short
        if size > most >= 0:
            return too_long
        return None

    return length


def _pattern_check(pattern: str, where: str) -> _ValueCheck:
    try:
        fullmatch = re.compile(pattern).fullmatch
    except re.error as error:
        raise ValueError(f"{where}: pattern {pattern!r} does not compile: {error}") from error
    described = f"must match {pattern}"

    def matches(value: str) -> str | None:
        return None if fullmatch(value) else described

    return matches


def _range_check(least: int | None, most: int | None, where: str) -> _ValueCheck:
    if least is not None and most is not None and least > most:
        raise ValueError(f"{where}: min {least} is greater than max {most}")
    too_small = f"must be at least {least}"
    too_large = f"must be at most {most}"
    if most is None:
        assert least is not None
        low = least

        def at_least(value: int) -> str | None:
            return too_small if value < low else None

        return at_least
    high = most
    if least is None:

        def at_most(value: int) -> str | None:
            return too_large if value > high else None

        return at_most
    low = least

    def within(value: int) -> str | None:
        if value < low:
            return too_small
        if value > high:
            return too_large
        return None

    return within


def _count(number: int, unit: str) -> str:
    return f"{number} {unit}" if number == 1 else f"{number} {unit}s"


def _prefix(found: _Violations, start: int, path: str) -> None:
    """Put ``path.`` in front of the violations from ``start`` on (found in a sub-message)."""
    found[start:] = [
        FieldViolation(f"{path}.{violation.field}", violation.description)
        for violation in found[start:]
    ]


def _scalar_check(name: str, required: bool, checks: list[_ValueCheck]) -> _FieldCheck | None:
    if not checks:
        if not required:
            return None

        def required_only(message: Message, found: _Violations) -> None:
            if not getattr(message, name):
                found.append(FieldViolation(name, _REQUIRED))

        return required_only
    if len(checks) == 1:
        (only,) = checks

        def one(message: Message, found: _Violations) -> None:
            value = getattr(message, name)
            if required and not value:
                found.append(FieldViolation(name, _REQUIRED))
                return
            wrong = only(value)
            if wrong is not None:
                found.append(FieldViolation(name, wrong))

        return one

    def several(message: Message, found: _Violations) -> None:
        value = getattr(message, name)
        if required and not value:
            found.append(FieldViolation(name, _REQUIRED))
            return
        for check in checks:
            wrong = check(value)
            if wrong is not None:
                found.append(FieldViolation(name, wrong))

    return several


def _message_check(name: str, required: bool, node: _Node | None) -> _FieldCheck | None:
    if node is None:
        if not required:
            return None

        def present(message: Message, found: _Violations) -> None:
            if not message.HasField(name):
                found.append(FieldViolation(name, _REQUIRED))

        return present
    checks = node.checks

    def nested(message: Message, found: _Violations) -> None:
        if not message.HasField(name):
            if required:
                found.append(FieldViolation(name, _REQUIRED))
            return
        value = getattr(message, name)
        start = len(found)
        for check in checks:
            check(value, found)
        if len(found) != start:
            _prefix(found, start, name)

    return nested


def _size_check(
    name: str, where: str, rules: options_pb2.FieldRules
) -> Callable[[int, _Violations], bool] | None:
    """Check of a list's or map's size; returns False when the rest must be skipped."""
    required, least, most = rules.required, rules.min_items, rules.max_items
    if not (required or least or most):
        return None
    if most and least > most:
        raise ValueError(f"{where}: min_items {least} is greater than max_items {most}")
    too_few = f"at least {_count(least, 'item')}"
    too_many = f"at most {_count(most, 'item')}"
    most = most or -1

    def size(count: int, found: _Violations) -> bool:
        if count == 0 and required:
            found.append(FieldViolation(name, _REQUIRED))
            return False
        if count < least:
            found.append(FieldViolation(name, too_few))
        elif count > most >= 0:
            found.append(FieldViolation(name, too_many))
        return True

    return size


def _list_check(
    name: str,
    where: str,
    rules: options_pb2.FieldRules,
    checks: list[_ValueCheck],
    node: _Node | None,
) -> _FieldCheck | None:
    size = _size_check(name, where, rules)
    if node is not None:
        element_checks = node.checks

        def messages(message: Message, found: _Violations) -> None:
            elements = getattr(message, name)
            if size is not None and not size(len(elements), found):
                return
            for index, element in enumerate(elements):
                start = len(found)
                for check in element_checks:
                    check(element, found)
                if len(found) != start:
                    _prefix(found, start, f"{name}[{index}]")

        return messages
    if checks:

        def values(message: Message, found: _Violations) -> None:
            elements = getattr(message, name)
            if size is not None and not size(len(elements), found):
                return
            for index, element in enumerate(elements):
                for check in checks:
                    wrong = check(element)
                    if wrong is not None:
                        found.append(FieldViolation(f"{name}[{index}]", wrong))

        return values
    return None if size is None else _counted(name, size)


def _counted(name: str, count: Callable[[int, _Violations], bool]) -> _FieldCheck:
    """A field check that only counts the elements of repeated or map field ``name``."""

    def counted(message: Message, found: _Violations) -> None:
        count(len(getattr(message, name)), found)

    return counted


def _key_path(key: object) -> str:
    if isinstance(key, bool):
        return "[true]" if key else "[false]"
    if isinstance(key, int):
        return f"[{key}]"
    return f"[{json.dumps(key, ensure_ascii=False)}]"


def _map_check(
    name: str,
    where: str,
    rules: options_pb2.FieldRules,
    checks: list[_ValueCheck],
    node: _Node | None,
) -> _FieldCheck | None:
    size = _size_check(name, where, rules)
    if node is None and not checks:
        return None if size is None else _counted(name, size)

    if node is not None:
        value_checks = node.checks

        def check_entries(entries: Any, found: _Violations) -> None:
            for key, value in entries:
                start = len(found)
                for check in value_checks:
                    check(value, found)
                if len(found) != start:
                    _prefix(found, start, f"{name}{_key_path(key)}")

    else:

        def check_entries(entries: Any, found: _Violations) -> None:
            for key, value in entries:
                for check in checks:
                    wrong = check(value)
                    if wrong is not None:
                        found.append(FieldViolation(f"{name}{_key_path(key)}", wrong))

    def mapping(message: Message, found: _Violations) -> None:
        entries = getattr(message, name)
        if size is not None and not size(len(entries), found):
            return
        start = len(found)
        check_entries(entries.items(), found)
        if len(found) != start:
            # Map order is arbitrary: report in key order, which only costs when failing.
            del found[start:]
            check_entries(((key, entries[key]) for key in sorted(entries)), found)

    return mapping
