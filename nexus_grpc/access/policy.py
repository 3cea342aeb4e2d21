"""The access policy a method declares in its contract, resolved once per method.

A method's ``(nexus.options.v1.policy)`` wins; otherwise its service's
``(nexus.options.v1.default_policy)`` applies; a method with neither has no access
rule and is denied — the host fails closed, and ``nexus lint`` names such methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import MethodDescriptor
from nexus.options.v1 import options_pb2

from nexus_grpc.auth.principal import Scope

__all__ = [
    "HOST_PUBLIC_SERVICES",
    "MISSING_POLICY_FIX",
    "Access",
    "EffectivePolicy",
    "effective_policy",
    "explain",
    "methods_without_policy",
]


class Access:
    """Kinds of access rule."""

    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    PERMISSION = "permission"
    #: No rule declared: denied.
    NONE = "none"


@dataclass(frozen=True)
class EffectivePolicy:
    """The rule that governs one method."""

    path: str
    access: str
    #: For permission access: resource, action and the least scope needed.
    resource: str = ""
    action: str = ""
    scope: Scope = Scope.OWN
    rate_limit_class: str = "default"
    #: Seconds; None when the caller's deadline (or none) applies.
    default_deadline: float | None = None
    idempotent: bool = False
    #: Where the rule comes from: "method", "service default", "host" or "none".
    source: str = "none"

    @property
    def permission(self) -> str:
        """``resource.action`` for permission access, "" otherwise."""
        return f"{self.resource}.{self.action}" if self.access == Access.PERMISSION else ""


#: The host's own services that answer anyone: health probes and grpcurl carry no
#: tokens, and neither service reveals more than the contracts being served.
HOST_PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
_PUBLIC = options_pb2.MethodPolicy(public=True)
# The generated stubs type extensions as plain FieldDescriptors, which the protobuf
# stubs do not accept as extension handles.
_POLICY: Any = options_pb2.policy
_DEFAULT_POLICY: Any = options_pb2.default_policy

_SCOPES = {
    options_pb2.SCOPE_UNSPECIFIED: Scope.OWN,
    options_pb2.SCOPE_OWN: Scope.OWN,
    options_pb2.SCOPE_TEAM: Scope.TEAM,
    options_pb2.SCOPE_ALL: Scope.ALL,
}


def effective_policy(method: MethodDescriptor) -> EffectivePolicy:
    """The policy of ``method``: the host's (health, reflection), the method's, the service's."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    method_options = method.GetOptions()
    service_options = method.containing_service.GetOptions()
    if method.containing_service.full_name in HOST_PUBLIC_SERVICES:
        declared, source = _PUBLIC, "host"
    elif method_options.HasExtension(_POLICY):
        declared, source = method_options.Extensions[_POLICY], "method"
    elif service_options.HasExtension(_DEFAULT_POLICY):
        declared, source = service_options.Extensions[_DEFAULT_POLICY], "service default"
    else:
        return EffectivePolicy(path=path, access=Access.NONE)
    kind = declared.WhichOneof("access")
    deadline = None
    if declared.HasField("default_deadline"):
        deadline = declared.default_deadline.ToTimedelta().total_seconds() or None
    common = {
        "path": path,
        "rate_limit_class": declared.rate_limit_class or "default",
        "default_deadline": deadline,
        "idempotent": declared.idempotent,
        "source": source,
    }
    if kind == "public" and declared.public:
        return EffectivePolicy(access=Access.PUBLIC, **common)  # type: ignore[arg-type]
    if kind == "authenticated" and declared.authenticated:
        return EffectivePolicy(access=Access.AUTHENTICATED, **common)  # type: ignore[arg-type]
    if kind == "permission" and declared.permission.resource and declared.permission.action:
        permission = declared.permission
        return EffectivePolicy(
            access=Access.PERMISSION,
            resource=permission.resource,
            action=permission.action,
            scope=_SCOPES.get(permission.scope, Scope.OWN),
            **common,  # type: ignore[arg-type]
        )
    # A policy without a usable access rule (public: false, an empty permission) is no
    # access rule at all: deny.
    return EffectivePolicy(access=Access.NONE, **common)  # type: ignore[arg-type]


def explain(policy: EffectivePolicy) -> str:
    """A readable account of the policy, for ``nexus policy explain``."""
    lines = [f"method:        {policy.path}"]
    if policy.access == Access.NONE:
        lines.append("access:        none declared: every call is DENIED (fail closed)")
    elif policy.access == Access.PUBLIC:
        lines.append("access:        public: anyone, no token needed")
    elif policy.access == Access.AUTHENTICATED:
        lines.append("access:        authenticated: any caller with a valid token")
    else:
        scope = policy.scope.name.lower()
        lines.append(f"access:        permission {policy.permission} with scope {scope} or wider")
        if policy.scope is not Scope.ALL:
            lines.append(
                "               callers whose grant is narrower than 'all' must own the "
                "resource (the plugin's ownership hook decides)"
            )
    lines.append(f"declared by:   {policy.source}")
    lines.append(f"rate limit:    class {policy.rate_limit_class!r}")
    deadline = f"{policy.default_deadline:g}s" if policy.default_deadline else "the caller's"
    lines.append(f"deadline:      {deadline}")
    lines.append(f"idempotent:    {'yes' if policy.idempotent else 'no'}")
    return "\n".join(lines)


#: How to give a method an access rule, for messages naming one without.
MISSING_POLICY_FIX = (
    "declare (nexus.options.v1.policy) on the method or (nexus.options.v1.default_policy) "
    "on its service"
)


def methods_without_policy(methods: Iterable[MethodDescriptor]) -> list[str]:
    """Wire paths of the methods that declare no access rule, sorted."""
    return sorted(p.path for p in map(effective_policy, methods) if p.access == Access.NONE)
