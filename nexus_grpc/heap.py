"""The objects ``nexus serve`` imports, taken out of the cyclic garbage collector's walks.

A full (generation 2) collection walks every object the collector tracks. In a started
host that is ~113k objects, ~93 % of them made by importing nexus, grpc, protobuf and
SQLAlchemy, and one walk holds the event loop's thread for ~50 to 70 ms on our
machines (a stall every ~10 s under a write load, in every in-flight call's latency);
frozen, ~0.5 to 1.5 ms (``benchmarks/gc_pause.py``). ``gc.freeze()`` moves the objects
tracked so far to a permanent generation that collections skip.

The freeze is taken after the imports and before any plugin is loaded: frozen objects
are never collected, and a plugin's code must be freed when a hot swap retires its
generation (code imported before the freeze is never unloaded). Only ``nexus serve``
and its workers freeze; a process that runs hosts in-process (tests, an embedding
application) keeps its collector as it is.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_imported"]


def freeze_imported() -> int:
    """Collect the garbage of the imports, then freeze what is left; how many objects
    are frozen (in total, with any earlier freeze)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
