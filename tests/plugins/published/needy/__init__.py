"""Test plugin whose required service is served by no plugin: it must fail to load."""

from nexus_grpc import Plugin

plugin = Plugin()
