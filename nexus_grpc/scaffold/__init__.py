"""``nexus new plugin``: a new plugin project, ready to test, lint, install and serve."""

from nexus_grpc.scaffold.names import PluginNames, ScaffoldError, plugin_names
from nexus_grpc.scaffold.render import create_plugin

__all__ = ["PluginNames", "ScaffoldError", "create_plugin", "plugin_names"]
