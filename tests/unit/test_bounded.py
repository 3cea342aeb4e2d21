"""nexus_grpc.bounded: what an error may repeat of a request, in one place."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from nexus_grpc.bounded import (
    DETAIL_TEXT_LIMIT,
    MAX_ITEMS,
    MESSAGE_LIMIT,
    QUOTE_LIMIT,
    STATUS_LIMIT,
    clip,
    quote,
)
from nexus_grpc.errors import StatusError, to_status_proto


def test_clip_keeps_short_text_and_marks_what_it_cut() -> None:
    assert clip("short", 10) == "short"
    cut = clip("é" * 100, 10)  # two bytes each: five fit
    assert cut == "ééééé...[95 more characters]"
    assert clip("x" * 100, 10).startswith("x" * 10 + "...[90 more")


def test_quote_is_repr_of_at_most_the_limit() -> None:
    assert quote("abc") == "'abc'"
    quoted = quote("a" * 10_000)
    assert quoted == repr("a" * QUOTE_LIMIT) + f"...[{10_000 - QUOTE_LIMIT} more characters]"


def test_every_string_and_list_of_every_detail_is_bounded() -> None:
    error = StatusError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "m" * 50_000,
        reason="R",
        metadata={f"k{i}" + "k" * 1000: "v" * 10_000 for i in range(100)},
        details=(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="t" * 5000, subject="s" * 5000, description="d" * 5000
                    )
                    for _ in range(200)
                ]
            ),
        ),
    )
    status = to_status_proto(error)
    assert len(status.message.encode()) <= MESSAGE_LIMIT + 40
    assert status.ByteSize() <= STATUS_LIMIT
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert len(info.metadata) <= MAX_ITEMS
    assert all(len(v) <= DETAIL_TEXT_LIMIT + 40 for v in info.metadata.values())
    assert all(len(k) <= DETAIL_TEXT_LIMIT + 40 for k in info.metadata)


def test_small_errors_are_unchanged() -> None:
    error = StatusError(
        grpc.StatusCode.NOT_FOUND, "order 'a' not found", reason="NOT_FOUND", metadata={"k": "v"}
    )
    status = to_status_proto(error)
    assert status.message == "order 'a' not found"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert dict(info.metadata) == {"k": "v"}
