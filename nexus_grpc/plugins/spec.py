"""What a plugin states about itself: its capabilities, and the context it receives.

There is no base class with abstract methods to stub. A plugin package exposes a
:class:`Plugin` value naming what it has: the servicer classes it serves and,
optionally, start and stop hooks. The host calls only what is there, so a capability
added to nexus later never breaks an existing plugin.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexus_grpc.auth.principal import Principal, Scope

if TYPE_CHECKING:
    from nexus_grpc.access.audit import AuditLog
    from nexus_grpc.cache import Cache
    from nexus_grpc.events import Publisher
    from nexus_grpc.plugins.services import Services
    from nexus_grpc.storage import Namespace

__all__ = ["HealthCheck", "Hook", "OwnershipCheck", "OwnershipHook", "Plugin", "PluginContext"]


@dataclass(frozen=True)
class PluginContext:
    """What the host hands a plugin: its identity, settings, storage and logger."""

    #: The plugin's name, from its manifest.
    name: str
    #: The plugin's category, from its manifest.
    category: str
    #: The ``[plugin.<name>]`` table of the host configuration.
    config: Mapping[str, Any]
    #: The plugin's own storage namespace, ``plugins/<category>/<name>``.
    storage: Namespace
    #: A logger named ``nexus.plugins.<name>``.
    logger: logging.Logger
    #: A folder the plugin may keep files in.
    data_dir: Path
    #: The host's audit log, for security-relevant events the plugin handles itself.
    audit: AuditLog | None = None
    #: Issues tokens (the auth plugin's business); None when the host cannot sign.
    tokens: Any = None
    #: Publishes the event types the manifest lists under ``publishes``.
    events: Publisher | None = None
    #: The plugin's own cache namespace (in-process L1, Redis L2 when configured).
    cache: Cache | None = None
    #: Clients of the services the manifest lists under ``requires``, called in-process.
    services: Services | None = None


#: A start or stop hook: receives the context, may be sync or async.
Hook = Callable[[PluginContext], Awaitable[None] | None]
#: A health check: True when the plugin can serve; may be sync or async.
HealthCheck = Callable[[PluginContext], Awaitable[bool] | bool]


@dataclass(frozen=True)
class OwnershipCheck:
    """A question to a plugin: may this caller act on the resource this request names?

    Asked when the caller's grant for the method's permission has scope ``own`` (or
    ``team``) rather than ``all``. The plugin answers from its own data — who owns the
    order with this id — and may narrow list requests to the caller's own resources.
    """

    #: Bare method name, e.g. "GetOrder".
    method: str
    #: The request message; the hook may narrow it (e.g. set a customer filter).
    request: Any
    principal: Principal
    #: OWN or TEAM: how far the caller's grant reaches.
    scope: Scope


#: A servicer's ``async def owns(self, check: OwnershipCheck) -> bool``.
OwnershipHook = Callable[[OwnershipCheck], Awaitable[bool]]


@dataclass(frozen=True)
class Plugin:
    """The capabilities of a plugin.

    ``services`` are ordinary servicer classes subclassing generated ``...Servicer``
    classes. The host creates one instance of each: with the :class:`PluginContext` as
    only argument when ``__init__`` takes one, without arguments otherwise.
    """

    services: Sequence[type] = field(default_factory=tuple)
    #: Classes with ``@subscribe`` handlers that serve no gRPC service (projections,
    #: notifiers); created like servicers. Servicers may hold handlers too.
    subscribers: Sequence[type] = field(default_factory=tuple)
    on_start: Hook | None = None
    on_stop: Hook | None = None
    #: Whether the plugin can serve, asked after the start hook until it says True
    #: (within ``plugins.hot_swap.start_timeout``): a new version gets no call before.
    health: HealthCheck | None = None
