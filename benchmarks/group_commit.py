"""What group commit saves on SQLite, measured on the bare driver.

nexus commits the units of work of concurrent writers together (see
``nexus_grpc.storage._sqlite``): a unit whose body is over while others wait for the
write turn leaves its transaction open, the next one runs in it under a SAVEPOINT (so one
failing rolls back only itself) and the last commits them all. What that can save is
the per-transaction cost: BEGIN, COMMIT and above all the WAL frames of the pages several
units touch (the table's leaf, the leaves of each declared index). This measures exactly
that, with the stdlib ``sqlite3`` module (no nexus code), on the table and the declared
indexes nexus builds for the orders plugin and the outbox (``Storage.apply_indexes``),
holding ``--records`` orders first (a fresh table has B-trees of a page or two, which
every unit shares whatever the grouping), in WAL mode with ``synchronous = NORMAL`` and
``temp_store = MEMORY`` as nexus's unit connections run:

* one unit = an order's insert plus its outbox event's insert (CreateOrder's writes);
* group size N = N units in one ``BEGIN IMMEDIATE ... COMMIT``, each after the first in
  a savepoint (as nexus runs a group), and the same without savepoints: what grouping
  alone would save, though units could then not fail on their own;
* a passive checkpoint every 500 commits, as nexus does; the WAL frames per unit are
  counted from the checkpoints (a frame is a page written: two system calls);
* ids made as nexus makes them (:func:`nexus_grpc.ids.new_id`, version 7 UUIDs, which
  start with the time), or with ``--random-ids`` as version 4 UUIDs (random all
  through, as nexus made them before): what keys in creation order save.

CPU per unit (``time.process_time``, kernel time included), best of ``--rounds``, the
group sizes interleaved and the two variants alternating first, so drifts of a noisy
machine fall on all of them; each column's ratio is to one unit per commit, and each run
ends with a checkpoint (it pays for the WAL it wrote). The noise between rounds here is
±25%: read smaller differences as none.

    .venv/bin/python -m benchmarks.group_commit
    .venv/bin/python -m benchmarks.group_commit --units 8000 --rounds 5 --records 100000
    .venv/bin/python -m benchmarks.group_commit --random-ids
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexus.events.v1 import events_pb2
from nexus.orders.v1 import orders_pb2

from nexus_grpc.ids import new_id
from nexus_grpc.storage import Storage

GROUP_SIZES = (1, 2, 4, 8, 16)
NAMESPACE = "plugins/business/orders"
ORDERS = "nexus.orders.v1.Order"
OUTBOX = "nexus.events.outbox"
_INSERT = (
    "INSERT INTO nexus_records (namespace, collection, id, payload, index_doc, version, "
    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
)
# Index documents of the shape nexus writes for an order and for its event.
_ORDER_DOC = (
    '{"id":"%s","customer_id":"%s","status":1,"total_cents":4490,'
    '"currency_code":"EUR","create_time":%d}'
)
_EVENT_DOC = (
    '{"id":"%s","source":"orders","type":"nexus.orders.v1.OrderCreated","time":%d,"subject":"%s"}'
)
_CHECKPOINT_EVERY = 500
#: Customers the orders are spread over (the customer index's leaves).
_CUSTOMERS = 100
_NOW = "2026-12-06 12:00:00.000000"
#: Makes the ids of new orders and events (``--random-ids``: version 4 UUIDs).
_make_id: Callable[[], str] = new_id


@dataclass
class Cost:
    """CPU µs and WAL frames per unit of one run."""

    cpu: float
    frames: float


def _random_id() -> str:
    return uuid.uuid4().hex


def _order(payload: bytes) -> tuple[str, tuple[object, ...]]:
    """A new order's id and its insert's parameters."""
    order_id = _make_id()
    customer = f"customer-{random.randrange(_CUSTOMERS)}"
    document = _ORDER_DOC % (order_id, customer, time.time_ns())
    return order_id, (NAMESPACE, ORDERS, order_id, payload, document, _NOW, _NOW)


def _unit(db: sqlite3.Connection, payload: bytes) -> None:
    order_id, order = _order(payload)
    db.execute(_INSERT, order)
    event_id = _make_id()
    document = _EVENT_DOC % (event_id, time.time_ns(), order_id)
    db.execute(_INSERT, (NAMESPACE, OUTBOX, event_id, payload, document, _NOW, _NOW))


def _checkpoint(db: sqlite3.Connection) -> int:
    """A passive checkpoint; the frames the WAL held (what the commits since wrote)."""
    (_, frames, _) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


def _run(
    db: sqlite3.Connection, group: int, units: int, payload: bytes, *, savepoints: bool
) -> Cost:
    _checkpoint(db)  # a WAL of this run's frames only
    frames = 0
    began = time.process_time()
    for commits in range(1, units // group + 1):
        db.execute("BEGIN IMMEDIATE")
        for member in range(group):
            # nexus's first unit of a group runs in the transaction it began itself.
            joined = savepoints and member > 0
            if joined:
                db.execute("SAVEPOINT nexus_unit")
            _unit(db, payload)
            if joined:
                db.execute("RELEASE nexus_unit")
        db.execute("COMMIT")
        if commits % _CHECKPOINT_EVERY == 0:
            frames += _checkpoint(db)
    # Each run pays for the WAL it wrote: a run of few commits must not leave its
    # checkpoint to the next one. (Right after a checkpoint the WAL, not yet started
    # over, still reports the frames just counted.)
    if (units // group) % _CHECKPOINT_EVERY:
        frames += _checkpoint(db)
    done = units // group * group
    return Cost((time.process_time() - began) / done * 1e6, frames / done)


def _fill(db: sqlite3.Connection, records: int, payload: bytes) -> None:
    """``records`` orders, committed 1,000 at a time, then checkpointed."""
    for start in range(0, records, 1000):
        db.execute("BEGIN IMMEDIATE")
        for _ in range(min(1000, records - start)):
            db.execute(_INSERT, _order(payload)[1])
        db.execute("COMMIT")
    _checkpoint(db)


async def _schema(path: Path) -> None:
    async with await Storage.connect(f"sqlite:///{path}") as storage:
        await storage.apply_indexes([orders_pb2.Order, events_pb2.Envelope])


def main(units: int, rounds: int, records: int) -> dict[tuple[int, bool], Cost]:
    """Print and return the best cost per unit by (group size, with savepoints)."""
    payload = orders_pb2.Order(id="x" * 32, customer_id="alice", note="n" * 64).SerializeToString()
    best: dict[tuple[int, bool], Cost] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-group-") as name:
        path = Path(name) / "nexus.db"
        asyncio.run(_schema(path))
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode = WAL").fetchall()
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.execute("PRAGMA temp_store = MEMORY")
            _fill(db, records, payload)
            for round_number in range(rounds):
                # Which of the two runs first alternates: the second of two runs of the
                # same size measured up to 25% dearer here, whatever it ran.
                order = (True, False) if round_number % 2 == 0 else (False, True)
                for group in GROUP_SIZES:
                    for savepoints in order:
                        cost = _run(db, group, units, payload, savepoints=savepoints)
                        key = (group, savepoints)
                        if key not in best or cost.cpu < best[key].cpu:
                            best[key] = cost
    ids = "version 4 (random)" if _make_id is not new_id else "version 7 (nexus's)"
    print(
        f"SQLite, bare sqlite3, {records} orders stored first, ids: UUIDs of {ids}: CPU µs "
        "and WAL frames per unit of work (an order and its outbox event)"
    )
    ratio, frames = "vs 1", "frames"
    print(
        f"{'units per commit':>17} {'savepoints':>11} {ratio:>6} {frames:>7} "
        f"{'no savepoints':>14} {ratio:>6} {frames:>7}"
    )
    one_kept, one_bare = best[(1, True)].cpu, best[(1, False)].cpu
    for group in GROUP_SIZES:
        kept, bare = best[(group, True)], best[(group, False)]
        print(
            f"{group:>17} {kept.cpu:>11.1f} {kept.cpu / one_kept:>6.2f} {kept.frames:>7.1f} "
            f"{bare.cpu:>14.1f} {bare.cpu / one_bare:>6.2f} {bare.frames:>7.1f}"
        )
    return best


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=4000, help="units per round and size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (best kept)")
    parser.add_argument("--records", type=int, default=20000, help="orders stored first")
    parser.add_argument(
        "--random-ids", action="store_true", help="version 4 UUIDs instead of nexus's ids"
    )
    arguments = parser.parse_args()
    if arguments.random_ids:
        _make_id = _random_id
    main(arguments.units, arguments.rounds, arguments.records)
