"""A direct-mode sign-in's device code never goes into a reason, an event, the database, the API or the log (issue
20, item 4). Through a real controller, sandbox, agent and example CLI against the example IdP:

1. The IdP lets the device code expire: the CLI prints its error and exits, its screen (with the code) becomes the
   failure the agent reports — the session fails, and the code is nowhere.
2. An agent that reports the code anyway (an older image): the controller's own boundary scrubs it — the event the
   agent-callback server hands the sign-in flow carries the code, the stored reason does not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select

from hearth.config import Settings
from hearth.store.models import EventRow, SessionRow
from tests.conftest import Running, loopback_idp_env, running_controller
from tests.live import signin_of
from tests.signinkit import running_idp
from tests.waits import wait_session

pytestmark = [pytest.mark.slow]  # on the loopback driver: no root
IDP_PORT = 9411


async def stored(ctl: Running, sid: str) -> str:
    """Everything the database holds for the session: its row and its events."""

    def q(db: object) -> str:
        from sqlalchemy.orm import Session as Db

        assert isinstance(db, Db)
        row = db.get(SessionRow, sid)
        assert row is not None
        events = db.scalars(select(EventRow).where(EventRow.session_id == sid))
        cells = [[getattr(row, c.name) for c in SessionRow.__table__.columns]]
        cells += [[e.kind, e.name, e.detail] for e in events]
        return json.dumps(cells, default=str)

    return await ctl.ctl.db.run(q)


async def everywhere(ctl: Running, http: httpx.AsyncClient, sid: str, caplog: pytest.LogCaptureFixture) -> str:
    api = [(await http.get(f"/api/auth/session/{sid}")).text, (await http.get(f"/api/auth/session/{sid}/events")).text]
    logs = [f"{r.getMessage()} {vars(r)}" for r in caplog.records]
    return "\n".join([await stored(ctl, sid), *api, *logs])


async def test_device_code_never_stored_reported_or_logged(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(**loopback_idp_env(IDP_PORT))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
        running_idp(settings, IDP_PORT, auto_approve=False) as idp,
    ):
        # 1. The device code expires at the IdP: the CLI fails with the code on its screen.
        r = await http.post("/api/auth/start", json={"user_id": "erin", "provider": "example"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        body = await wait_session(http, sid, lambda b: bool(signin_of(b)), "device code shown")
        code = str(signin_of(body)["user_code"])
        assert signin_of(body)["flow"] == "device_code" and len(code) == 9, body
        with idp.lock:
            for device in idp.devices.values():
                device.expires = 0.0
        body = await wait_session(http, sid, lambda b: False, "the sign-in's failure")
        assert body["status"] == "failed", body
        reason = str(body["reason"])
        assert reason.startswith("[agent] sign-in failed: CLI exited with 1") and "expired_token" in reason, reason
        assert "enter the code [code]" in reason, reason  # the CLI's words are kept, the code is not
        found = await everywhere(ctl, http, sid, caplog)
        assert code not in found, found[found.find(code) - 300 :][:400]

        # 2. An agent that reports the code anyway: the controller scrubs it at its boundary.
        r = await http.post("/api/auth/start", json={"user_id": "erin", "provider": "example"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        body = await wait_session(http, sid, lambda b: bool(signin_of(b)), "device code shown")
        code = str(signin_of(body)["user_code"])
        await ctl.ctl.signin.on_event(sid, "screen", f"the CLI shows {code} and waits")
        await ctl.ctl.signin.on_event(sid, "login_failed", f"CLI exited with 1: code {code.lower()} / {code} refused")
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        assert body["status"] == "failed", body
        assert body["reason"] == "[agent] sign-in failed: CLI exited with 1: code [code] / [code] refused"
        found = await everywhere(ctl, http, sid, caplog)
        assert code not in found and code.lower() not in found, found[found.find(code) - 300 :][:400]
        assert "the CLI shows [code] and waits" in found
