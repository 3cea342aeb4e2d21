"""Random ids: version 4 UUIDs as 32 hex digits, as ``uuid.uuid4().hex`` gives them."""

from __future__ import annotations

import uuid

from nexus_grpc.ids import random_id


def test_random_ids_are_version_4_uuids_in_hex_and_do_not_repeat() -> None:
    ids = [random_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.hex == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # The 122 random bits vary: every hex digit but the version's is seen in each place.
    for position in range(32):
        digits = {value[position] for value in ids}
        assert len(digits) == (1 if position == 12 else 4 if position == 16 else 16)
