"""The namespace driver over real namespaces, processes and sockets: start → agent /health → RFB banner → the agent
restarts what dies → open-url → destroy leaves nothing; failed starts leave nothing either."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Collection
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hearth.config import Settings
from hearth.errors import DriverError
from hearth.fabric import netlink
from hearth.fabric.dial import open_connection, socket_in_netns
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.procs import SandboxProcesses, pids_in_netns
from hearth.sandbox.workdir import remove_workdir
from hearth_agent.policy import POLICY
from tests.live import descendants
from tests.sandbox.specs import spec_for
from tests.waits import eventually

pytestmark = [pytest.mark.netns]
T = TypeVar("T")
SERVICES = ("xvnc", "openbox", "chromium")  # the default desktop (HEARTH_VNC_SERVER=xvnc)


async def http(
    settings: Settings, spec: SandboxSpec, method: str, path: str, body: Any = None, secret: str | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.0 request to the sandbox's agent, from inside the fabric namespace."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.0", f"Host: {spec.slot.ip}", f"Content-Length: {len(payload)}"]
    if secret is not None:
        head.append(f"Authorization: Bearer {secret}")
    reader, writer = await open_connection(settings.fabric_netns, str(spec.slot.ip), spec.agent_port, 3)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    status, _, rest = raw.partition(b"\r\n\r\n")
    return int(status.split()[1]), rest


async def health(settings: Settings, spec: SandboxSpec) -> dict[str, Any]:
    status, raw = await http(settings, spec, "GET", "/health")
    assert status == 200
    assert spec.secret.encode() not in raw
    body: dict[str, Any] = json.loads(raw)
    return body


async def rfb_banner(settings: Settings, spec: SandboxSpec) -> bytes:
    reader, writer = await open_connection(settings.fabric_netns, str(spec.slot.ip), spec.rfb_port, 3)
    try:
        return await asyncio.wait_for(reader.readexactly(12), 5)
    finally:
        writer.close()


def host_pid(netns: str, ns_pid: int) -> int:
    """The host PID of the sandbox process the agent reports as `ns_pid` (PID inside the sandbox's namespace)."""
    for pid in pids_in_netns(netns):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and len(line.split()) > 2 and int(line.split()[-1]) == ns_pid:
                    return pid
    raise AssertionError(f"no sandbox process with PID {ns_pid} in its namespace")


def leftovers(settings: Settings, spec: SandboxSpec, pids: Collection[int] = ()) -> list[str]:
    found = []
    if netlink.netns_exists(spec.slot.netns):
        found.append(f"netns {spec.slot.netns}")
    with netlink.ns(settings.fabric_netns) as fab:
        if netlink.link_index(fab, spec.slot.veth_host) is not None:
            found.append(f"veth {spec.slot.veth_host}")
    if spec.workdir.exists():
        found.append(f"dir {spec.workdir}")
    found += [f"pid {p}" for p in pids if os.path.exists(f"/proc/{p}/ns/net")]
    return found


@contextlib.asynccontextmanager
async def fabric_web(settings: Settings) -> AsyncIterator[list[str]]:
    """An HTTP server on BRIDGE_IP:callback_port inside the fabric namespace; yields the request paths it saw."""
    seen: list[str] = []
    sock = await asyncio.to_thread(socket_in_netns, settings.fabric_netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((str(settings.bridge_ip), settings.callback_port))
    sock.listen(16)
    sock.setblocking(False)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            seen.append(line.decode().split()[1])
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass
            page = b"<html><title>hearth test</title><body>hello</body></html>"
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(page) + page)
            await writer.drain()
        except (OSError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


def all_running(body: dict[str, Any], restarts: dict[str, int] | None = None) -> dict[str, Any] | None:
    services = body["services"]
    if not body["ok"] or any(services[n]["state"] != "running" for n in SERVICES):
        return None
    if restarts and any(services[n]["restarts"] != r for n, r in restarts.items()):
        return None
    return body


@pytest.mark.slow
async def test_desktop_lifecycle(fabric_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    s = fabric_settings
    monkeypatch.setenv("HEARTH_TEST_CANARY", "controller-secret-canary")
    start_path = "/start-" + secrets.token_hex(4)
    spec = spec_for(s, 3, start_url=f"http://{s.bridge_ip}:{s.callback_port}{start_path}")
    driver = NetnsDriver(s)
    marks: list[tuple[str, float]] = []
    seen_pids: set[int] = set()
    async with fabric_web(s) as web:
        try:
            t0 = time.monotonic()
            info = await driver.start(spec, lambda stage: marks.append((stage, time.monotonic() - t0)))
            t_started = time.monotonic() - t0
            assert [m for m, _ in marks] == ["namespace", "process"]
            assert info.details["netns"] == spec.slot.netns and info.pid > 0
            assert await driver.alive(spec)

            async def ready() -> dict[str, Any] | None:
                return all_running(await health(s, spec))

            body = await eventually(ready, 60, "all services running")
            t_health = time.monotonic() - t0
            assert await rfb_banner(s, spec) == b"RFB 003.008\n"
            t_rfb = time.monotonic() - t0
            assert body["display"].startswith(":") and body["uptime"] > 0
            assert set(body["services"]) == set(SERVICES)
            await eventually(lambda: _true(start_path in web), 30, "chromium loading start_url")
            t_page = time.monotonic() - t0
            print(
                f"\ntimings: namespace {marks[0][1]:.2f}s, agent listening {marks[1][1]:.2f}s, start() {t_started:.2f}s,"
                f" health all-running {t_health:.2f}s, RFB banner {t_rfb:.2f}s, start_url fetched {t_page:.2f}s"
            )

            # unprivileged, and nothing of the controller's environment inside
            procs = SandboxProcesses(spec.slot.netns)
            seen_pids |= set(procs.scan())
            assert len(seen_pids) >= 6, seen_pids
            for pid in seen_pids:
                assert os.stat(f"/proc/{pid}").st_uid == driver.ids(spec)[0] == s.sandbox_uid_base + 2 * 3
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                assert b"controller-secret-canary" not in environ and spec.secret.encode() not in environ

            # Chromium runs with its own sandbox (seccomp-bpf renderers, no --no-sandbox) and hearth's managed
            # policies, root-owned and read-only inside the sandbox.
            argvs = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in procs.scan()}
            chromium = [pid for pid, argv in argvs.items() if argv[0].endswith(b"chromium")]
            assert chromium and not any(b"--no-sandbox" in argvs[pid] for pid in chromium)
            # Renderers live in namespaces of their own (Chromium's sandbox): found as the browser's descendants.
            family = set().union(*(descendants(pid) for pid in chromium))
            renderers = [pid for pid in family if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            assert renderers and all("Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text() for pid in renderers), (
                "renderers without seccomp: Chromium's sandbox is off"
            )
            policy = Path(f"/proc/{chromium[0]}/root/etc/chromium/policies/managed/hearth.json")
            assert json.loads(policy.read_text()) == POLICY
            assert policy.stat().st_uid == 0 and stat.S_IMODE(policy.stat().st_mode) == 0o644

            # Xvnc (display and VNC server) dies → it and everything drawn on it restart; the banner comes back
            os.kill(host_pid(spec.slot.netns, body["services"]["xvnc"]["pid"]), signal.SIGKILL)
            want = {"xvnc": 1, "openbox": 1, "chromium": 1}
            body = await eventually(lambda: _all(health(s, spec), want), 30, "desktop restarted after Xvnc died")
            assert await eventually(lambda: rfb_banner(s, spec), 10, "banner after Xvnc restart") == b"RFB 003.008\n"

            # open-url: refused without / with a wrong secret, opened in the running chromium with the right one
            url = {"url": f"http://{s.bridge_ip}:{s.callback_port}/opened"}
            assert (await http(s, spec, "POST", "/v1/open-url", url))[0] == 401
            assert (await http(s, spec, "POST", "/v1/open-url", url, secret="wrong-" + spec.secret))[0] == 401
            assert (await http(s, spec, "POST", "/v1/open-url", url, secret=spec.secret))[0] == 200
            await eventually(lambda: _true("/opened" in web), 30, "chromium opening the URL")

            log_text = (spec.workdir / "logs" / "agent.log").read_text()
            assert spec.secret not in log_text and '"service ready"' in log_text
            seen_pids |= set(procs.scan())
        finally:
            t_destroy = time.monotonic()
            await NetnsDriver(s).destroy(spec)  # a fresh driver: no in-memory state, as after a controller crash
            t_destroy = time.monotonic() - t_destroy
    print(f"destroy {t_destroy:.2f}s")
    assert await asyncio.to_thread(leftovers, s, spec, seen_pids) == []
    assert not await driver.alive(spec)
    await driver.destroy(spec)  # again: already gone is success
    assert t_destroy < 10


async def _true(cond: bool) -> bool | None:
    return True if cond else None


async def _all(body: Awaitable[dict[str, Any]], restarts: dict[str, int]) -> dict[str, Any] | None:
    return all_running(await body, restarts)


class BadConfigDriver(NetnsDriver):
    def agent_config(self, spec: SandboxSpec) -> dict[str, Any]:
        return {**super().agent_config(spec), "screen": "huge"}


@pytest.mark.parametrize("case", ["agent-config", "launcher"])
async def test_failed_start_leaves_nothing(fabric_settings: Settings, case: str) -> None:
    s = fabric_settings
    spec = spec_for(s, 5)
    driver = BadConfigDriver(s) if case == "agent-config" else NetnsDriver(s, bwrap="false")
    marks: list[str] = []
    t0 = time.monotonic()
    try:
        with pytest.raises(DriverError) as err:
            await driver.start(spec, marks.append)
        elapsed = time.monotonic() - t0
        assert marks == ["namespace"]
        assert "during start" in err.value.message
        if case == "agent-config":
            assert "screen must look like" in err.value.message  # the agent's own words, from its log
        assert spec.secret not in err.value.reason
        print(f"failed start noticed after {elapsed:.2f}s")  # the message says "during start": no timeout
        assert await asyncio.to_thread(leftovers, s, spec) == []
        assert not await driver.alive(spec)
    finally:
        await driver.destroy(spec)


@pytest.mark.slow
async def test_agent_only_sandbox_keeps_its_home(fabric_settings: Settings) -> None:
    """A CLI sandbox: no display, a persistent home that outlives destroy; a restart replaces leftovers."""
    s = fabric_settings
    home = s.data_dir / "users" / "u1" / "home"
    spec = spec_for(s, 7, desktop=False, chromium=False, home=home)
    try:
        await NetnsDriver(s).start(spec, lambda _: None)
        body = await eventually(lambda: health(s, spec), 10, "agent health")
        assert body["ok"] and body["services"] == {}
        (home / "note").write_text("kept")
        # the controller "crashed": a new driver starts the same slot over the leftovers
        await NetnsDriver(s).start(spec, lambda _: None)
        assert (await eventually(lambda: health(s, spec), 10, "agent health"))["ok"]
    finally:
        await NetnsDriver(s).destroy(spec)
    assert await asyncio.to_thread(leftovers, s, spec) == []
    assert (home / "note").read_text() == "kept"
    assert home.stat().st_uid == s.sandbox_uid and home.stat().st_mode & 0o777 == 0o700


async def test_an_image_the_sandbox_user_cannot_reach_is_named(fabric_settings: Settings) -> None:
    """A built image under a directory the sandbox user cannot traverse: a clear error naming the directory and the
    fix, before anything is launched — and nothing left behind."""
    s = fabric_settings
    private = s.data_dir / "private"
    root = private / "image" / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3").write_text("")
    (root / "opt" / "hearth").mkdir(parents=True)
    private.chmod(0o700)
    settings = s.model_copy(update={"image_dir": private / "image"})
    driver = NetnsDriver(settings)
    assert driver.image_root() == root
    spec = spec_for(settings, 6)
    try:
        with pytest.raises(DriverError) as err:
            await driver.start(spec, lambda _: None)
        assert f"not reachable by the sandbox user (uid {driver.ids(spec)[0]}) at {private}" in err.value.message
        assert f"chmod o+x {private}" in err.value.hint and "HEARTH_IMAGE_DIR" in err.value.hint
        assert await asyncio.to_thread(leftovers, settings, spec) == []
    finally:
        await driver.destroy(spec)


@pytest.mark.slow
async def test_the_pinned_clis_run_in_the_sandbox(fabric_settings: Settings) -> None:
    """The host's pinned CLIs are bound into the sandbox: the sandbox user runs Claude Code's sign-in (paste_code:
    no desktop, no network before the URL) and the agent reads its code prompt off the rendered screen."""
    from hearth.guest import clis
    from hearth.providers.registry import load
    from hearth_agent.providerdef import definition_digest

    if clis.installed() is None:
        pytest.skip("the pinned CLIs are not installed (bash scripts/setup.sh)")
    s = fabric_settings
    claude = load()["claude_code"].agent_document()
    missing = {**claude, "flows": {"loopback": {"command": ["claude-not-here"]}}}
    # The agent runs only definitions the controller named in its config (by digest): name both.
    spec = spec_for(
        s, 8, desktop=False, chromium=False, providers=(definition_digest(claude), definition_digest(missing))
    )
    try:
        await NetnsDriver(s).start(spec, lambda _: None)
        await eventually(lambda: health(s, spec), 10, "agent health")
        status, raw = await http(s, spec, "POST", "/v1/login", {"provider": missing}, spec.secret)
        assert status == 424 and b"run `hearth image build`" in raw
        body = {"provider": claude, "flow": "paste_code"}
        assert (await http(s, spec, "POST", "/v1/login", body, spec.secret))[0] == 202

        async def waiting() -> dict[str, Any] | None:
            code, raw = await http(s, spec, "GET", "/v1/login", None, spec.secret)
            out: dict[str, Any] = json.loads(raw)
            assert out["state"] != "failed", out
            return out if code == 200 and out["awaiting_code"] else None

        out = await eventually(waiting, 60, "Claude Code's code prompt")
        assert out["url_host"] == "claude.com" and "Paste code here if prompted" in out["screen_tail"]
    finally:
        await NetnsDriver(s).destroy(spec)
    assert await asyncio.to_thread(leftovers, s, spec) == []


def test_a_workdir_is_renamed_away_before_it_is_deleted(tmp_path: Path) -> None:
    """A deletion still under way (a cancelled boot's undo keeps running in its thread) must not race the next
    sandbox on the same slot: the directory leaves its name at once; earlier leftovers of that kind go too."""
    work = tmp_path / "hearth-t1-s0"
    (work / "home" / "deep").mkdir(parents=True)
    (work / "home" / "deep" / "file").write_text("x")
    stale = tmp_path / ".hearth-t1-s0.gone-deadbeef"
    (stale / "logs").mkdir(parents=True)
    other = tmp_path / ".hearth-t1-s1.gone-deadbeef"  # another slot's: not this removal's business
    other.mkdir()
    remove_workdir(work)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]
    remove_workdir(work)  # already gone is success
