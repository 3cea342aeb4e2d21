"""The bundled plugins (auth, orders, inventory); installed as ``nexus_grpc.bundled``.

Each sub-folder with a ``manifest.toml`` is one plugin. The host loads them from this
folder (``plugins.dirs``) or, installed, when ``plugins.bundled`` names them.
"""
