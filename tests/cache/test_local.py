"""The in-process layer on its own: LRU bound, deadlines, and the guard on fills."""

from __future__ import annotations

import pytest

from nexus_grpc.cache._local import LocalCache
from tests.cache._support import FakeClock


def test_entries_live_until_their_deadline(clock: FakeClock) -> None:
    local = LocalCache(10, clock)
    local.put("k", b"v", 2.0)
    clock.advance(1.999)
    assert local.get("k") == b"v"
    clock.advance(0.001)
    assert local.get("k") is None
    assert len(local) == 0  # dropped when read expired


def test_least_recently_used_is_evicted_past_the_bound(clock: FakeClock) -> None:
    local = LocalCache(2, clock)
    local.put("a", b"1", 60)
    local.put("b", b"2", 60)
    assert local.get("a") == b"1"  # "b" is now the least recently used
    local.put("c", b"3", 60)
    assert (local.get("a"), local.get("b"), local.get("c")) == (b"1", None, b"3")
    assert len(local) == 2


def test_a_fill_is_stored_when_nothing_happened_meanwhile(clock: FakeClock) -> None:
    local = LocalCache(10, clock)
    ticket = local.begin_fill("k")
    assert local.end_fill(ticket, b"v", 5.0)
    assert local.get("k") == b"v"


def test_an_invalidation_during_a_fill_voids_it(clock: FakeClock) -> None:
    # The read went out before another process's write; its invalidation came back
    # before the read's reply: storing the reply would resurrect the old value.
    local = LocalCache(10, clock)
    before = local.begin_fill("k")
    local.drop("k")
    after = local.begin_fill("k")  # began after the invalidation: reads the new value
    assert not local.end_fill(before, b"old", 5.0)
    assert local.get("k") is None
    assert local.end_fill(after, b"new", 5.0)
    assert local.get("k") == b"new"


def test_an_invalidation_of_another_key_does_not_void_a_fill(clock: FakeClock) -> None:
    local = LocalCache(10, clock)
    ticket = local.begin_fill("k")
    local.drop("other")
    assert local.end_fill(ticket, b"v", 5.0)


def test_clear_voids_every_fill_in_progress(clock: FakeClock) -> None:
    local = LocalCache(10, clock)
    local.put("x", b"1", 5.0)
    ticket = local.begin_fill("k")
    local.clear()
    assert not local.end_fill(ticket, b"v", 5.0)
    assert len(local) == 0


def test_fill_bookkeeping_does_not_outlive_the_fills(clock: FakeClock) -> None:
    local = LocalCache(10, clock)
    for index in range(100):
        local.drop(f"k{index}")  # invalidations of keys nobody reads leave no trace
        local.end_fill(local.begin_fill(f"k{index}"), None, 0.0)
    assert local._fills == {}


def test_a_bound_below_one_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        LocalCache(0, clock)
