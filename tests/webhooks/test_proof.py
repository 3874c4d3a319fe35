"""The webhook proof, through a real controller process (tests/restartkit.py) and a real receiver on loopback that
checks every signature: the receiver is down while two direct sign-ins start (one is cancelled, one waits for the
person), the controller is SIGKILLed and started again, the sign-in completes, the credentials are revoked — then the
receiver comes up and gets every event, in order per session, and the sessions' webhooks match their timelines state
for state: nothing was lost and no sign-in waited for the receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from hearth.config import Settings
from hearth.serving.local import free_port
from hearth.store.db import Database
from hearth.store.models import EventRow, OutboxRow
from tests.restartkit import Controller, approve_device, assert_nothing_left, start_idp, wait_body, wait_prompt
from tests.waits import eventually
from tests.webhooks.receiver import Receiver

pytestmark = [pytest.mark.netns, pytest.mark.slow]
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def outbox(db: Database) -> list[OutboxRow]:
    return db.call(lambda d: list(d.scalars(select(OutboxRow).order_by(OutboxRow.id))))


def states(db: Database, sid: str) -> list[str]:
    return db.call(
        lambda d: list(
            d.scalars(
                select(EventRow.name).where(EventRow.session_id == sid, EventRow.kind == "state").order_by(EventRow.id)
            )
        )
    )


async def test_a_receiver_down_across_a_controller_kill_then_gets_every_event_in_order(
    restart_settings: Settings, tmp_path: Path
) -> None:
    s = restart_settings
    receiver = Receiver(SECRET, free_port())  # down: nothing listens on its port yet
    env = {"HEARTH_WEBHOOK_URL": receiver.url, "HEARTH_WEBHOOK_SECRET": SECRET, "HEARTH_WEBHOOK_BACKOFF_MAX": "2"}
    ctl = Controller(s, tmp_path / "controller.log", 2, extra_env=env)
    db = Database(s.db_url)
    server = None
    try:
        await asyncio.to_thread(ctl.start)
        server, _idp = await asyncio.to_thread(start_idp, s)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            started = time.monotonic()
            ids = []
            for user in ("signer", "quitter"):
                r = await http.post("/api/auth/start", json={"user_id": user, "provider": "example", "mode": "direct"})
                assert r.status_code == 201, r.text
                ids.append(r.json()["session_id"])
            signin, quitter = ids
            user_code = str((await wait_prompt(http, signin))["user_code"])
            await wait_prompt(http, quitter)
            print(
                f"\nboth sign-ins showed their code {time.monotonic() - started:.1f}s after the starts (receiver down)"
            )
            assert (await http.post(f"/api/auth/session/{quitter}/cancel")).json()["status"] == "cancelled"
            # The receiver is down: the deliveries say so, and nothing behind a session's first event was tried.
            page = (await http.get("/api/webhooks/deliveries", params={"state": "pending"})).json()
            assert page["enabled"] is True and page["deliveries"]
            tried = [d for d in page["deliveries"] if d["attempts"]]
            assert tried and all(d["last_error"].startswith("[webhook] cannot reach 127.0.0.1") for d in tried)
            assert len({d["stream"] for d in tried}) == len(tried), "two events of one session were tried"

        assert await asyncio.to_thread(ctl.stop, signal.SIGKILL) == -signal.SIGKILL
        await asyncio.to_thread(ctl.start)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            assert await asyncio.to_thread(approve_device, s, user_code) == 200
            body = await wait_body(http, signin, ("completed",), timeout=180)
            assert body["status"] == "completed", body
            revoked = await http.delete("/api/auth/credentials/signer/example")
            assert revoked.status_code == 200, revoked.text

            await receiver.up()

            def delivered() -> bool:
                left = [(o.type, o.state, o.last_error) for o in outbox(db) if o.state != "delivered"]
                assert not left, left  # the last observation, should it time out
                return True

            await eventually(delivered, 120, "every event delivered", interval=0.2)
            page = (await http.get("/api/webhooks/deliveries", params={"state": "delivered"})).json()
            assert len(page["deliveries"]) == min(50, len(outbox(db)))
            assert (await http.delete("/api/users/signer/cli-sandbox")).status_code == 204

        rows = outbox(db)
        assert receiver.bad_signatures == 0
        assert receiver.max_in_flight_per_stream == 1
        want: dict[str, list[str]] = {}
        for row in rows:
            want.setdefault(row.stream, []).append(row.msg_id)
        assert receiver.by_stream() == want  # every event, each session's in the order it happened
        types = {sid: [json.loads(o.body)["type"] for o in rows if o.stream == sid] for sid in (signin, quitter)}
        for sid in (signin, quitter):  # a webhook for every state the session's timeline holds, in its order
            assert [t.removeprefix("session.") for t in types[sid] if t.startswith("session.")] == states(db, sid)
        assert types[quitter][0] == "session.starting" and types[quitter][-1] == "session.cancelled"
        assert [t for t in types[signin] if t.startswith("credential.")] == [
            "credential.sealed",
            "credential.delivered",
            "credential.revoked",
        ]
        assert types[signin][-3:] == ["session.delivered", "session.completed", "credential.revoked"]
        await asyncio.to_thread(ctl.stop, signal.SIGTERM)
        await asyncio.to_thread(assert_nothing_left, s, db)
    finally:
        ctl.kill()
        await receiver.down()
        if server is not None:
            server.shutdown()
            server.server_close()
        db.dispose()
