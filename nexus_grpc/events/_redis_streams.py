"""Redis Streams plumbing for the Redis event bus: keys, stream ids, Lua scripts, errors.

Kept apart from the bus and its workers so each reads as the protocol it implements;
nothing here knows about handlers or envelopes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "ACK",
    "DEAD",
    "FORGET",
    "MAX_SEQUENCE",
    "REDRIVE",
    "REPLAY",
    "TOUCH",
    "Keys",
    "Script",
    "consumer_name",
    "id_before",
    "is_busy_group",
    "is_no_group",
    "is_pool_exhausted",
    "is_unreachable",
    "text",
    "time_to_id",
    "valid_id",
]

#: Largest sequence part of a stream id (ids are ``<ms>-<seq>``, both 64-bit unsigned).
MAX_SEQUENCE = 2**64 - 1

_ID = re.compile(r"^\d+-\d+$")
# Characters that mean something in a SCAN MATCH pattern.
_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class Keys:
    """Redis key names under one prefix."""

    prefix: str

    def events(self, event_type: str) -> str:
        """The stream of one event type; also its replay store (trimmed to ``maxlen``)."""
        return f"{self.prefix}:events:{event_type}"

    def dead(self, group: str) -> str:
        """The stream of the events ``group`` gave up on."""
        return f"{self.prefix}:dead:{group}"

    def retry(self, group: str) -> str:
        """The stream of redriven dead letters, read by ``group`` only."""
        return f"{self.prefix}:retry:{group}"

    def dead_pattern(self) -> str:
        """SCAN MATCH pattern of every group's dead-letter stream."""
        return _GLOB.sub(r"\\\1", f"{self.prefix}:dead:") + "*"

    def group_of_dead(self, key: str) -> str:
        """The group whose dead-letter stream ``key`` is."""
        return key[len(f"{self.prefix}:dead:") :]


def text(value: bytes | str) -> str:
    """A Redis reply string (bytes: the clients do not decode) as ``str``."""
    return value.decode() if isinstance(value, bytes) else value


def consumer_name() -> str:
    """A consumer name unique to this process: ``host:pid:random``.

    Unique per process so that a restarted process never inherits (and never wrongly
    "owns") the pending entries of its previous life; those are taken over by claiming.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def valid_id(entry_id: str) -> bool:
    """Whether ``entry_id`` is a complete stream id Redis can parse (``<ms>-<seq>``,
    each part at most 2**64 - 1: Redis refuses larger ones like any other typo)."""
    if not _ID.match(entry_id):
        return False
    return all(int(part) <= MAX_SEQUENCE for part in entry_id.split("-"))


def id_before(entry_id: str) -> str:
    """The id just before ``entry_id``: setting a group there re-reads ``entry_id`` too."""
    milliseconds, sequence = (int(part) for part in entry_id.split("-"))
    if sequence > 0:
        return f"{milliseconds}-{sequence - 1}"
    if milliseconds > 0:
        return f"{milliseconds - 1}-{MAX_SEQUENCE}"
    return "0-0"


def time_to_id(seconds: float) -> str:
    """The first possible stream id at Unix time ``seconds`` (its millisecond included)."""
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds!r} is not a time")
    return f"{max(math.floor(seconds * 1000), 0)}-0"


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means Redis cannot be reached (rather than refused a command,
    or every pooled connection being busy: load on this process, not an outage)."""
    if is_pool_exhausted(error):
        return False
    return isinstance(error, RedisConnectionError | RedisTimeoutError | OSError)


def is_pool_exhausted(error: BaseException) -> bool:
    """Whether ``error`` is a blocking pool's wait for a free connection running out."""
    # redis-py says so only in the message, raised from the wait's TimeoutError.
    return (
        isinstance(error, RedisConnectionError)
        and str(error) == "No connection available."
        and isinstance(error.__cause__, TimeoutError)
    )


def is_no_group(error: BaseException) -> bool:
    """Whether ``error`` says a consumer group (or its stream) does not exist."""
    return isinstance(error, ResponseError) and str(error).startswith("NOGROUP")


def is_busy_group(error: BaseException) -> bool:
    """Whether ``error`` says the consumer group exists already."""
    return isinstance(error, ResponseError) and str(error).startswith("BUSYGROUP")


class Script:
    """A Lua script run with EVALSHA, loaded on first use (or after a server restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> Any:
        """Run the script on ``client`` with ``keys`` and ``args``."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new, restarted or flushed server: load it once, go on
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


# Every script that changes an entry first checks the entry is still pending for the
# calling consumer: once another consumer has taken an entry over (this one looked
# dead to it), the entry is that consumer's to finish, and acting on it here would
# race with it. XCLAIM with min-idle 0 resets the idle time, which is what keeps
# live consumers' entries from being taken over while their handlers run.

#: Keep entries pending for this consumer and report their delivery counts.
#: KEYS[1] stream; ARGV group, consumer, increment, ids...; returns one count per id,
#: -1 for an id that is no longer this consumer's. ``increment`` 1 counts a new attempt.
TOUCH = Script(
    """
local counts = {}
for i = 4, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #entry == 0 or entry[1][2] ~= ARGV[2] then
    counts[#counts + 1] = -1
  else
    local count = entry[1][4] + tonumber(ARGV[3])
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', count, 'JUSTID')
    counts[#counts + 1] = count
  end
end
return counts
"""
)

#: Acknowledge an entry, deleting it too when it is in a group's own retry stream.
#: KEYS[1] stream; ARGV group, id, delete (0/1).
ACK = Script(
    """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return acked
"""
)

#: Move an entry to a dead-letter stream and acknowledge it, in one step so that it is
#: never both lost and acknowledged. KEYS[1] stream, KEYS[2] dead stream; ARGV group,
#: consumer, id, maxlen, delete (0/1), then the dead letter's fields; returns 1, or 0
#: when the entry is no longer this consumer's.
DEAD = Script(
    """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #entry == 0 or entry[1][2] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 6))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[5] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
return 1
"""
)

#: Move a dead letter to its group's retry stream (creating the group there, from the
#: start, when missing). KEYS[1] dead stream, KEYS[2] retry stream; ARGV dead entry
#: id, group, maxlen; returns 1, or 0 when there is no such dead letter.
REDRIVE = Script(
    """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(found[1][2]))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""
)

#: Move a group back to an earlier position, never forward: a start past the group's
#: position would skip the entries in between, which it has not read yet. A group
#: missing on the stream is created there, but not past the stream's last entry.
#: KEYS[1] stream; ARGV group, start ("<ms>-<seq>", no leading zeros); returns the
#: position the group reads after now.
REPLAY = Script(
    """
local function earlier(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if groups['err'] == nil then
  for _, info in ipairs(groups) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == ARGV[1] then
      local current = fields['last-delivered-id']
      if not earlier(ARGV[2], current) then return current end
      redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[2])
      return ARGV[2]
    end
  end
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local position = ARGV[2]
if #last == 0 then
  position = '0-0'
elseif earlier(last[1][1], position) then
  position = last[1][1]
end
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], position, 'MKSTREAM')
return position
"""
)

#: Remove a consumer from a group when nothing is pending for it (removing it with
#: pending entries would drop those from the group for good). KEYS[1] stream; ARGV
#: group, consumer; returns 1 when removed.
FORGET = Script(
    """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)
