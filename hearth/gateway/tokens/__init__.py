"""Viewer tokens: short-lived, signed, bound to one session and a scope."""
