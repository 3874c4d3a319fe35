"""This session's new request surfaces under 100 concurrent callers, on the real app (tests/api/offline.py, no root):
hostile bodies (the JSON guard), another node's session (421, each refusal logged once) and the webhook deliveries
list. Every caller gets its own, right answer; no 5xx; nothing at ERROR in the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.store.models import SessionRow
from tests.api.offline import AUTH, asgi, offline_app

DEEP = "[" * 5000 + "]" * 5000
SURROGATE = '{"user_id": "\\ud800"}'


async def one(http: httpx.AsyncClient, i: int, sid: str) -> tuple[int, str]:
    """Caller i's request and the check of its answer: (status, what went wrong or "")."""
    kind = i % 4
    if kind == 0:
        r = await http.post("/api/auth/start", content=DEEP, headers={**AUTH, "content-type": "application/json"})
        ok = r.status_code == 422 and "deeper than" in r.json()["error"]
    elif kind == 1:
        r = await http.post("/api/auth/start", content=SURROGATE, headers={**AUTH, "content-type": "application/json"})
        ok = r.status_code == 422 and "user_id" in r.text
    elif kind == 2:
        r = await http.get(f"/api/auth/session/{sid}", headers=AUTH)
        ok = r.status_code == 421 and r.json()["node"] == "n2" and r.json()["hop"] == "node"
    else:
        r = await http.get("/api/webhooks/deliveries", headers=AUTH)
        ok = r.status_code == 200 and isinstance(r.json()["deliveries"], list)
    return r.status_code, "" if ok else f"caller {i} ({kind}): {r.status_code} {r.text[:200]}"


async def test_100_concurrent_callers_each_get_their_own_answer(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(HEARTH_RATE_LIMIT="0")
    async with offline_app(settings) as off, asgi(off.app) as http:

        def elsewhere(db: Db) -> None:  # the session now lives on node n2 (as if another node had made it)
            db.execute(update(SessionRow).where(SessionRow.id == off.session_id).values(node_id="n2"))

        await off.ctl.db.run(elsewhere)
        answers = await asyncio.gather(*(one(http, i, off.session_id) for i in range(100)))
    wrong = [why for _, why in answers if why]
    assert wrong == [], wrong
    assert all(status < 500 for status, _ in answers)
    refusals = [r for r in caplog.records if r.getMessage() == "refused: the session lives on another node"]
    assert len(refusals) == 25, len(refusals)  # one per refused caller, no more, no fewer
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
