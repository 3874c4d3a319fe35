"""Sandboxes outlive the controller: 10 live sessions (9 desktops + 1 direct sign-in waiting for the person), the
controller stopped by SIGTERM and started again, then killed by SIGKILL and started again → every session is still
live on the same sandbox (same launcher PIDs), every desktop viewer gets frames again, the sign-in's device code is
shown again, the sign-in completes across the restarts (the agent retries its pushes until the controller answers), and after everything is cancelled nothing
is left. Then `--drain`: a drained stop ends every session."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.store.db import Database
from hearth.store.models import SandboxRow, SessionRow
from tests.restartkit import (
    Controller,
    approve_device,
    assert_nothing_left,
    start_fleet,
    start_idp,
    viewer_frames,
    wait_body,
    wait_prompt,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]
SESSIONS = int(os.environ.get("HEARTH_RESTART_SESSIONS", "10"))  # desktops + the sign-in


def launchers(db: Database) -> dict[str, int | None]:
    return db.call(lambda d: {r.owner_id: r.pid for r in d.query(SandboxRow).all()})


async def test_sessions_survive_sigterm_and_sigkill_of_the_controller(
    restart_settings: Settings, tmp_path: Path
) -> None:
    s = restart_settings
    ctl = Controller(s, tmp_path / "controller.log", SESSIONS)
    host, port = s.listen_host_port
    ws_base = f"ws://{host}:{port}"
    db = Database(s.db_url)
    server = None
    try:
        await asyncio.to_thread(ctl.start)  # brings the fabric namespace up: the IdP listens inside it
        server, _idp = await asyncio.to_thread(start_idp, s)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            fleet = await start_fleet(http, SESSIONS - 1)
            before = launchers(db)
            assert len(before) == SESSIONS and all(before.values()), before
            await viewer_frames(ws_base, fleet)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            code = await asyncio.to_thread(ctl.stop, sig)
            assert code in (0, -sig), code  # uvicorn re-raises SIGTERM after its graceful shutdown
            pids_down = launchers(db)
            assert pids_down == before, "a controller stop must not touch the sandboxes"
            await asyncio.to_thread(ctl.start)
            async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
                frames = await viewer_frames(ws_base, fleet)  # each desktop shows frames again
                assert set(frames) == set(fleet.desktops)
                for sid in [*fleet.desktops, fleet.signin]:
                    body = await wait_body(http, sid, ("ready", "awaiting_user"))
                    assert body["status"] in ("ready", "awaiting_user"), (sig.name, body)
                # The person of the direct sign-in sees the same device code again (the agent re-pushed it).
                shown = await wait_prompt(http, fleet.signin, 60)
                assert shown.get("user_code") == fleet.user_code, shown
            assert launchers(db) == before, "the same sandboxes, adopted"
            print(f"\nafter {sig.name}: {SESSIONS}/{SESSIONS} live; first frames {sorted(frames.values())[-1]:.2f}s")

        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            # The sign-in started under the first controller completes under the third.
            assert await asyncio.to_thread(approve_device, s, fleet.user_code) == 200
            body = await wait_body(http, fleet.signin, ("completed",), timeout=180)
            assert body["status"] == "completed", body
            for sid in fleet.desktops:
                assert (await http.post(f"/api/auth/session/{sid}/cancel")).json()["status"] == "cancelled"
            assert (await http.delete("/api/users/signer/cli-sandbox")).status_code == 204

        # A drained stop ends what is left: one more session, then `hearth serve --drain` semantics via SIGTERM.
        await asyncio.to_thread(ctl.stop, signal.SIGTERM)
        await asyncio.to_thread(ctl.start, 60, True)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            r = await http.post("/api/auth/start", json={"user_id": "last"})
            last = r.json()["session_id"]
            assert (await wait_body(http, last, ("ready",)))["status"] == "ready"
        await asyncio.to_thread(ctl.stop, signal.SIGTERM)
        status = db.call(lambda d: d.get(SessionRow, last).status)  # type: ignore[union-attr]
        assert status == "cancelled", status

        await asyncio.to_thread(assert_nothing_left, s, db)
    finally:
        ctl.kill()
        if server is not None:
            server.shutdown()
            server.server_close()
        db.dispose()
