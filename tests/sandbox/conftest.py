"""Fixtures for the namespace driver's tests: a real fabric (own network namespace and bridge), removed after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from hearth.config import Settings
from hearth.fabric.fabric import Fabric


@pytest.fixture
async def fabric_settings(make_settings: Callable[..., Settings]) -> AsyncIterator[Settings]:
    """Settings of a fabric that is up: unique namespace `hearth-t<hex>`, traversable data dir; torn down after."""
    settings = make_settings()
    fabric = Fabric(settings)
    try:
        await fabric.up()
        yield settings
    finally:
        await fabric.down(force=True)
