"""Reconciler: compares the state store with reality and reclaims what hearth named but nobody owns."""
