"""The contract's field rules (``nexus.options.v1.rules``) as JSON Schema keywords.

The validation stage enforces these rules on every request; the OpenAPI document
states them too, so a client generated from it knows what will be refused:
``required`` → the object's ``required`` list (and ``minLength: 1`` / ``minItems: 1``,
since proto3 cannot tell an empty value from an absent one), ``min_len``/``max_len`` →
``minLength``/``maxLength`` (strings; bytes are base64 text in JSON, so their length
is not the rule's), ``pattern`` → ``pattern``, ``min``/``max`` →
``minimum``/``maximum``, ``min_items``/``max_items`` → ``minItems``/``maxItems``
(``minProperties``/``maxProperties`` on maps). ``defined_only`` needs nothing: enum
schemas list the declared names already.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from nexus.options.v1 import options_pb2

__all__ = ["is_required", "list_constraints", "value_constraints"]

# The generated stubs type extensions as plain FieldDescriptors.
_RULES: Any = options_pb2.rules


def _rules(proto_field: FieldDescriptor) -> options_pb2.FieldRules | None:
    if not proto_field.has_options:
        return None
    options = proto_field.GetOptions()
    if not options.HasExtension(_RULES):
        return None
    rules: options_pb2.FieldRules = options.Extensions[_RULES]
    return rules


def is_required(proto_field: FieldDescriptor) -> bool:
    """Whether the field's rules say it must be set."""
    rules = _rules(proto_field)
    return rules is not None and rules.required


def value_constraints(proto_field: FieldDescriptor) -> dict[str, Any]:
    """Keywords for one value of ``proto_field`` (each element of a list or map value)."""
    rules = _rules(proto_field)
    if rules is None:
        return {}
    found: dict[str, Any] = {}
    if proto_field.type == FieldDescriptor.TYPE_STRING:
        least = rules.min_len or (1 if rules.required and not proto_field.is_repeated else 0)
        if least:
            found["minLength"] = least
        if rules.max_len:
            found["maxLength"] = rules.max_len
        if rules.pattern:
            found["pattern"] = rules.pattern
    if rules.HasField("min"):
        found["minimum"] = rules.min
    if rules.HasField("max"):
        found["maximum"] = rules.max
    return found


def list_constraints(proto_field: FieldDescriptor, *, is_map: bool) -> dict[str, Any]:
    """Keywords for a repeated or map field itself: how many elements it may have."""
    rules = _rules(proto_field)
    if rules is None:
        return {}
    least = rules.min_items or (1 if rules.required else 0)
    prefix = "Properties" if is_map else "Items"
    found: dict[str, Any] = {}
    if least:
        found[f"min{prefix}"] = least
    if rules.max_items:
        found[f"max{prefix}"] = rules.max_items
    return found
