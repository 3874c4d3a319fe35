"""One address per person, through a real controller: a user's sign-in sandbox (its Chromium opening the sign-in
page) and their CLI sandbox both leave through that user's port of the upstream proxy; another user through
another port. The proxy (hearth/standins/proxyserver.py, Basic auth, recording port and user per request) and the
provider's HTTPS server (a throwaway CA, given as HEARTH_EXTRA_CA_CERTS) run in the controller's fabric namespace;
the proxy on BRIDGE_IP, a port range opened to sandboxes. A client inside each sandbox (curl in its namespace,
through the sandbox's local proxy on 127.0.0.1) reaches the provider; the password is in no API answer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hearth.agentlink.client import AgentClient
from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns
from hearth.guest.configdrive import LOCAL_PROXY_PORT
from hearth.serving.local import free_port
from hearth.store.models import Base
from tests.conftest import running_controller
from tests.proxy.tlskit import BODY, make_certs, tls_server
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]
HOST = "signin.provider.test"
SECRET = "One-addr-pw-7"
WAIT = 90.0


async def curl_in(netns: str, ca: Path, url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "20",
        "--proxy", f"http://127.0.0.1:{LOCAL_PROXY_PORT}", "--cacert", str(ca), url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


async def test_a_users_browser_and_cli_share_one_port_and_users_differ(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lo = free_port()
    ports = f"{lo}-{lo + 1}"
    bridge = str(make_settings().bridge_ip)
    ca = make_certs(tmp_path, HOST)
    record = tmp_path / "seen.jsonl"
    settings = make_settings(
        HEARTH_FABRIC_OPEN_PORTS=f"{lo},{lo + 1}",
        HEARTH_EGRESS_PROXY=f"http://alice:{SECRET}@{bridge}:{{port}}",
        HEARTH_EGRESS_PROXY_PORTS=ports,
        HEARTH_EXTRA_CA_CERTS=str(ca),
    )
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        sock = await asyncio.to_thread(socket_in_netns, settings.fabric_netns)
        with tls_server(tmp_path, HOST, sock) as web:
            proxy = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", settings.fabric_netns, sys.executable, "-m", "hearth.standins.proxyserver",
                "--listen", bridge, "--ports", ports, "--record", str(record), "--resolve", f"{HOST}=127.0.0.1",
                env={**os.environ, "PROXY_USER": f"alice:{SECRET}"}, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                assert proxy.stdout is not None and b"listening" in await asyncio.wait_for(proxy.stdout.readline(), 30)
                sids = {}
                for user in ("pat", "quinn"):
                    r = await http.post("/api/auth/start", json={"user_id": user})
                    assert r.status_code == 201, r.text
                    sids[user] = r.json()["session_id"]
                for sid in sids.values():
                    body = await wait_session(http, sid, timeout=WAIT)
                    assert body["status"] == "ready", body
                cli = await ctl.ctl.clis.ensure("pat")
                sandboxes = ctl.ctl.service.sandboxes
                where = {
                    "pat-browser": sandboxes.get(sids["pat"]),
                    "pat-cli": sandboxes.get(cli.owner_id),
                    "quinn-browser": sandboxes.get(sids["quinn"]),
                }
                for name, sb in where.items():
                    assert sb is not None, name
                    out = await curl_in(sb.spec.slot.netns, ca, f"https://{HOST}:{web.port}/{name}")
                    assert out == BODY.decode(), (name, out)
                # Chromium of pat's sign-in sandbox, on the sign-in page: through the same port
                spec = where["pat-browser"].spec  # type: ignore[union-attr]
                agent = AgentClient(settings.fabric_netns, str(spec.slot.ip), spec.agent_port, spec.secret)
                await agent.call("POST", "/v1/open-url", {"url": f"https://{HOST}:{web.port}/pat-chromium"}, timeout=30)
                for _ in range(600):
                    if any("/pat-chromium" in h for h in web.heads):
                        break
                    await asyncio.sleep(0.1)
                assert any("/pat-chromium" in h and "Chrome/" in h for h in web.heads), web.heads

                egress = {u: (await http.get(f"/api/users/{u}/egress")).json() for u in ("pat", "quinn")}
                assert SECRET not in json.dumps(egress)
                port_of = {u: e["proxy"]["port"] for u, e in egress.items()}
                assert port_of["pat"] != port_of["quinn"] and set(port_of.values()) == {lo, lo + 1}
                seen = [json.loads(line) for line in record.read_text().splitlines()]
                target = f"{HOST}:{web.port}"
                came = {(x["port"], x["user"]) for x in seen if x["target"] == target}
                assert came == {(port_of["pat"], "alice"), (port_of["quinn"], "alice")}, seen
                paths = {h.split(" ", 2)[1].lstrip("/") for h in web.heads}
                assert {"pat-browser", "pat-cli", "quinn-browser", "pat-chromium"} <= paths
                assert all(x["port"] in (lo, lo + 1) for x in seen)
                per_port = {
                    u: sum(1 for x in seen if x["target"] == target and x["port"] == p) for u, p in port_of.items()
                }
                assert per_port["pat"] >= 3 and per_port["quinn"] == 1, per_port  # pat: browser, CLI, Chromium
                logs = caplog.text + "".join(
                    ctl.ctl.driver.log_path(sb.spec).read_text()  # type: ignore[attr-defined, union-attr]
                    for sb in where.values()
                )
                assert "local egress proxy listening" in logs and SECRET not in logs  # controller and agents

                def every_row(db: Session) -> str:  # the whole store, every table (SQLite or PostgreSQL pass)
                    return "".join(str(db.execute(select(t)).all()) for t in Base.metadata.sorted_tables)

                stored = await ctl.ctl.db.run(every_row)
                assert SECRET not in stored and str(port_of["pat"]) in stored  # the port is stored, never the password
            finally:
                proxy.terminate()
                await asyncio.wait_for(proxy.wait(), 10)


async def test_a_pooled_sandbox_leaves_through_its_persons_port(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A warm-pool sandbox boots before anyone owns it (its local proxy has no upstream: refused, naming the proxy);
    handed out, it goes through its person's port."""
    lo = free_port()
    bridge = str(make_settings().bridge_ip)
    ca = make_certs(tmp_path, HOST)
    record = tmp_path / "seen.jsonl"
    settings = make_settings(
        HEARTH_FABRIC_OPEN_PORTS=str(lo),
        HEARTH_EGRESS_PROXY=f"http://alice:{SECRET}@{bridge}:{{port}}",
        HEARTH_EGRESS_PROXY_PORTS=str(lo),
        HEARTH_EXTRA_CA_CERTS=str(ca),
        HEARTH_POOL_SIZE="remote_browser:1",
        HEARTH_CHROMIUM="false",
    )
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        sock = await asyncio.to_thread(socket_in_netns, settings.fabric_netns)
        with tls_server(tmp_path, HOST, sock) as web:
            proxy = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", settings.fabric_netns, sys.executable, "-m", "hearth.standins.proxyserver",
                "--listen", bridge, "--ports", str(lo), "--record", str(record), "--resolve", f"{HOST}=127.0.0.1",
                env={**os.environ, "PROXY_USER": f"alice:{SECRET}"}, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                assert proxy.stdout is not None and b"listening" in await asyncio.wait_for(proxy.stdout.readline(), 30)
                pool = ctl.ctl.service.pool

                def warm() -> bool:
                    assert pool.ready("remote_browser"), pool.summary()  # the last look, should it time out
                    return True

                await eventually(warm, WAIT, "a warm browser", interval=0.1)
                pooled = pool.ready("remote_browser")[0]
                url = f"https://{HOST}:{web.port}/"
                before = await curl_in(pooled.spec.slot.netns, ca, url + "unowned")
                assert "CONNECT tunnel failed, response 502" in before, before  # no upstream yet: refused
                r = await http.post("/api/auth/start", json={"user_id": "rae"})
                assert r.status_code == 201, r.text
                sid = r.json()["session_id"]
                body = await wait_session(http, sid, timeout=WAIT)
                assert body["status"] == "ready", body
                sb = ctl.ctl.service.sandboxes.get(sid)
                assert sb is not None and sb.spec.slot.netns == pooled.spec.slot.netns  # the pooled one, handed out
                assert await curl_in(sb.spec.slot.netns, ca, url + "owned") == BODY.decode()
                seen = [json.loads(line) for line in record.read_text().splitlines()]
                assert [(x["port"], x["user"], x["status"]) for x in seen] == [(lo, "alice", 200)], seen
                assert (await http.get("/api/users/rae/egress")).json()["proxy"]["port"] == lo
            finally:
                proxy.terminate()
                await asyncio.wait_for(proxy.wait(), 10)
