"""A controller run as its own process and restarted under live sessions — shared by bench/restart.py and the tests
(tests/lifecycle/test_restart*.py, tests/session/test_pool_restart.py, tests/reconcile/test_crash_recovery.py, …,
through tests/restartkit.py). It lives in bench/: benchmarks never import from tests/.

The controller is a real separate process (`python -m hearth serve`), stopped with SIGTERM or SIGKILL and started
again on the same data dir and store. Sessions: desktops (Xvfb + x11vnc, no Chromium, to fit the shared machine)
and one direct-mode sign-in with the `example` provider, whose IdP listens inside the fabric namespace; the person's
own browser is played by plain HTTP requests from a socket in that namespace (the only stand-in).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import signinkit
from hearth.config import Settings
from hearth.fabric import netlink
from hearth.fabric.fabric import Fabric
from hearth.reconcile.inventory import scan_sync
from hearth.rfb.ws import first_frame
from hearth.sandbox.loopback import pids_under as loopback_pids
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SandboxRow
from hearth_example.idp import IdpServer, IdpState

IDP_PORT = 9407


def _loopback_env(settings: Settings) -> dict[str, str]:
    """The loopback driver's settings (tests without root: hearth/sandbox/loopback.py), when `settings` use it."""
    if settings.driver != "loopback":
        return {}
    return {
        "HEARTH_DRIVER": "loopback",
        "HEARTH_ALLOW_UNISOLATED": "1",
        "INTERNAL_NETWORK": str(settings.internal_network),
        "HEARTH_SIGNIN_MODE": settings.signin_mode,
    }


def controller_env(settings: Settings, sessions: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update(
        HEARTH_FABRIC_NETNS=settings.fabric_netns,
        HEARTH_DATA_DIR=str(settings.data_dir),
        HEARTH_IMAGE_DIR=str(settings.images),  # the image the settings name (a bench: this host's, as hearth serve)
        HEARTH_DATABASE_URL=settings.database_url,
        HEARTH_API_LISTEN=settings.api_listen,
        HEARTH_API_KEYS=",".join(settings.api_keys),
        HEARTH_DRIVER="netns",
        HEARTH_CHROMIUM="false",
        HEARTH_EGRESS=str(settings.egress).lower(),  # tests: false (an uplink only ever in a namespace of theirs)
        **signinkit.idp_env(IDP_PORT, str(settings.bridge_ip)),
        MAX_BROWSER_SESSIONS=str(sessions + 5),
        MAX_SESSIONS_PER_USER=str(sessions + 5),
        HEARTH_RATE_LIMIT="0",
    )
    env.update(_loopback_env(settings))
    env.update(extra or {})  # e.g. another driver (tests/lifecycle/test_restart_qemu.py), a reconcile interval
    return env


@dataclass
class Controller:
    """One `hearth serve` process at a time on the same data dir; `stop(sig)` then `start()` restarts it."""

    settings: Settings
    log: Path
    sessions: int
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        host, port = self.settings.listen_host_port
        return f"http://{host}:{port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_keys[0]}"}

    def start(self, timeout: float = 60, drain: bool = False) -> float:
        """Start it (`--drain`: its stop ends every sandbox) and wait until it answers /health; returns the monotonic
        time it did."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hearth", "serve", *(["--drain"] if drain else [])],
            env=controller_env(self.settings, self.sessions, self.extra_env),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.settings.data_dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"controller exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("controller never became healthy")

    def stop(self, sig: signal.Signals, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_idp(settings: Settings) -> tuple[IdpServer, IdpState]:
    """The example IdP on BRIDGE_IP inside the fabric namespace; device codes are approved by `approve_device`."""
    return signinkit.start_idp(settings, IDP_PORT, auto_approve=False)


def approve_device(settings: Settings, user_code: str) -> int:
    """The person approves the device code in their own browser (a form POST to the IdP, from inside the fabric)."""
    url = f"{signinkit.issuer(IDP_PORT, str(settings.bridge_ip))}/device/approve"
    status, _, _ = signinkit.browse(settings.dial_netns, url, {"user_code": user_code})
    return status


@dataclass
class Fleet:
    desktops: dict[str, str] = field(default_factory=dict)  # session id → viewer token
    signin: str = ""
    user_code: str = ""


async def wait_body(http: httpx.AsyncClient, sid: str, ok: tuple[str, ...], timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            body = (await http.get(f"/api/auth/session/{sid}")).json()
        except httpx.HTTPError:
            body = {}
        if body.get("status") in ok or body.get("status") in ("failed", "cancelled", "expired", "completed"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {sid} not {ok} within {timeout:.0f}s; last {body}")


async def start_fleet(http: httpx.AsyncClient, desktops: int) -> Fleet:
    """`desktops` ready desktop sessions and one direct sign-in waiting for the person (device code shown)."""
    fleet = Fleet()
    for i in range(desktops):
        r = await http.post("/api/auth/start", json={"user_id": f"desk{i}"})
        assert r.status_code == 201, r.text
        fleet.desktops[r.json()["session_id"]] = r.json()["viewer_token"]
    r = await http.post("/api/auth/start", json={"user_id": "signer", "provider": "example", "mode": "direct"})
    assert r.status_code == 201, r.text
    fleet.signin = r.json()["session_id"]
    for sid in fleet.desktops:
        body = await wait_body(http, sid, ("ready",))
        assert body["status"] == "ready", body
    fleet.user_code = str((await wait_prompt(http, fleet.signin))["user_code"])
    return fleet


async def wait_prompt(http: httpx.AsyncClient, sid: str, timeout: float = 120) -> dict[str, object]:
    """Poll until the direct sign-in `sid` shows the person a device code (while it stays live); returns what the
    API shows (`signin`)."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        shown = body.get("signin")
        if isinstance(shown, dict) and shown.get("user_code"):
            return shown
        assert body.get("status") in ("starting", "ready", "awaiting_user"), body
        assert time.monotonic() < deadline, f"no sign-in prompt within {timeout:.0f}s; last {body}"
        await asyncio.sleep(0.1)


async def viewer_frames(ws_base: str, fleet: Fleet, timeout: float = 60) -> dict[str, float]:
    """Each desktop's viewer connects and gets a full frame (retrying while the controller comes up): the seconds
    from the call to each first frame."""
    t0 = time.monotonic()

    async def one(sid: str, token: str) -> float:
        url = f"{ws_base}/api/auth/session/{sid}/novnc/websock?token={token}"
        deadline = t0 + timeout
        delay = 0.05
        while True:
            try:
                frame = await first_frame(url, timeout=10)
                assert frame.rects, "a frame with no rectangles"
                return time.monotonic() - t0
            except (OSError, TimeoutError, ConnectionError, EOFError, asyncio.IncompleteReadError, Exception):
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    times = await asyncio.gather(*(one(sid, tok) for sid, tok in fleet.desktops.items()))
    return dict(zip(fleet.desktops, times, strict=True))


def sandbox_pids(settings: Settings) -> list[int]:
    """Processes living in any of this fabric's sandbox namespaces (compared by namespace inode); with the loopback
    driver, its agents under this data dir and their process sessions (`hearth.sandbox.loopback.sandbox_pids`)."""
    if settings.dial_netns is None:
        return sorted(loopback_pids(settings.data_dir))
    inodes = set()
    for name in netlink.list_netns():
        if name.startswith(f"{settings.fabric_netns}-s"):
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino in inodes:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_leftovers(settings: Settings) -> None:
    """Test teardown: SIGKILL what still lives in this test's own sandbox namespaces (found by namespace)."""
    for pid in sandbox_pids(settings):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_everything(settings: Settings) -> None:
    """Test teardown: what still lives in this fabric's sandbox namespaces is killed, the fabric taken down and the
    sandbox namespaces removed."""
    kill_leftovers(settings)
    if settings.dial_netns is None:
        return  # the loopback driver: no fabric, no namespaces
    asyncio.run(Fabric(settings).down(force=True))
    for name in netlink.list_netns():
        if name.startswith(f"{settings.fabric_netns}-s"):
            netlink.remove_netns(name)


def assert_nothing_left(settings: Settings, db: Database) -> None:
    """After the last controller stopped with every session ended: no sandbox slot, lease or sandbox row is left."""
    inv = scan_sync(settings)
    assert inv.slots() == set(), inv
    assert db.call(lambda d: d.query(LeaseRow).count()) == 0
    assert db.call(lambda d: d.query(SandboxRow).count()) == 0
