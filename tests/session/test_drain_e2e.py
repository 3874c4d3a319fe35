"""A real controller's drain (`hearth serve --drain`: its stop ends every session, in group commits) leaves nothing:
no sandbox namespace, no sandbox row, no lease; every session is recorded as cancelled with its timeline entry."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.fabric.fabric import Fabric
from hearth.serving.local import local_controller
from hearth.session.service import DRAIN_REASON
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, SandboxRow, SessionRow
from tests.live import Live, start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def test_a_drain_leaves_no_namespace_row_or_lease(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RATE_LIMIT="0")
    lives: list[Live] = []
    fabric: Fabric | None = None
    db = Database(settings.db_url)
    try:
        # leaving it drains; its fabric stays until the namespaces were checked (its removal would remove them)
        async with local_controller(settings, remove_fabric=False) as ctl:
            fabric = ctl.ctl.fabric
            async with httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http:
                for i in range(4):
                    lives.append(await start_ready(http, settings, f"drain-{i}"))
            assert all(netlink.netns_exists(live.netns) for live in lives)
        assert [live.netns for live in lives if netlink.netns_exists(live.netns)] == []
        ids = [live.session_id for live in lives]
        rows = db.call(lambda d: {r.id: (r.status, r.reason) for r in d.scalars(select(SessionRow))})
        assert {rows[sid] for sid in ids} == {("cancelled", DRAIN_REASON)}
        last = db.call(
            lambda d: {
                sid: [(e.name, e.detail) for e in d.scalars(select(EventRow).where(EventRow.session_id == sid))][-1]
                for sid in ids
            }
        )
        assert set(last.values()) == {("cancelled", DRAIN_REASON)}
        assert db.call(lambda d: list(d.scalars(select(SandboxRow.owner_id)))) == []
        assert db.call(lambda d: list(d.scalars(select(LeaseRow.session_id)))) == []
    finally:
        db.dispose()
        if fabric is not None:
            await fabric.down(force=True)
