"""The orders plugin: customer orders stored through the host's repository."""

from nexus_grpc import Plugin

from .service import OrdersService

plugin = Plugin(services=[OrdersService])
