"""Opening the storage at start-up, its failures said as the storage's.

``Storage.connect`` raises what the backend saw (UNAVAILABLE with a cause, a bad URL, a
driver error). A process starting up (``nexus serve``, ``nexus users create``) needs one
sentence naming the component, its URL (password masked) and the cause, since the
operator reads it among other start-up failures (a port taken, a plugin broken).
"""

from __future__ import annotations

from nexus_grpc.config import Config
from nexus_grpc.urls import mask_url, unreachable

from .faults import StorageUnavailableError
from .storage import Storage

__all__ = ["StorageStartError", "open_storage"]


class StorageStartError(RuntimeError):
    """The storage could not be opened; the message names it and says why."""


async def open_storage(config: Config) -> Storage:
    """``Storage.connect`` with ``config``'s URL and ``[storage]`` settings; raises
    :class:`StorageStartError` when it fails."""
    url = config.storage_url()
    try:
        return await Storage.connect(
            url,
            connect_timeout=config.storage.connect_timeout,
            sqlite_group_commit_units=config.storage.group_commit_units,
        )
    except StorageUnavailableError as error:
        raise StorageStartError(unreachable("storage", url, error.cause)) from None
    except (ValueError, ImportError) as error:  # a URL no backend takes
        raise StorageStartError(f"storage.url {mask_url(url)}: {error}") from None
    except Exception as error:
        raise StorageStartError(
            f"storage {mask_url(url)} cannot be opened: {type(error).__name__}: {error}"
        ) from error
