"""While the store is down, a viewer that went away reconnects to its node's live session (issue 20, item 4): the
gateway admits from what the node knows in memory — the token verified, the session live on this node — instead of
answering 4503. A real controller on a PostgreSQL server of the test's own, stopped and started again."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.gateway.tokens.base import Scope
from hearth.rfb.ws import first_frame
from hearth.serving.local import free_port
from tests.cluster.test_wrong_node import closed_with
from tests.conftest import running_controller
from tests.live import start_ready
from tests.pgcluster import available, cluster, fresh_database
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]
LIGHT = {"HEARTH_CHROMIUM": "false", "HEARTH_RATE_LIMIT": "0"}


async def test_a_viewer_reconnects_to_its_live_session_while_the_store_is_down(
    make_settings: Callable[..., Settings],
) -> None:
    if not available():
        pytest.skip("needs root and Debian's postgresql (scripts/setup.sh)")
    with cluster(free_port()) as pg, fresh_database(pg.url) as url:
        settings = make_settings(HEARTH_DATABASE_URL=url, **LIGHT)
        async with (
            running_controller(settings) as ctl,
            httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
        ):
            live = await start_ready(http, settings, "watcher")
            leaver = await start_ready(http, settings, "leaver")
            r = await http.post(f"/api/auth/session/{live.session_id}/token", json={"scope": "view"})
            assert r.status_code == 200, r.text
            view_only = str(r.json()["viewer_token"])
            before = await first_frame(live.ws_url(ctl), 60)  # the viewer watched, then went away

            pg.stop()
            try:
                r = await http.get(f"/api/auth/session/{live.session_id}")
                assert r.status_code == 503 and r.json()["error"].startswith("[store]"), r.text  # really down

                # It comes back — full RFB and a framebuffer update — with its control token and a view-only one.
                again = await first_frame(live.ws_url(ctl), 60)
                assert (again.init.width, again.init.height, again.init.name) == (
                    before.init.width,
                    before.init.height,
                    before.init.name,
                )
                assert again.rects
                watching = await first_frame(live.ws_url(ctl, view_only), 60)
                assert watching.rects

                # Only what the node knows live is admitted: the token is still checked, and a session the node
                # does not run still needs the store (4503: reconnect shortly).
                code, _ = await closed_with(live.ws_url(ctl, view_only[:-4] + "AAAA"))
                assert code == 4401
                stranger = str(uuid.uuid4())
                code, reason = await closed_with(
                    f"{ctl.ws_base}/api/auth/session/{stranger}/novnc/websock"
                    f"?token={ctl.ctl.tokens.issue(stranger, Scope.CONTROL, 60)}"
                )
                assert code == 4503 and reason.startswith("[store]"), (code, reason)

                # A session ended while the store is down (its sandbox removed, the end recorded later) is no
                # longer known live: its viewer is not admitted.
                r = await http.post(f"/api/auth/session/{leaver.session_id}/cancel")
                assert r.status_code == 503, r.text
                code, reason = await closed_with(leaver.ws_url(ctl))
                assert code == 4503, (code, reason)
            finally:
                pg.start()

            async def ready() -> bool:
                return (await http.get("/ready")).status_code == 200

            await eventually(ready, 60, "the store back (/ready)", interval=0.5)
            r = await http.get(f"/api/auth/session/{live.session_id}")
            assert r.status_code == 200 and r.json()["status"] == "ready", r.text
            assert (await first_frame(live.ws_url(ctl), 60)).rects

            async def cancelled() -> bool:
                return bool((await http.get(f"/api/auth/session/{leaver.session_id}")).json()["status"] == "cancelled")

            # the end recorded once the store is back (housekeeping, every 2 s)
            await eventually(cancelled, 60, "the cancel recorded", interval=0.5)
