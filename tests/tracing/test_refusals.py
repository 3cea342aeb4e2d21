"""RefusalSpans: which exceptions count as a stage's own refusal, per call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from nexus_grpc.access.validation import ValidationStage
from nexus_grpc.errors import InvalidArgumentError, StatusError
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


async def test_a_refused_message_of_a_client_stream_is_a_validation_span(
    pb: Any,  # noqa: F811
    spans: Spans,
) -> None:
    async def reads_all(requests: Any, context: Any) -> str:
        async for _ in requests:
            pass
        return "read"

    method = valtest_method(pb, "Upload")
    handler = RefusalSpans(ValidationStage(), "validation").bind(method, reads_all)
    outer = RefusalSpans(_Passes(), "auth").bind(method, handler)

    async def stream() -> AsyncIterator[Any]:
        yield pb.Child(id="", size=0)  # breaks the field rules

    with pytest.raises(InvalidArgumentError):
        await outer(stream(), Context())
    assert refusal_names(spans) == ["nexus.validation"]  # raised inside the handler
    span = spans.one("nexus.validation")
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == 3


async def test_a_handler_error_in_a_client_stream_is_no_validation_refusal(
    pb: Any,  # noqa: F811
    spans: Spans,
) -> None:
    async def fails(requests: Any, context: Any) -> str:
        async for _ in requests:
            raise SHARED
        return "read"

    method = valtest_method(pb, "Upload")
    handler = RefusalSpans(ValidationStage(), "validation").bind(method, fails)

    async def stream() -> AsyncIterator[Any]:
        yield pb.Child(id="ok", size=1)

    with pytest.raises(StatusError):
        await handler(stream(), Context())
    assert refusal_names(spans) == []
