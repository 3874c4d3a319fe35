"""PostgreSQL for the tests: see hearth.store.pglocal (shared with the cluster benchmarks and the demo)."""

from hearth.store.pglocal import PG_BIN, Cluster, available, cluster, fresh_database

__all__ = ["PG_BIN", "Cluster", "available", "cluster", "fresh_database"]
