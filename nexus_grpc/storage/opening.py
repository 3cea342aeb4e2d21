"""Opening the storage at start-up, its failures said as the storage's.

``Storage.connect`` raises what the backend saw (UNAVAILABLE with a cause, a bad URL, a
driver error). A process starting up (``nexus serve``, ``nexus users create``) needs one
sentence naming the component, its URL (password masked) and the cause, since the
operator reads it among other start-up failures (a port taken, a plugin broken).
"""

from __future__ import annotations

from nexus_grpc.urls import mask_url, unreachable

from ._sqlite import GROUP_COMMIT_UNITS
from .faults import StorageUnavailableError
from .storage import Storage

__all__ = ["StorageStartError", "open_storage"]


class StorageStartError(RuntimeError):
    """The storage could not be opened; the message names it and says why."""


async def open_storage(
    url: str, *, connect_timeout: float, group_commit_units: int = GROUP_COMMIT_UNITS
) -> Storage:
    """``Storage.connect(url)``; raises :class:`StorageStartError` when it fails."""
    try:
        return await Storage.connect(
            url, connect_timeout=connect_timeout, sqlite_group_commit_units=group_commit_units
        )
    except StorageUnavailableError as error:
        raise StorageStartError(unreachable("storage", url, error.cause)) from None
    except (ValueError, ImportError) as error:  # a URL no backend takes
        raise StorageStartError(f"storage.url {mask_url(url)}: {error}") from None
    except Exception as error:
        raise StorageStartError(
            f"storage {mask_url(url)} cannot be opened: {type(error).__name__}: {error}"
        ) from error
