"""Benchmarks of nexus against FastAPI and a bare grpc.aio server; see benchmarks/README.md."""
