"""Fixtures for the doctor's fault-injection tests: one real controller and one real session per test class,
wired the way the lead wires production (`install(ctl)` for verdicts, the diagnostics router on the app).

Faults are injected for real inside the test's own namespaces (`hearth-t<hex>…`) and repaired by each test; a test
first waits until the whole path is healthy again, so a repair that did not work fails loudly in the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings, load_settings
from hearth.doctor import Report, diagnose
from hearth.doctor.probes import Proc, processes_in
from hearth.errors import HearthError, Hop
from hearth.fabric import netlink, nftrun
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import Slot
from hearth.serving.local import free_port
from tests import nsnames
from tests.conftest import Running, running_controller
from tests.image.golden import TESTS_BASE
from tests.waits import eventually, eventually_sync

T = TypeVar("T")
DATA_ROOT = TESTS_BASE


def new_env(**extra: str) -> tuple[dict[str, str], Path]:
    """Environment for an isolated instance (own fabric namespace, data dir and port) and its data dir."""
    DATA_ROOT.mkdir(mode=0o711, exist_ok=True)
    data = DATA_ROOT / f"doctor-{secrets.token_hex(4)}"
    data.mkdir(mode=0o711)
    env = {
        "HEARTH_FABRIC_NETNS": nsnames.new(),
        "HEARTH_DATA_DIR": str(data),
        "HEARTH_API_LISTEN": f"127.0.0.1:{free_port()}",
        "HEARTH_API_KEYS": "test-key",
        "HEARTH_DRIVER": "netns",
        "HEARTH_READY_TIMEOUT": "60",
        "HEARTH_CHROMIUM": "false",  # the browser plays no part in any fault here
        "HEARTH_EGRESS": "false",  # egress tests give HEARTH_UPLINK_NETNS (never an uplink in the root namespace)
        **extra,
    }
    return env, data


@dataclass
class Case:
    """The doctor's case: one controller with one ready session, its HTTP client and the environment the doctor's
    CLI runs with (a session alone is `tests.live.Live`)."""

    env: dict[str, str]
    run: Running
    http: httpx.AsyncClient
    session_id: str
    slot: Slot

    @property
    def settings(self) -> Settings:
        return self.run.settings

    @property
    def ctl(self) -> Any:
        return self.run.ctl

    @property
    def fabric(self) -> str:
        return self.settings.fabric_netns

    @property
    def ip(self) -> str:
        return str(self.slot.ip)

    async def report(self) -> Report:
        rep = await diagnose(self.ctl, self.session_id)
        f = rep.first_failure  # printed: pytest shows it when a test fails
        print(f"doctor {rep.duration_s:.3f}s: " + (f"[{f.hop}] {f.name}: {f.evidence} — fix: {f.hint}" if f else "ok"))
        return rep

    async def wait_healthy(self, timeout: float = 45.0) -> Report:
        """Until the whole path passes (advisories may still fail, e.g. a full pool)."""

        async def healthy() -> Report:
            rep = await self.report()
            on_path = [c for c in rep.checks if c.failed and c.name not in ("pool",)]
            assert not on_path, on_path[0]  # the last observation, should it time out
            return rep

        return await eventually(healthy, timeout, "the path healthy", interval=0.25)

    async def viewer_close(self, timeout: float = 30) -> tuple[int, str]:
        """Open the viewer WebSocket and return the close code and reason the gateway sends."""
        tok = (await self.http.post(f"/api/auth/session/{self.session_id}/token", json={"scope": "view"})).json()
        url = f"{self.run.ws_base}/api/auth/session/{self.session_id}/novnc/websock?token={tok['viewer_token']}"
        async with ws_connect(url, subprotocols=["binary"]) as ws:  # type: ignore[list-item]
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), timeout)
            assert ws.close_code is not None
            return ws.close_code, ws.close_reason or ""

    def cli(self, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """`hearth doctor --json …` as a separate process beside the controller (cwd without a .env)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "VM_", "IP_POOL", "BRIDGE"))}
        env.update(self.env)
        env.update(extra_env or {})
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(
            [sys.executable, "-m", "hearth.cli.doctor", "--json", *args],
            cwd=self.settings.data_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout.strip(), done.stderr
        return done.returncode, json.loads(done.stdout)


@contextlib.asynccontextmanager
async def live_session(**extra: str) -> AsyncIterator[Case]:
    env, data = new_env(**extra)
    settings = load_settings(env, env_file=None)
    try:
        async with (
            running_controller(settings) as run,  # the app wires the doctor in, as in production
            httpx.AsyncClient(base_url=run.base_url, headers=run.headers, timeout=30) as http,
        ):
            r = await http.post("/api/auth/start", json={"user_id": "doctor"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            view = await run.ctl.service.wait_until(sid, 90)
            assert view.status.value == "ready", view
            assert view.slot is not None
            live = Case(env, run, http, sid, run.ctl.service.ipam.slot(view.slot))
            try:
                yield live
            finally:
                with contextlib.suppress(Exception):
                    await http.post(f"/api/auth/session/{sid}/cancel")
    finally:
        shutil.rmtree(data, ignore_errors=True)


# ---- fault helpers: every one acts inside a namespace the test created ---------------------------------------
async def in_ns(netns: str, fn: Callable[[Any], T]) -> T:
    """`fn(pyroute2 handle)` inside `netns`, on a worker thread."""

    def work() -> T:
        with netlink.ns(netns) as h:
            return fn(h)

    return await asyncio.to_thread(work)


async def write_sysctl(netns: str, path: str, value: str) -> None:
    await asyncio.to_thread(call_in_netns, netns, lambda: Path("/proc/sys", path).write_text(value))


async def nft_json(netns: str, payload: dict[str, Any]) -> None:
    """Any nftables JSON transaction inside `netns` (tests may touch tables that hearth itself never writes)."""
    proc = await asyncio.create_subprocess_exec(
        *nftrun.argv(netns, "-f", "-"), stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), 20)
    assert proc.returncode == 0, err.decode()


async def nft_list(netns: str, *what: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *nftrun.argv(netns, "list", *what), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    items: list[dict[str, Any]] = json.loads(out)["nftables"]
    return items


async def sandbox_proc(live: Case, match: Callable[[Proc], bool], timeout: float = 20.0) -> Proc:

    async def found() -> Proc | None:
        return next((p for p in await asyncio.to_thread(processes_in, live.slot.netns) if match(p)), None)

    return await eventually(found, timeout, "the sandbox process", interval=0.1)


def is_agent(p: Proc) -> bool:
    return p.comm.startswith("python") and "hearth_agent" in p.cmdline


def is_vnc_server(p: Proc) -> bool:
    """The sandbox's VNC server: Xvnc (the default; the X display too) or x11vnc (HEARTH_VNC_SERVER=x11vnc)."""
    return p.comm in ("Xvnc", "x11vnc")


def resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def bind_blocker(netns: str, ip: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A socket bound (not listening, no SO_REUSEADDR) to ip:port inside `netns`: connections there are refused
    and no server can take the port until it is closed."""

    def bound() -> socket.socket:
        sock = call_in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            sock.bind((ip, port))
        except OSError:
            sock.close()
            raise  # not yet (the port still taken): asked again
        return sock

    return eventually_sync(bound, timeout, f"a socket bound to {ip}:{port} in {netns}", interval=0.02)


def first(rep: Report) -> Any:
    f = rep.first_failure
    assert f is not None, f"expected a failure, all passed: {rep.as_dict()}"
    return f


def assert_verdict(err: HearthError | None, hop: Hop) -> None:
    assert err is not None and err.hop is hop, err
    assert err.reason.startswith(f"[{hop.value}]")
