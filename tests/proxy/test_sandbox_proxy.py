"""Through a real netns sandbox: its CLI (a Python client run by the agent's login runner, with the agent's CLI
environment) and its Chromium (hearth's managed policy: ProxySettings, CACertificates) reach an HTTPS server of a
throwaway CA through the user's port of an upstream proxy that requires Basic auth and records port and user — the
proxy (hearth/standins/proxyserver.py) and the server run in the test fabric's namespace, which this test creates,
on BRIDGE_IP ports opened to sandboxes (HEARTH_FABRIC_OPEN_PORTS). The proxy's password is in no sandbox process's
argv or environment, not in the agent's log, not in Chromium's policy."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns
from hearth.fabric.fabric import Fabric
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.procs import SandboxProcesses
from hearth.serving.local import free_port
from hearth_agent.providerdef import definition_digest
from tests.proxy.tlskit import BODY, tls_server
from tests.sandbox.specs import spec_for
from tests.sandbox.test_netns import health, http
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]
HOST = "provider.test"
SECRET = "S3cret-" + secrets.token_hex(6)
CLIENT = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print('RESULT', urllib.request.urlopen(sys.argv[1], timeout=20).read().decode().strip())\n"
    "except Exception as exc:\n"
    "    print('FAILED', exc)\n"
    "import time; time.sleep(60)\n"
)


def probe_provider(url: str) -> dict[str, Any]:
    return {
        "name": "proxyprobe",
        "flows": {"loopback": {"command": ["python3", "-c", CLIENT, url]}},
        "credential_files": [{"source": ".proxyprobe/none.json", "target": ".proxyprobe/none.json"}],
        "timeout": 120,
    }


@pytest.fixture
async def fabric(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Settings, int]]:
    proxy_port = free_port()
    settings = make_settings(HEARTH_FABRIC_OPEN_PORTS=f"{proxy_port}")
    fab = Fabric(settings)
    try:
        await fab.up()
        yield settings, proxy_port
    finally:
        await fab.down(force=True)


async def test_cli_and_chromium_go_through_the_users_port_and_trust_the_extra_ca(
    fabric: tuple[Settings, int], tmp_path: Path
) -> None:
    s, proxy_port = fabric
    bridge = str(s.bridge_ip)
    record = tmp_path / "seen.jsonl"
    sock = await asyncio.to_thread(socket_in_netns, s.fabric_netns)
    with tls_server(tmp_path, HOST, sock) as web:
        # the TLS port is not opened to sandboxes: only the proxy (in the fabric namespace) reaches it
        proxy = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", s.fabric_netns, sys.executable, "-m", "hearth.standins.proxyserver",
            "--listen", bridge, "--ports", str(proxy_port), "--record", str(record),
            "--resolve", f"{HOST}=127.0.0.1",
            env={**os.environ, "PROXY_USER": f"alice:{SECRET}"}, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        driver = NetnsDriver(s)
        url = f"https://{HOST}:{web.port}/"
        definition = probe_provider(url)
        spec = spec_for(
            s, 2, local_proxy=True, egress_proxy=f"http://alice:{SECRET}@{bridge}:{proxy_port}",
            extra_ca=web.ca.read_text(), providers=(definition_digest(definition),),
        )  # fmt: skip
        try:
            assert proxy.stdout is not None and b"listening" in await asyncio.wait_for(proxy.stdout.readline(), 30)
            await driver.start(spec, lambda _: None)
            await eventually(lambda: _ok(health(s, spec)), 60, "desktop up")
            status, raw = await http(
                s, spec, "POST", "/v1/login", {"provider": definition, "flow": "loopback"}, spec.secret
            )
            assert status == 202, raw

            async def printed() -> str | None:
                _, body = await http(s, spec, "GET", "/v1/login", secret=spec.secret)
                tail = str(json.loads(body)["screen_tail"])
                return tail if ("RESULT" in tail or "FAILED" in tail) else None

            tail = await eventually(printed, 60, "the CLI's answer")
            assert f"RESULT {BODY.decode().strip()}" in tail, tail
            # Chromium: hearth's policy sends it through the local proxy and trusts the extra CA
            status, raw = await http(s, spec, "POST", "/v1/open-url", {"url": url + "from-chromium"}, spec.secret)
            assert status == 200, raw
            await eventually(lambda: _true(any("/from-chromium" in h for h in web.heads)), 60, "chromium's request")
            chromium_head = next(h for h in web.heads if "/from-chromium" in h)
            assert "Chrome/" in chromium_head

            seen = [json.loads(line) for line in record.read_text().splitlines()]
            # every request of the sandbox (CLI and browser, its background requests too) came on the user's port
            assert seen and {(x["port"], x["user"]) for x in seen} == {(proxy_port, "alice")}
            ours = [x for x in seen if x["target"] == f"{HOST}:{web.port}"]
            assert len(ours) >= 2 and {x["status"] for x in ours} == {200}, seen

            # the password: nowhere a sandbox process, its log or its browser policy shows it
            pids = SandboxProcesses(spec.slot.netns).scan()
            assert len(pids) >= 5
            for pid in pids:
                for what in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{what}").read_bytes()
                    except OSError:
                        continue
                    assert SECRET.encode() not in data, (pid, what)
            log = driver.log_path(spec).read_bytes()
            assert SECRET.encode() not in log and b"local egress proxy listening" in log
            policy = (spec.workdir / "chromium-etc" / "policies" / "managed" / "hearth.json").read_text()
            assert (
                SECRET not in policy and json.loads(policy)["ProxySettings"]["ProxyServer"] == "http://127.0.0.1:3128"
            )
        finally:
            await driver.destroy(spec)
            proxy.terminate()
            await asyncio.wait_for(proxy.wait(), 10)


async def _ok(body: Any) -> Any:
    got = await body
    return got if got["ok"] else None


async def _true(value: bool) -> bool | None:
    return True if value else None
