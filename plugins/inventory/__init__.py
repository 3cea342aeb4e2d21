"""The inventory plugin: stock per SKU, reservations for orders."""

from nexus_grpc import Plugin

from .service import InventoryService

plugin = Plugin(services=[InventoryService])
