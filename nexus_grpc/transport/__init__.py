"""The listeners: the grpc.aio server and its dispatcher, the HTTP server and its
connection limits, and the host's own gRPC services (health, reflection)."""
