"""Administrative calls leave an audit record, whatever their outcome."""

from __future__ import annotations

from typing import Any

import grpc

from nexus_grpc.access.audit import AuditLog, Outcome
from nexus_grpc.access.policy import Access
from nexus_grpc.auth.principal import ANONYMOUS, principal_var
from nexus_grpc.errors import StatusError
from nexus_grpc.routing import CallHandler, MethodInfo

__all__ = ["AdminAuditStage"]

#: Categories whose permission-protected methods are administration: the host's own
#: services and security plugins (users, roles).
_ADMIN_CATEGORIES = frozenset({"core", "security"})


class AdminAuditStage:
    """Records each call of an administrative method with its caller and outcome."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def bind(self, method: MethodInfo, next: CallHandler) -> CallHandler:
        """``next`` unchanged unless ``method`` is administrative."""
        policy = method.policy
        if (
            method.category not in _ADMIN_CATEGORIES
            or policy is None
            or policy.access != Access.PERMISSION
        ):
            return next
        audit = self._audit
        path = method.path

        async def audited(request: Any, context: Any) -> Any:
            outcome, reason = Outcome.FAILED, ""
            try:
                result = await next(request, context)
                code = context.code() or grpc.StatusCode.OK
                outcome = Outcome.SUCCEEDED if code == grpc.StatusCode.OK else Outcome.FAILED
                return result
            except StatusError as error:
                reason = error.message
                raise
            except grpc.aio.AbortError:
                reason = context.details() or ""
                raise
            except BaseException as error:
                reason = type(error).__name__
                raise
            finally:
                principal = principal_var.get()
                await audit.record(
                    actor=principal.subject if principal else ANONYMOUS,
                    action="admin.call",
                    target=path,
                    outcome=outcome,
                    reason=reason,
                    context=context,
                )

        return audited
