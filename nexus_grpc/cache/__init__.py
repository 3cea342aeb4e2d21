"""A cache for plugins: in-process L1 with short lifetimes in front of Redis (L2).

>>> manager = CacheManager("redis://cache:6379/0")   # None: memory-only, one process
>>> await manager.start()
>>> cache = manager.for_namespace("plugins/orders")
>>> data = await cache.get_or_load("order:42", load_order_bytes, ttl=60)
>>> await cache.set_message("order:42", order)        # every process drops its L1 copy
>>> await manager.close()

Layout in Redis (``prefix`` defaults to ``nexus``): values are strings at
``{prefix}:cache:{namespace}:{key}`` with an expiry (``SET ... PX``); every write and
delete publishes the full key on the channel ``{prefix}:cache:invalidate``, which every
manager subscribes to and drops the key from its L1 on.

Guarantees, and where they end:

* **Namespaces are disjoint.** A namespace cannot contain ":", so no key of one
  namespace can be spelled in another; two plugins never see each other's keys.
* **L2 is the shared truth; L1 holds copies of it for a bounded time.** L1 is
  only filled from a Redis read, for at most ``l1_ttl`` and never past the entry's
  remaining lifetime in Redis. A fill that raced a write or an invalidation of its key
  is discarded, so a slow read cannot put back a value an invalidation removed.
* **Read your writes, in one process.** After ``set``/``delete`` returns, this
  process reads the new value or a miss (never the old value, unless Redis refused
  the write yet still serves reads): the key is dropped from L1 before and after the
  Redis write, and ``set`` does not fill L1 (the next read does, from Redis).
* **Other processes** drop the key when the invalidation message arrives, normally
  within milliseconds: until then they may read the old value from L1. The writer
  hears its own message too and drops the key again, which is harmless (anyone may
  publish a key on the channel to invalidate it, e.g. an operator with redis-cli).
* **Lost invalidations are bounded by l1_ttl, and mostly detected.** Pub/sub keeps
  nothing for a disconnected subscriber, so when the subscription fails the manager
  clears L1 and *bypasses* it (reads go to Redis) until it has resubscribed; a broken
  subscription is noticed at once when the connection closes, and within about
  3 seconds (PING) when it dies silently. L1 may still hold an old value for up to
  ``l1_ttl`` when a *writer* could not publish (Redis unreachable for the writer but
  not for the readers), or during the seconds a silent failure takes to notice.
  We chose bypassing over serving L1 "a bit longer": the cost is more Redis reads
  during the gap, the gain is that a lost message never means staleness beyond that
  gap.
* **Outages never fail a request.** With Redis unreachable, ``get`` misses,
  ``get_or_load`` calls the loader (still once per key and process), ``set`` and
  ``delete`` only drop the key from this process's L1; failures are logged once per
  outage, and Redis is not even tried for ``retry_after`` seconds after a failure to
  reach it, so calls stay fast. A write that did not reach Redis was not announced:
  when only the writer lost Redis, other processes' L1 may hold the old value for up
  to ``l1_ttl``; and Redis may still hold the old value (it was not restarted, or it
  persists), so the writer remembers such keys (up to ``max_repairs``, in memory)
  and deletes and announces them as soon as Redis answers again. A writer that stops
  before that leaves the old value in Redis until it expires.
* **Not a lock, not transactional.** Concurrent misses of a key load it once per
  process, not once overall; concurrent writers of a key: last write to Redis wins.
* **Memory-only mode** (no URL) is for one process: L1 is the only layer, entries
  live for their full ttl, and nothing is shared; several workers would each have
  their own cache with no invalidation between them.

The host creates one :class:`CacheManager`, starts it with the other components,
gives each plugin ``manager.for_namespace(plugin namespace)``, exports
:meth:`CacheManager.stats` as metrics, and closes it on shutdown.
"""

from nexus_grpc.cache._local import Clock
from nexus_grpc.cache._stats import CacheStats
from nexus_grpc.cache.cache import Cache
from nexus_grpc.cache.manager import CacheManager

__all__ = ["Cache", "CacheManager", "CacheStats", "Clock"]
