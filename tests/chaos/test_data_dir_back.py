"""The data dir moved away and back under a real controller (issue 20, item 4: the README and the behaviour agree):
while it is away, `/ready` is 503 naming `data_dir`, no new work is accepted, the live viewer keeps streaming and a
cancel still removes its sandbox; once the same directory is back at its path, service resumes without a restart —
the cancel is recorded, new sessions boot (`tests.chaos.faults.outage`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from tests.chaos.faults import outage
from tests.conftest import running_controller

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def test_data_dir_moved_away_and_back_resumes_without_a_restart(
    make_settings: Callable[..., Settings], data_dir: Path
) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RATE_LIMIT="0")
    away = data_dir.with_name(data_dir.name + ".away")
    try:
        async with running_controller(settings) as ctl:

            async def moved_away() -> None:
                data_dir.rename(away)

            async def moved_back() -> None:
                async with httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as http:
                    detail = (await http.get("/ready")).json()["detail"]["data_dir"]
                assert "was moved away" in detail, detail
                away.rename(data_dir)

            await outage(ctl, moved_away, moved_back, broken_check="data_dir")
    finally:
        if away.exists() and not data_dir.exists():  # a failure while it was away: the fixture removes it
            away.rename(data_dir)
