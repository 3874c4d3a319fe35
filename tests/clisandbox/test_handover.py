"""A sign-in placed on a node other than the one holding the user's CLI sandbox (that node was full or down): its
credentials are handed over through the vault, and the CLI sandbox's own node installs them. No node starts a
second CLI sandbox over another host's home, nor stops or deletes another node's.

Two real controllers in this process, each with its own fabric namespace, data dir and node id, sharing one store
(the test's PostgreSQL database in the PostgreSQL pass, else one SQLite file) and one master key — as the nodes of a
cluster do. The sign-in is a real direct-mode `example` sign-in on node A (the person's device-code approval played by a request to its IdP)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hearth.clisandbox.manager import Elsewhere
from hearth.config import Settings
from hearth.store.models import CliSandboxRow
from hearth.vault.store import CredentialFile
from tests.conftest import running_controller
from tests.live import signin_of
from tests.signinkit import browse, idp_env, issuer, running_idp
from tests.waits import wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]
IDP_PORT = 9406


async def test_a_sign_in_on_another_node_is_installed_by_the_cli_sandboxs_node(
    make_settings: Callable[..., Settings], data_dir: Path, database_url: str
) -> None:
    shared = {
        "HEARTH_DATABASE_URL": database_url or f"sqlite:///{data_dir}/shared.db",
        "HEARTH_MASTER_KEY": secrets.token_hex(32),
        "HEARTH_CHROMIUM": "false",
        "HEARTH_SIGNIN_MODE": "direct",
    }
    (data_dir / "a").mkdir(mode=0o711)
    (data_dir / "b").mkdir(mode=0o711)
    node_b = make_settings(**shared, HEARTH_NODE_ID="hb", HEARTH_DATA_DIR=str(data_dir / "b"))
    node_a = make_settings(**shared, **idp_env(IDP_PORT), HEARTH_NODE_ID="ha", HEARTH_DATA_DIR=str(data_dir / "a"))
    async with (
        running_controller(node_b) as b,
        running_controller(node_a) as a,
        httpx.AsyncClient(base_url=a.base_url, headers=a.headers, timeout=30) as http_a,
    ):
        # erin's CLI sandbox lives on node B (created there by an earlier delivery).
        await b.ctl.clis.deliver("erin", [CredentialFile(".earlier", 0o600, b"kept")])
        row = await b.ctl.db.run(lambda db: db.get(CliSandboxRow, "erin"))
        assert row is not None and row.node_id == "hb" and row.state == "running"

        async with running_idp(node_a, IDP_PORT, auto_approve=False):
            r = await http_a.post("/api/auth/start", json={"user_id": "erin", "provider": "example"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            body = await wait_session(http_a, sid, lambda b: bool(signin_of(b)), "device code shown")
            form = {"user_code": str(signin_of(body)["user_code"])}  # the person enters it on the IdP's page
            status, _, _ = await asyncio.to_thread(
                browse, node_a.fabric_netns, f"{issuer(IDP_PORT)}/device/approve", form
            )
            assert status == 200
            body = await wait_session(http_a, sid, lambda b: False, "completion")
        assert body["status"] == "completed", body
        assert "on node hb" in str(body["reason"]), body

        files = await a.ctl.vault.open("erin", "example")
        assert files is not None
        home_b = b.ctl.clis.home_of("erin")
        installed = json.loads((home_b / ".example" / "credentials.json").read_text())
        assert installed == json.loads(files[0].data), "node B installed what node A sealed"
        assert (home_b / ".earlier").read_bytes() == b"kept", "the CLI sandbox's home was used as it is"
        meta = [m for m in await b.ctl.vault.list("erin") if m.provider == "example"]
        assert meta and meta[0].delivered_at is not None

        # Node A never runs, stops or deletes node B's CLI sandbox; it says where it lives instead.
        assert not [o for o in a.ctl.service.sandboxes.owners() if o.startswith("cli-")]
        with pytest.raises(Elsewhere) as where:
            await a.ctl.clis.ensure("erin")
        assert where.value.node_id == "hb"
        r = await http_a.delete("/api/users/erin/cli-sandbox")
        assert r.status_code >= 400 and "node hb" in r.text, r.text
        assert b.ctl.service.sandboxes.get(row.owner_id) is not None and await b.ctl.service.sandboxes.alive(
            row.owner_id
        ), "node B's CLI sandbox still runs"
        assert await b.ctl.clis.delete("erin")
