"""The persistent CLI sandbox, through a real controller: created on first delivery, stopped when idle (processes
and address released, home kept), resumed on the next use with everything still there, files removed through its
agent, deleted for good — and nothing left behind. On the netns driver (root) and the loopback driver (no root)."""

from __future__ import annotations

import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.store.models import CliSandboxRow, LeaseRow
from hearth.vault.store import CredentialFile
from tests.conftest import running_controller
from tests.restartkit import sandbox_pids

pytestmark = [pytest.mark.slow]


async def test_create_idle_stop_resume_remove_delete(driver_settings: Callable[..., Settings]) -> None:
    settings = driver_settings(HEARTH_CHROMIUM="false")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        clis, db = ctl.ctl.clis, ctl.ctl.db
        assert (await http.get("/api/users/bob/cli-sandbox")).status_code == 404
        assert await clis.remove("bob", [".tool/a.json"]) == []  # no sandbox: nothing to remove, none created
        assert await clis.get("bob") is None

        # First delivery creates it; the file is written by its agent with the requested mode.
        installed = await clis.deliver("bob", [CredentialFile(".tool/a.json", 0o600, b'{"a": 1}')])
        assert installed == [".tool/a.json"]
        home = clis.home_of("bob")
        assert (home / ".tool" / "a.json").read_bytes() == b'{"a": 1}'
        assert stat.S_IMODE((home / ".tool" / "a.json").stat().st_mode) == 0o600
        body = (await http.get("/api/users/bob/cli-sandbox")).json()
        assert body["state"] == "running" and body["sandbox_ip"]
        row = db.call(lambda d: d.get(CliSandboxRow, "bob"))
        assert row is not None and row.slot is not None
        netns = ctl.ctl.service.ipam.slot(row.slot).netns
        assert sandbox_pids(settings)  # its processes (in its namespace; on loopback: its agent and what it runs)

        # Idle past the timeout: stopped — processes, namespace and lease gone, home kept.
        def age(d: Db) -> None:
            r = d.get(CliSandboxRow, "bob")
            assert r is not None
            r.last_used_at = datetime.now(UTC) - timedelta(seconds=settings.cli_idle_timeout + 60)

        db.call(age)
        assert await clis.stop_idle() == 1
        assert (await http.get("/api/users/bob/cli-sandbox")).json() | {"created_at": 0, "last_used_at": 0} == {
            "user_id": "bob",
            "state": "stopped",
            "sandbox_ip": None,
            "created_at": 0,
            "last_used_at": 0,
            "node": "local",  # its home node (HEARTH_NODE_ID)
        }
        assert not netlink.netns_exists(netns) and not sandbox_pids(settings)
        assert db.call(lambda d: d.query(LeaseRow).count()) == 0
        assert (home / ".tool" / "a.json").exists()

        # The next use resumes it, with the old file still there next to the new one.
        await clis.deliver("bob", [CredentialFile(".tool/b.json", 0o640, b"b")])
        view = await clis.get("bob")
        assert view is not None and view.state == "running"
        assert sorted(p.name for p in (home / ".tool").iterdir()) == ["a.json", "b.json"]
        assert stat.S_IMODE((home / ".tool" / "b.json").stat().st_mode) == 0o640

        # Removal goes through its agent; absent files are not an error.
        assert await clis.remove("bob", [".tool/a.json", ".tool/never.json"]) == [".tool/a.json"]
        assert sorted(p.name for p in (home / ".tool").iterdir()) == ["b.json"]

        # Deleted for good: home, row, lease and namespace.
        assert (await http.delete("/api/users/bob/cli-sandbox")).status_code == 204
        assert (await http.delete("/api/users/bob/cli-sandbox")).status_code == 404
        assert not home.exists()
        assert await clis.get("bob") is None
        assert db.call(lambda d: d.query(LeaseRow).count()) == 0
        assert not [n for n in netlink.list_netns() if n.startswith(f"{settings.fabric_netns}-")]
        assert not sandbox_pids(settings)
