"""Names for the fabric namespaces tests create (`hearth-t<6 hex>`; a fabric's sandboxes are `<name>-s<slot>`),
recorded so that the leak guard in tests/conftest.py checks only the names this test made — other test runs on the
same machine create theirs meanwhile, and theirs are none of this run's business."""

from __future__ import annotations

import secrets

_made: list[str] = []  # test infrastructure only: the names made since the guard last took them


def new() -> str:
    name = f"hearth-t{secrets.token_hex(3)}"
    _made.append(name)
    return name


def take() -> list[str]:
    """The names made since the last call (and forget them)."""
    out = list(_made)
    _made.clear()
    return out
