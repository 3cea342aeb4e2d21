"""RefusalSpans: which exceptions count as a stage's own refusal, per call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from nexus_grpc.errors import StatusError
from nexus_grpc.routing import MethodInfo
from nexus_grpc.tracing.stage import RefusalSpans
from tests.tracing.conftest import Spans
from tests.validation.test_rules import pb, valtest_method  # noqa: F401  (fixture)

#: One exception object raised by many calls, as the host's UNIMPLEMENTED handler does.
SHARED = StatusError(grpc.StatusCode.UNIMPLEMENTED, "not implemented")


class Context:
    """The little of a servicer context the refusal span reads."""

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


class RefusesOn:
    """A stage refusing requests equal to "refuse" with SHARED, passing the others on."""

    def bind(self, method: MethodInfo, next: Any) -> Any:
        async def stage(request: Any, context: Any) -> Any:
            if request == "refuse":
                raise SHARED
            return await next(request, context)

        return stage


async def raise_shared(request: Any, context: Any) -> Any:
    raise SHARED


def refusal_names(spans: Spans) -> list[str]:
    return [s.name for s in spans.all() if s.name.startswith("nexus.")]


async def test_a_shared_exception_is_not_written_on_and_its_later_refusal_is_recorded(
    pb: Any,  # noqa: F811
    spans: Spans,
) -> None:
    handler = RefusalSpans(RefusesOn(), "access").bind(valtest_method(pb, "Unary"), raise_shared)
    for _ in range(20):  # SHARED comes up from below: never this stage's refusal
        with pytest.raises(StatusError):
            await handler("pass", Context())
    assert refusal_names(spans) == []
    assert vars(SHARED) == vars(StatusError(grpc.StatusCode.UNIMPLEMENTED, "not implemented"))
    with pytest.raises(StatusError):
        await handler("refuse", Context())  # the same object, raised by the stage itself
    assert refusal_names(spans) == ["nexus.access"]


async def test_nested_stages_record_a_refusal_only_in_the_refusing_stage(
    pb: Any,  # noqa: F811
    spans: Spans,
) -> None:
    method = valtest_method(pb, "Unary")
    inner = RefusalSpans(RefusesOn(), "validation").bind(method, raise_shared)
    outer = RefusalSpans(_Passes(), "auth").bind(method, inner)
    with pytest.raises(StatusError):
        await outer("refuse", Context())
    assert refusal_names(spans) == ["nexus.validation"]
    spans.clear()
    with pytest.raises(StatusError):
        await outer("pass", Context())
    assert refusal_names(spans) == []


class _Passes:
    """A stage that never refuses."""

    def bind(self, method: MethodInfo, next: Any) -> Any:
        async def stage(request: Any, context: Any) -> Any:
            return await next(request, context)

        return stage
