"""The outbox is written in the state change's own transaction: session states (admission, transitions, a node's
death), credential seals, deliveries and revocations; nothing for a change that is not committed, nothing while
HEARTH_WEBHOOK_URL is unset. Real store (SQLite, and PostgreSQL in the second pass)."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hearth.cluster import nodes
from hearth.config import Settings
from hearth.fabric.ipam import Ipam
from hearth.sandbox.netns import NetnsDriver
from hearth.session import admission
from hearth.session.states import IllegalTransition, Status
from hearth.store.db import Database
from hearth.store.models import NodeRow, OutboxRow
from hearth.vault.keys import KeyRing
from hearth.vault.store import CredentialFile, Vault
from hearth.webhooks.outbox import Outbox
from tests.session.servicekit import session_service

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
ON = {"HEARTH_WEBHOOK_URL": "http://127.0.0.1:9/hooks", "HEARTH_WEBHOOK_SECRET": SECRET}


def events(db: Database, stream: str | None = None) -> list[dict[str, Any]]:
    def q(s: Any) -> list[dict[str, Any]]:
        stmt = select(OutboxRow).order_by(OutboxRow.id)
        if stream is not None:
            stmt = stmt.where(OutboxRow.stream == stream)
        return [{"stream": r.stream, "state": r.state, **json.loads(r.body)} for r in s.scalars(stmt)]

    return db.call(q)


def admit(db: Database, s: Settings, user: str = "u") -> str:
    sid = str(uuid.uuid4())
    admission.admit(db, Ipam(s, db), s, sid, user, "example", "direct", "netns")
    return sid


async def test_session_states_are_written_with_their_transition(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(**ON, MAX_SESSIONS_PER_USER="5")
    db = Database(s.db_url)
    try:
        svc = session_service(s, db, NetnsDriver(s))
        sid = admit(db, s, "alice")
        await svc.records.advance(sid, Status.READY)
        with pytest.raises(IllegalTransition):
            await svc.records.advance(sid, Status.DELIVERED)  # refused: no event either
        await svc.records.advance(sid, Status.AWAITING_USER, "sign-in link shown")
        await svc.records.advance(sid, Status.FAILED, "[agent] the CLI exited", None)
        got = events(db, sid)
        assert [e["type"] for e in got] == [
            "session.starting",
            "session.ready",
            "session.awaiting_user",
            "session.failed",
        ]
        assert all(e["state"] == "pending" for e in got)
        first, last = got[0]["data"], got[-1]["data"]
        assert first == {
            "session_id": sid,
            "user_id": "alice",
            "provider": "example",
            "mode": "direct",
            "status": "starting",
            "previous_status": None,
            "reason": None,
            "hop": None,
            "node_id": "local",
        }
        assert (last["previous_status"], last["status"], last["reason"]) == (
            "awaiting_user",
            "failed",
            "[agent] the CLI exited",
        )
        assert got[0]["timestamp"].endswith("Z")
    finally:
        db.dispose()


async def test_nothing_is_written_while_no_url_is_set(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    db = Database(s.db_url)
    try:
        svc = session_service(s, db, NetnsDriver(s))
        sid = admit(db, s)
        await svc.records.advance(sid, Status.READY)
        assert events(db) == []
    finally:
        db.dispose()


async def test_credentials_sealed_delivered_revoked_in_the_sessions_stream(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(**ON)
    db = Database(s.db_url)
    try:
        vault = Vault(db, KeyRing.load("", tmp_path / "vault.keys"), Outbox(s))
        files = [CredentialFile(".example/credentials.json", 0o600, b'{"token": "very-secret"}')]
        # A seal in a transaction that fails afterwards leaves neither the record nor its event.
        store = vault.upsert("bob", "example", files, "sess-1")

        def fails(d: Any) -> None:
            store(d)
            raise RuntimeError("the step to credentials_captured was refused")

        with pytest.raises(RuntimeError):
            db.call(fails)
        assert events(db) == []
        await vault.put("bob", "example", files, "sess-1")
        await vault.mark_delivered("bob", "example")
        assert await vault.revoke("bob", "example")
        assert not await vault.revoke("bob", "example")  # nothing left: no second event
        got = events(db)
        assert [(e["type"], e["stream"]) for e in got] == [
            ("credential.sealed", "sess-1"),
            ("credential.delivered", "sess-1"),
            ("credential.revoked", "sess-1"),
        ]
        assert got[0]["data"] == {
            "user_id": "bob",
            "provider": "example",
            "session_id": "sess-1",
            "files": [".example/credentials.json"],
        }
        assert all(b"very-secret" not in json.dumps(e).encode() for e in got)
    finally:
        db.dispose()


def test_a_dead_nodes_sessions_fail_with_their_event(make_settings: Callable[..., Settings]) -> None:
    s0 = make_settings(**ON, HEARTH_NODE_ID="h0")
    db = Database(s0.db_url)
    try:
        for n in ("h0", "h1"):
            reg = nodes.Registration(n, f"http://{n}:4000", 4, 4, ("netns",), "0.1.0")
            nodes.heartbeat(db, reg)
        sid = admit(db, s0, "carol")
        later = datetime.now(UTC) + timedelta(seconds=11)
        db.call(lambda x: x.get(NodeRow, "h1").__setattr__("heartbeat_at", later))
        assert nodes.sweep(db, 10, now=later, outbox=Outbox(make_settings(**ON, HEARTH_NODE_ID="h1"))) == {"h0": 1}
        got = events(db, sid)
        assert [e["type"] for e in got] == ["session.starting", "session.failed"]
        failed = got[1]["data"]
        assert (failed["previous_status"], failed["hop"], failed["node_id"]) == ("starting", "node", "h0")
        assert "node h0 is down" in failed["reason"]
    finally:
        db.dispose()
