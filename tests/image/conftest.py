from __future__ import annotations

import pytest

from hearth.image.build import BuiltImage
from tests.image.golden import golden_image


@pytest.fixture(scope="session")
def image() -> BuiltImage:
    """The guest image (built once per session, reused across runs; see tests/image/golden.py)."""
    return golden_image()
