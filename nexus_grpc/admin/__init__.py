"""The host's administrative gRPC services: plugins, health, audit and events."""
