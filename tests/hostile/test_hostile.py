"""The sandbox is hostile: attacks run from inside live sandboxes against a real controller, each with the refusal
it must meet, and the controller still streams another session afterwards.

Attacks the browser's user could make run as that user: `nsenter` into the sandbox's network namespace, `setpriv`
to the sandbox uid, then the system python with a script (`as_sandbox_user`). Attacks that need root in the
sandbox's network namespace (a VM guest is root in its own) use sockets the test creates in that namespace. Where an
attack needs the agent's secret (a compromised agent), the test takes it from the controller, as the agent would
hold it. A is the attacker, B the victim / bystander, C a session that has ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import subprocess
from collections.abc import Callable

import httpx
import pytest

from hearth.agentlink.client import http_json
from hearth.config import Settings
from hearth.errors import Hop
from hearth.fabric import netlink
from hearth.fabric.dial import open_connection, socket_in_netns
from hearth.fabric.ports import GUEST_IFNAME
from hearth.rfb.ws import first_frame
from hearth.sandbox.netns import pids_in_netns
from hearth.session.states import Status
from hearth.signin.callbacks import MAX_EVENTS
from hearth.vault.store import CredentialFile
from tests.conftest import running_controller
from tests.gateway.test_viewers import FRAME_REQUEST, INPUT, frame_of, open_viewer
from tests.live import Live, rss_kib, start_ready
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def as_sandbox_user(settings: Settings, live: Live, script: str, *args: str, timeout: float = 120) -> dict[str, object]:
    """Run `script` (system python, stdlib only) as `live`'s own uid inside its namespace; stdout: one JSON object."""
    uid = settings.sandbox_uid_base + 2 * live.slot  # the slot's uid (hearth/sandbox/netns.py)
    argv = [
        "nsenter", f"--net=/run/netns/{live.netns}", "--",
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--no-new-privs", "--", "/usr/bin/python3", "-I", "-c", script, *args,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/")
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


READ_SECRET = r"""
import glob, json, os, sys
pid, workdir = sys.argv[1], sys.argv[2]
got = {}
for path in [f"/proc/{pid}/environ", f"/proc/{pid}/mem", f"/proc/{pid}/fd", *glob.glob(workdir + "/**", recursive=True)]:
    try:
        if os.path.isdir(path):
            got[path] = "listed: " + ",".join(os.listdir(path))
        else:
            with open(path, "rb") as f:
                got[path] = f.read(1 << 16).decode("latin-1")
    except OSError as exc:
        got[path] = f"refused: {type(exc).__name__}"
print(json.dumps(got))
"""

CALLBACK_FLOOD = r"""
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# A chunked body of 400 MiB.
s = socket.create_connection((host, port), timeout=10)
sent, answer = 0, b""
try:
    s.sendall(b"POST /agent/v1/sessions/x/credentials HTTP/1.1\r\nHost: cb\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"A" * (1 << 20))
    for _ in range(400):
        s.sendall(chunk)
        sent += len(chunk)
except OSError:
    pass
try:
    answer = s.recv(100)
except OSError:
    answer = b"(reset)"
s.close()
# Then n idle connections.
idle, closed = [], 0
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        idle.append(s)
    except OSError:
        closed += 1
# Which of them did the server close at once (EOF or reset)?
time.sleep(0.5)
for s in idle:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"opened": n, "closed_by_server": closed, "chunked_sent": sent, "answer": answer.decode("latin-1")}))
"""


def forged_arp(netns: str, claim_ip: str, target_ip: str, count: int = 5) -> str:
    """As root in `netns`: gratuitous ARP replies saying `claim_ip` is at this namespace's MAC; returns that MAC."""
    s = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        s.bind((GUEST_IFNAME, 0x0806))
        mac = s.getsockname()[4][:6]
        body = struct.pack(
            "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, socket.inet_aton(claim_ip), b"\xff" * 6,
            socket.inet_aton(target_ip),
        )  # fmt: skip
        for _ in range(count):
            s.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + body)
        return str(mac.hex(":"))
    finally:
        s.close()


def neighbour(fabric: str, bridge: str, ip: str) -> tuple[str, int]:
    with netlink.ns(fabric) as h:
        for n in h.get_neighbours(ifindex=netlink.link_index(h, bridge)):
            if netlink.attr(n, "NDA_DST") == ip:
                return str(netlink.attr(n, "NDA_LLADDR")), int(n["state"])
    return "", 0


async def rfb_banner(settings: Settings, ip: str) -> bytes:
    reader, writer = await open_connection(settings.fabric_netns, ip, settings.rfb_port, 5)
    try:
        return await asyncio.wait_for(reader.readexactly(12), 5)
    finally:
        writer.close()


async def push(settings: Settings, live: Live, secret: str, kind: str, body: object) -> int:
    """A push from inside `live`'s namespace, as its agent would send it."""
    path = f"/agent/v1/sessions/{live.session_id}/{kind}"
    status, _ = await http_json(
        live.netns, str(settings.bridge_ip), settings.callback_port, "POST", path, 10, body, secret
    )
    return status


async def test_hostile_sandbox(make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_KEEP_FAILED="true", HEARTH_SCREEN="640x400x24")
    s = settings
    caplog.set_level(logging.WARNING)
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        service = ctl.ctl.service
        a = await start_ready(http, s, "attacker")
        b = await start_ready(http, s, "victim")
        c = await start_ready(http, s, "ended")
        secret_a, secret_b, secret_c = (service.secret_of(x.session_id) or "" for x in (a, b, c))
        assert secret_a and secret_b and secret_c

        # 1. The agent's secret, from the browser's user: no file holds it, the agent's /proc is closed.
        def is_agent(pid: int) -> bool:
            """The agent itself (python3 … -m hearth_agent, whatever interpreter flags it is started with), not its
            bubblewrap launcher, whose argv names it too."""
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            m = argv.index(b"-m") if b"-m" in argv else 0
            flags = argv[1:m]
            return (
                argv[0] == b"/usr/bin/python3"
                and m > 0
                and argv[m + 1] == b"hearth_agent"
                and all(f.startswith(b"-") for f in flags)
            )

        agent = next(p for p in await asyncio.to_thread(pids_in_netns, a.netns) if is_agent(p))
        uids = {
            x.slot: {os.stat(f"/proc/{p}").st_uid for p in await asyncio.to_thread(pids_in_netns, x.netns)}
            for x in (a, b)
        }
        print(f"\n0. uids: A {uids[a.slot]}, B {uids[b.slot]}")
        assert len(uids[a.slot]) == 1 and uids[a.slot].isdisjoint(uids[b.slot]), "two sandboxes share a uid"
        workdir = str(s.data_dir / "sandboxes" / a.netns)
        seen = await asyncio.to_thread(as_sandbox_user, s, a, READ_SECRET, str(agent), workdir)
        print(f"\n1. secret: {len(seen)} paths tried as uid {s.sandbox_uid_base + 2 * a.slot}; e.g. /proc/{agent}/mem → "
              f"{seen[f'/proc/{agent}/mem']}, /proc/{agent}/environ → {seen[f'/proc/{agent}/environ']}")  # fmt: skip
        assert all(secret_a not in str(v) for v in seen.values()), "the sandbox user read the agent secret"
        for what in ("mem", "environ", "fd"):
            assert str(seen[f"/proc/{agent}/{what}"]).startswith("refused"), seen[f"/proc/{agent}/{what}"]

        # 2. Forged ARP: A (root in its namespace, like a VM guest) claims B's address.
        before = await asyncio.to_thread(neighbour, s.fabric_netns, s.bridge_device, b.sandbox_ip)
        forger = await asyncio.to_thread(forged_arp, a.netns, b.sandbox_ip, str(s.bridge_ip))
        after = await asyncio.to_thread(neighbour, s.fabric_netns, s.bridge_device, b.sandbox_ip)
        print(f"2. ARP: A ({forger}) claimed {b.sandbox_ip}; fabric neighbour before {before}, after {after}")
        assert after == before and after[0] != forger and after[1] & 0x80, "B's neighbour entry moved / not permanent"
        assert (await rfb_banner(s, b.sandbox_ip)).startswith(b"RFB "), "delivery to B's address no longer reaches B"
        # The doctor blames the port that sent the forged frames: B's report is clean (A's drops named as another
        # port's), A's report fails naming them.
        report = (await http.get(f"/api/diagnostics/{b.session_id}")).json()
        layer2 = next(ch for ch in report["checks"] if ch["name"] == "layer 2")
        print(f"   doctor (B): {layer2['evidence']}")
        assert layer2["ok"] is True and layer2["data"]["arp_spoof"] == 0 and layer2["data"]["other_ports"] >= 1
        report = (await http.get(f"/api/diagnostics/{a.session_id}")).json()
        layer2 = next(ch for ch in report["checks"] if ch["name"] == "layer 2")
        print(f"   doctor (A): {layer2['evidence']}")
        assert layer2["ok"] is False and layer2["data"]["arp_spoof"] >= 1

        # 3. Events flood with A's secret (a compromised agent): capped per session.
        statuses = []
        for _ in range(MAX_EVENTS + 10):  # paced under the per-sandbox request rate: the budget is what is tested
            statuses.append(await push(s, a, secret_a, "events", {"event": "spam", "detail": "x" * 200}))
            await asyncio.sleep(0.06)
        events = (await http.get(f"/api/auth/session/{a.session_id}/events")).json()
        stored = len(json.dumps(events))
        print(f"3. events: {statuses.count(200)} accepted, {statuses.count(409)} refused; /events {stored} bytes")
        assert statuses.count(200) <= MAX_EVENTS and statuses[-1] == 409 and 429 not in statuses
        assert stored < 200_000

        # 4. Push after the session ended (kept failed: its sandbox and secret still exist) → refused, and the
        #    user's stored credential is untouched.
        good = [CredentialFile(".example/credentials.json", 0o600, b'{"access_token": "good"}')]
        await ctl.ctl.vault.put("ended", "example", good, None)
        await service.end(c.session_id, Status.FAILED, "test: ended for the hostile suite", Hop.DRIVER)
        forged = {"provider": "example", "files": [{"target": ".example/credentials.json", "mode": 384,
                                                    "data_b64": "eyJhY2Nlc3NfdG9rZW4iOiAiZXZpbCJ9"}]}  # fmt: skip
        status = await push(s, c, secret_c, "credentials", forged)
        print(f"4. push after end: HTTP {status}")
        assert status == (409 if service.secret_of(c.session_id) else 404)
        assert await ctl.ctl.vault.open("ended", "example") == good

        # 5. 250 idle connections + a chunked 400 MiB body from A, as the browser's user; B's pushes still work.
        rss0 = rss_kib()
        flood = asyncio.create_task(
            asyncio.to_thread(as_sandbox_user, s, a, CALLBACK_FLOOD, str(s.bridge_ip), str(s.callback_port), "250")
        )
        pushes = []
        while not flood.done():
            pushes.append(await push(s, b, secret_b, "events", {"event": "still-here"}))
            await asyncio.sleep(0.2)
        result = await flood
        rss1 = rss_kib()
        print(f"5. flood: {result}; B's pushes meanwhile: {pushes}; controller RSS {rss0 // 1024} → {rss1 // 1024} MiB")
        assert int(str(result["closed_by_server"])) >= 250 - 8
        assert int(str(result["chunked_sent"])) < 400 * ((1 << 20) + 10)
        assert pushes and set(pushes) == {200}, pushes
        assert rss1 - rss0 < 64 * 1024, "the controller's memory grew with the flood"
        assert any("cut off" in r.getMessage() and getattr(r, "source", "") == a.sandbox_ip for r in caplog.records)

        # 5b. A view-only token sending input with 3.3 and 3.7 handshakes: no input byte reaches B's VNC server.
        r = await http.post(f"/api/auth/session/{b.session_id}/token", json={"scope": "view"})
        view_token = r.json()["viewer_token"]
        registry = service.metrics.registry

        def to_sandbox() -> float:
            return registry.get_sample_value("hearth_gateway_bytes_total", {"direction": "to_sandbox"}) or 0.0

        def counted_since(start: float) -> Callable[[], bool]:  # the frame request relayed (messages keep order)
            return lambda: to_sandbox() - start >= FRAME_REQUEST

        for banner in (b"RFB 003.003\n", b"RFB 003.007\n"):
            ws, stream, init = await open_viewer(b.ws_url(ctl, view_token), banner)
            try:
                start = to_sandbox()
                await stream.write(INPUT * 10)
                assert await frame_of(stream, init, 16, 16) > 0
                await eventually(counted_since(start), 15, "the frame request relayed")
                relayed = to_sandbox() - start - FRAME_REQUEST
            finally:
                await ws.close()
            print(f"5b. view token, {banner!r}: {len(INPUT) * 10} input bytes sent, {relayed:.0f} relayed")
            assert relayed == 0

        # 6. The controller still streams B.
        frame = await first_frame(b.ws_url(ctl))
        print(f"6. B streamed after all that: {len(frame.rects)} rect(s), non-blank {frame.non_blank}")
        assert frame.rects
