"""Plugin discovery, loading and lifecycle."""
