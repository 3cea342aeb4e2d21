"""The storage half of nexus.admin.v1.AdminService: the indexes nexus built, and the
retirement of those of a message type no process declares any more.

Starts and sweeps retire an index a type stops declaring, but never the indexes of a
type no contract of theirs knows: another process sharing the database may serve it.
When a plugin is removed everywhere, an operator says so with RetireIndexes, and the
usual retirement follows (kept for ``storage.index_drop_delay``, then dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc
from nexus.admin.v1 import admin_pb2

from nexus_grpc.errors import NotFoundError, StatusError
from nexus_grpc.storage import Storage

__all__ = ["IndexesAdmin"]


class IndexesAdmin:
    """Lists and retires ``storage``'s indexes; ``declared`` names the message types
    whose contracts this host has loaded (its sweep keeps their indexes)."""

    def __init__(
        self, storage: Storage, *, drop_delay: float, declared: Callable[[], Iterable[str]]
    ) -> None:
        self._storage = storage
        self._drop_delay = drop_delay
        self._declared = declared

    async def list(self) -> admin_pb2.ListIndexesResponse:
        """The catalog's entries, then the retired indexes."""
        response = admin_pb2.ListIndexesResponse()
        for built in await self._storage.list_indexes():
            index = response.indexes.add(
                name=built.name, message_type=built.message_type, definition=built.definition
            )
            if built.retired_at is not None:
                index.retire_time.FromDatetime(built.retired_at)
        return response

    async def retire(
        self, request: admin_pb2.RetireIndexesRequest
    ) -> admin_pb2.RetireIndexesResponse:
        """Retire the indexes of a type this host does not declare (see the contract)."""
        message_type = request.message_type
        if message_type in set(self._declared()):
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"message_type: this host has the contract of {message_type} loaded, and "
                "its sweep would take the indexes back; retire them once no process "
                "serving the database loads it (restart this one without its plugin)",
            )
        try:
            changes = await self._storage.retire_indexes(message_type, drop_delay=self._drop_delay)
        except TimeoutError as error:  # another process's index build held the lock
            raise StatusError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        if not (changes.retired or changes.dropped or changes.shared):
            # The retirement, under the index lock, found no catalog entry of the type.
            raise NotFoundError("indexes of message type", message_type)
        return admin_pb2.RetireIndexesResponse(
            retired=changes.retired,
            dropped=changes.dropped,
            kept=changes.shared,
            drop_delay=self._drop_delay,
        )
