"""New ids: version 7 UUIDs (RFC 9562) as 32 hex digits, in the order they were made."""

from __future__ import annotations

import time
import uuid

import pytest

from nexus_grpc import ids
from nexus_grpc.ids import new_id


def _frozen_at(monkeypatch: pytest.MonkeyPatch, nanoseconds: int) -> None:
    # A clock that stands still at ``nanoseconds``. The last stamp is put back after the
    # test too: the guard would otherwise keep every later id of this process at the
    # frozen time (the year 2100 below) or after it.
    monkeypatch.setattr(time, "time_ns", lambda: nanoseconds)
    monkeypatch.setattr("nexus_grpc.ids._last_stamp", ids._last_stamp)


def test_new_ids_are_version_7_uuids_in_hex_and_do_not_repeat() -> None:
    made = [new_id() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for value in made:
        parsed = uuid.UUID(value)
        assert parsed.hex == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    # The 62 random bits vary: every hex digit is seen in each of their places (the
    # first holds the variant's two bits, so four values).
    for position in range(16, 32):
        digits = {value[position] for value in made}
        assert len(digits) == (4 if position == 16 else 16)


def test_an_id_starts_with_the_unix_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(value[:12], 16) <= after


def test_ids_sort_in_the_order_they_were_made() -> None:
    made = [new_id() for _ in range(5000)]
    assert made == sorted(made)


def test_ids_keep_their_order_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = new_id()
    _frozen_at(monkeypatch, time.time_ns() - 3600 * 10**9)
    later = [new_id() for _ in range(3)]
    assert [first, *later] == sorted([first, *later])
    assert len({first, *later}) == 4
    # The time part goes on from the last id's, one fraction of a millisecond a time.
    stamps = [int(value[:12] + value[13:16], 16) for value in (first, *later)]
    assert stamps[1:] == [stamps[0] + 1, stamps[0] + 2, stamps[0] + 3]


def test_the_twelve_bits_after_the_version_are_the_fraction_of_the_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Far in the future of any id made before: the guard does not bump the first one.
    millis = 4_102_444_800_000  # 2100-01-01
    # 0.75 of a millisecond: 3072 of 4096 fractions.
    _frozen_at(monkeypatch, millis * 1_000_000 + 750_000)
    value = new_id()
    assert int(value[:12], 16) == millis
    assert value[12] == "7"
    assert int(value[13:16], 16) == 3072


def test_a_full_millisecond_of_fractions_carries_into_the_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    millis = 4_102_444_900_000
    # The last fraction of a millisecond, frozen: the next ids count on past it.
    _frozen_at(monkeypatch, millis * 1_000_000 + 999_999)
    made = [new_id() for _ in range(3)]
    assert [(int(v[:12], 16), int(v[13:16], 16)) for v in made] == [
        (millis, 0xFFF),
        (millis + 1, 0),
        (millis + 1, 1),
    ]
    assert all(uuid.UUID(v).version == 7 for v in made)
