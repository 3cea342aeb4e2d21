"""Authentication and authorization: who is calling, and may they call this method.

:class:`AuthStage` verifies the bearer token (when there is one) and sets the
principal for the rest of the call; :class:`AccessStage` applies the method's
contract policy to it. Both are bound per method, so a public method pays only for
looking at the metadata, and a decision needs no lookup at call time.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import grpc

from nexus_grpc.access.audit import AuditLog, Outcome
from nexus_grpc.access.policy import Access, EffectivePolicy
from nexus_grpc.auth.principal import ANONYMOUS, Principal, Scope, principal_var
from nexus_grpc.auth.sessions import SessionGuard
from nexus_grpc.errors import StatusError
from nexus_grpc.pipeline.context import invocation_metadata
from nexus_grpc.plugins.spec import OwnershipCheck
from nexus_grpc.routing import Arity, CallHandler, MethodInfo
from nexus_grpc.tls.identity import CERTIFICATE, ClientDirectory, certificate_names

__all__ = ["INPROC_PRINCIPAL", "AccessStage", "AuthStage", "TokenVerifier"]

_log = logging.getLogger("nexus.auth")

_BEARER = "bearer "

#: Attribute of the in-process call context holding the caller's principal.
INPROC_PRINCIPAL = "inproc_principal"


class TokenVerifier(Protocol):
    """What the stage needs of nexus_grpc.auth.tokens.TokenVerifier."""

    async def verify(self, token: str, *, token_type: str = "access") -> Principal:
        """The principal of a valid token; raises an UNAUTHENTICATED StatusError otherwise."""
        ...


def _policy(method: MethodInfo) -> EffectivePolicy:
    if method.policy is None:
        raise ValueError(f"{method.path}: route built without its policy")
    return method.policy


def _bearer_token(context: Any) -> str | None:
    for key, value in invocation_metadata(context) or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() != _BEARER:
                raise StatusError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization must be 'Bearer <token>'",
                    reason="TOKEN_MALFORMED",
                )
            return value[len(_BEARER) :].strip()
    return None


class AuthStage:
    """Verifies the caller's token; refuses calls without one unless the method is public.

    A token that is present but invalid is refused even on public methods: a client
    sending bad credentials is broken or probing, and silently treating it as
    anonymous would hide that.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        audit: AuditLog | None,
        *,
        sessions: SessionGuard | None = None,
        clients: ClientDirectory | None = None,
        certificate_first: bool = False,
    ) -> None:
        self._verifier = verifier
        self._audit = audit
        # Verified client certificates listed in [auth.clients] (mutual TLS); None or
        # empty: certificates are no identity and the connection is not looked at.
        self._clients = clients or None
        # auth.identity_precedence = "certificate": a listed certificate wins over a
        # token sent on the same call (the token is then not looked at).
        self._certificate_first = certificate_first
        # Tokens of users whose roles changed, who were disabled, deleted or logged out
        # everywhere are refused although their signature is good.
        self._sessions = sessions or SessionGuard()

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` with token verification for ``method``."""
        public = _policy(method).access == Access.PUBLIC
        verifier = self._verifier
        sessions = self._sessions
        floors = sessions.floors
        audit = self._audit
        path = method.path
        # A stream opened with a token outlives its check: each response it sends
        # checks the epoch again, so a revoked user's open watch stops at its next
        # message (a dict lookup per message).
        streams_responses = method.arity in (Arity.UNARY_STREAM, Arity.STREAM_STREAM)
        clients = self._clients
        certificate_first = self._certificate_first

        async def authenticate(request: Any, context: Any) -> Any:
            # An in-process call from another plugin arrives with the identity its
            # caller established: the principal of the call it is made in, or the
            # calling plugin's own (nexus_grpc.plugins.services). Only the host's
            # in-process context sets this attribute; network calls never do. It is an
            # attribute, not a type check, because stages above may wrap the context in
            # a delegating proxy — so nothing but a Principal counts.
            principal = getattr(context, INPROC_PRINCIPAL, None)
            if not isinstance(principal, Principal):
                try:
                    token = _bearer_token(context)
                    principal = None
                    if clients is not None and (token is None or certificate_first):
                        # The connection's verified certificate (mutual TLS): asked only
                        # when it can decide (auth_context() builds a dict per call).
                        principal = clients.principal(certificate_names(context.auth_context()))
                        if principal is not None:
                            token = None
                    if principal is None and token is None and not public:
                        raise StatusError(
                            grpc.StatusCode.UNAUTHENTICATED,
                            _missing_message(clients is not None, context),
                            reason="TOKEN_MISSING",
                        )
                    if token is not None:
                        principal = await verifier.verify(token)
                        # SessionGuard.fresh inlined: one dict lookup when the user's
                        # epoch is cached (nearly always); roles changed, disabled,
                        # deleted or logged out everywhere means a higher floor than the
                        # token's epoch.
                        floor = floors.get(principal.subject)
                        if floor is None or principal.epoch < floor:
                            await sessions.check(principal)
                except StatusError as error:
                    # Only authentication's own refusals land here: what fails below
                    # (validation, the handler, a missing method) keeps its outcome.
                    if audit is not None:
                        await audit.record(
                            actor=ANONYMOUS,
                            action="call.denied",
                            target=path,
                            outcome=Outcome.DENIED,
                            reason=error.reason or error.message,
                            context=context,
                            throttle=True,
                        )
                    raise
                if principal is None:
                    if principal_var.get() is not None:
                        principal_var.set(None)  # anonymous, whatever the task inherited
                    return await next(request, context)  # public, anonymous
                if streams_responses and principal.via != CERTIFICATE:
                    context = _RevocableContext(context, principal, sessions)
            # Not reset: every transport serves a call in a task of its own (grpc.aio,
            # start_call), so it ends with the call, after the access log named it.
            principal_var.set(principal)
            return await next(request, context)

        return authenticate


def _missing_message(certificates: bool, context: Any) -> str:
    if not certificates:
        return "this method needs a bearer token"
    missing = "this method needs a bearer token or a client certificate listed in auth.clients"
    names = certificate_names(context.auth_context())
    if names:
        # Verified but unlisted: say which identity the host saw, so the operator can
        # list it (the certificate's names are the caller's own, not a secret).
        return f"{missing}; the client certificate names {', '.join(names[:3])}"
    return missing


class _RevocableContext:
    """The call's context with a ``write`` that first checks the token is not revoked.

    Only calls of response-streaming methods made with a token get it; the rest
    delegates to the real context.
    """

    __slots__ = ("_context", "_floors", "_principal", "_sessions")

    def __init__(self, context: Any, principal: Principal, sessions: SessionGuard) -> None:
        self._context = context
        self._principal = principal
        self._sessions = sessions
        self._floors = sessions.floors

    async def write(self, message: Any) -> None:
        """Send one streamed response unless the caller's token was revoked meanwhile."""
        principal = self._principal
        floor = self._floors.get(principal.subject)
        if floor is None or principal.epoch < floor:
            await self._sessions.check(principal)
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class AccessStage:
    """Applies the method's access policy to the authenticated principal.

    ``shadow`` logs and audits would-be denials but lets the calls through, to roll
    out a policy; authentication (AuthStage) is enforced regardless.
    """

    def __init__(self, audit: AuditLog | None, *, shadow: bool = False) -> None:
        self._audit = audit
        self._shadow = shadow

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """Wrap ``next`` with the authorization decision for ``method``."""
        policy = _policy(method)
        if policy.access == Access.PUBLIC:
            return next
        audit = self._audit
        shadow = self._shadow
        path = method.path
        name = method.method
        ownership = method.ownership
        plugin = method.plugin
        # A stream of requests cannot be checked resource by resource before the
        # handler reads it: scoped grants do not reach such methods.
        streamed_requests = method.arity in (Arity.STREAM_UNARY, Arity.STREAM_STREAM)

        async def deny(context: Any, principal: Principal | None, error: StatusError) -> None:
            actor = principal.subject if principal else ANONYMOUS
            if audit is not None:
                await audit.record(
                    actor=actor,
                    action="call.would_deny" if shadow else "call.denied",
                    target=path,
                    outcome=Outcome.DENIED,
                    reason=error.message,
                    context=context,
                )
            if shadow:
                _log.warning("shadow mode: would deny %s to %s: %s", path, actor, error.message)
                return
            raise error

        async def authorize(request: Any, context: Any) -> Any:
            principal = principal_var.get()
            if policy.access == Access.NONE:
                await deny(
                    context,
                    principal,
                    StatusError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{path} declares no access policy; the host denies it",
                        reason="NO_POLICY",
                    ),
                )
            elif principal is None:
                # AuthStage lets only public methods through without a principal.
                await deny(
                    context,
                    None,
                    StatusError(grpc.StatusCode.UNAUTHENTICATED, "authentication required"),
                )
            elif policy.access == Access.PERMISSION:
                held = principal.scope_for(policy.resource, policy.action)
                if held is None or held < policy.scope:
                    await deny(
                        context,
                        principal,
                        StatusError(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"permission {policy.permission} with scope "
                            f"{policy.scope.name.lower()} is required",
                            reason="PERMISSION_REQUIRED",
                            metadata={"permission": policy.permission},
                        ),
                    )
                elif held < Scope.ALL and (
                    streamed_requests
                    or not await _owns(ownership, OwnershipCheck(name, request, principal, held))
                ):
                    await deny(
                        context,
                        principal,
                        StatusError(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"the caller's {policy.permission} grant covers its "
                            f"{held.name.lower()} resources only, and this is not one",
                            reason="NOT_OWNER",
                            metadata={"plugin": plugin},
                        ),
                    )
            return await next(request, context)

        return authorize


async def _owns(hook: Any, check: OwnershipCheck) -> bool:
    # No hook means the plugin cannot tell owners apart: a scoped grant gets nothing.
    if hook is None:
        return False
    return bool(await hook(check))
