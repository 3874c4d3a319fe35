"""HEARTH_CLI_RETENTION: the dry run lists this node's stopped CLI homes unused for longer than it, the run removes
exactly those (home directory and row); a running one, a busy one, another node's and a recent one stay. The API's
two routes through FastAPI's test client. (No sandbox runs here: the sandbox manager is not reached for stopped
homes, so a bare stand-in with no methods takes its place.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from fastapi import FastAPI
from fastapi.testclient import TestClient

from hearth.api import retention
from hearth.api.auth import ApiKeys
from hearth.clisandbox.manager import CliSandboxes
from hearth.config import Settings
from hearth.lifecycle.manager import SandboxManager
from hearth.store.db import Database
from hearth.store.models import CliSandboxRow, utcnow


def test_dry_run_then_run(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(HEARTH_CLI_RETENTION="3600")
    db = Database(settings.db_url, settings.data_dir)
    clis = CliSandboxes(settings, db, cast(SandboxManager, SimpleNamespace(ipam=None)), providers={})
    clis.busy = lambda user: user == "busy"
    old, new = utcnow() - timedelta(hours=2), utcnow()
    homes = {}
    for user, state, node, last in (
        ("gone", "stopped", settings.node_id, old),
        ("recent", "stopped", settings.node_id, new),
        ("running", "running", settings.node_id, old),
        ("busy", "stopped", settings.node_id, old),
        ("elsewhere", "stopped", "other-node", old),
    ):
        home = tmp_path / user / "home"
        home.mkdir(parents=True)
        (home / "f").write_text("x")
        homes[user] = home

        def add(s: Any, user: str = user, state: str = state, node: str = node, last: Any = last) -> None:
            s.add(
                CliSandboxRow(
                    user_id=user, node_id=node, owner_id=f"cli-{user}", state=state, home=str(homes[user]),
                    last_used_at=last,
                )
            )  # fmt: skip

        db.call(add)
    try:
        app = FastAPI()
        app.include_router(retention.make_router(clis, ApiKeys(["k"])))
        client = TestClient(app, headers={"Authorization": "Bearer k"})
        dry = client.get("/api/admin/cli-retention").json()
        assert dry["dry_run"] is True and dry["retention_seconds"] == 3600
        assert [h["user_id"] for h in dry["homes"]] == ["gone"] and homes["gone"].exists()
        done = client.post("/api/admin/cli-retention").json()
        assert [h["user_id"] for h in done["homes"]] == ["gone"]
        assert not homes["gone"].exists() and all(homes[u].exists() for u in homes if u != "gone")
        assert db.call(lambda s: s.get(CliSandboxRow, "gone")) is None
        assert client.get("/api/admin/cli-retention").json()["homes"] == []
        assert client.get("/api/admin/cli-retention", headers={"Authorization": "Bearer x"}).status_code == 401
    finally:
        db.dispose()


def test_zero_keeps_every_home(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    db = Database(settings.db_url, settings.data_dir)
    clis = CliSandboxes(settings, db, cast(SandboxManager, SimpleNamespace(ipam=None)), providers={})
    try:
        db.call(
            lambda s: s.add(
                CliSandboxRow(
                    user_id="u",
                    owner_id="cli-u",
                    state="stopped",
                    home="/nonexistent",
                    last_used_at=utcnow() - timedelta(days=900),
                )
            )
        )
        assert asyncio.run(retention.expired(clis)) == []
    finally:
        db.dispose()
