"""What plugins the host serves, as the supervisor records it for workers started later.

A swap applied at runtime (``LoadPlugin``, ``UnloadPlugin``, ``ReloadPlugin``) changes
the workers running then; a worker started later (a crashed one replaced, a rolling
restart) would load the plugins as they are on disk. So the supervisor keeps, for the
host's lifetime:

- the baseline: the code hash of each plugin the first worker served, which it sends
  when it asks (every worker asks once its plugins are loaded, before it serves);
- the latest ``plugins.swap`` message it relayed for each plugin (a worker publishes
  one only after applying the swap itself).

Each later worker gets both and serves the same versions, or does not start (see
:mod:`nexus_grpc.plugins.swap_sharing`). This module imports neither grpc nor the host.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SWAP_TOPIC", "PluginState"]

#: The broadcast topic workers share their swaps on (``swap_sharing.SWAP_TOPIC``).
SWAP_TOPIC = "plugins.swap"

_OPERATIONS = ("load", "unload", "reload")
_MAX_PLUGINS = 1000
_MAX_NAME = 64
_MAX_HASH = 128


class PluginState:
    """The baseline and the latest shared swap of each plugin (module docstring)."""

    def __init__(self) -> None:
        self._baseline: dict[str, str] | None = None
        #: Plugin name to its latest swap, oldest first (a newer one moves to the end).
        self._swaps: dict[str, dict[str, Any]] = {}

    def relayed(self, topic: object, data: object) -> None:
        """Note a broadcast the supervisor relays: a well-formed swap is recorded."""
        if topic != SWAP_TOPIC or not isinstance(data, dict):
            return
        plugin, operation = data.get("plugin"), data.get("operation")
        expected = data.get("expected_hash", "")
        if (
            not isinstance(plugin, str)
            or not 0 < len(plugin) <= _MAX_NAME
            or operation not in _OPERATIONS
            or not isinstance(expected, str)
            or len(expected) > _MAX_HASH
        ):
            return  # the workers log a malformed swap; it changes nothing
        self._swaps.pop(plugin, None)
        self._swaps[plugin] = {
            "plugin": plugin,
            "operation": operation,
            "expected_hash": expected,
            "cascade": bool(data.get("cascade", False)),
            "force": bool(data.get("force", False)),
        }

    def answer(self, serving: object) -> dict[str, object]:
        """The reply to a worker's ``state`` request (``serving``: its plugins' hashes,
        the baseline when it is the first to ask)."""
        if self._baseline is None:
            self._baseline = _hashes(serving)
        return {"baseline": dict(self._baseline), "swaps": list(self._swaps.values())}


def _hashes(serving: object) -> dict[str, str]:
    if not isinstance(serving, dict):
        return {}
    return {
        name: digest
        for name, digest in list(serving.items())[:_MAX_PLUGINS]
        if isinstance(name, str)
        and 0 < len(name) <= _MAX_NAME
        and isinstance(digest, str)
        and len(digest) <= _MAX_HASH
    }
