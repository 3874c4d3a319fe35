"""Observability: Prometheus metrics (one registry per controller)."""
