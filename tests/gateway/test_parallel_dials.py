"""Many viewers of one session, against a live sandbox: what a burst of connections does to the sandbox's Xvnc, and
the gateway's dials for viewers joining together — side by side, at most DIALS_PER_SANDBOX in flight.

The gateway used to dial one viewer at a time per session, on the claim that Xvnc accepts one pending connection per
wake-up of its listening socket so a burst could wait in its backlog. The first test checks that against the real
Xvnc of a real sandbox: its listen backlog is 5, and 50 simultaneous connects overflow its accept queue (the kernel
counts ListenOverflows; those connections wait for SYN-ACK retransmits), while the same 50 with at most
DIALS_PER_SANDBOX in flight are all served with no overflow. The second test holds Xvnc still (SIGSTOP) while 10
viewers join through the gateway and counts the TCP connections the gateway opened to it meanwhile: exactly
DIALS_PER_SANDBOX (it was 1), then every viewer gets its first frame once Xvnc runs again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.fabric.dial import open_connection
from hearth.gateway.routes import DIALS_PER_SANDBOX
from hearth.rfb.client import ServerInit, handshake
from hearth.rfb.ws import first_frame
from hearth.sandbox.netns import pids_in_netns
from tests.conftest import Running, running_controller
from tests.live import Live, start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]
BURST = 50
JOINING = 10


def xvnc_pid(live: Live) -> int:
    for pid in pids_in_netns(live.netns):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "Xvnc":
                return pid
        except OSError:
            continue
    raise AssertionError(f"no Xvnc in {live.netns}")


def overflows(pid: int) -> int:
    """TcpExt ListenOverflows of the network namespace `pid` lives in (the sandbox's)."""
    lines = Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], (int(v) for v in values.split()[1:]), strict=True))
            return table["ListenOverflows"]
    raise AssertionError("no TcpExt counters")


def established_to(pid: int, port: int) -> int:
    """TCP connections established to `port` in `pid`'s namespace: accepted or still in the accept queue."""
    rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "01")


def listen_backlog(live: Live, port: int) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", live.netns, "ss", "-ltnH", f"sport = :{port}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return int(out.stdout.split()[2])  # LISTEN's Send-Q: the backlog


async def live_session(
    make_settings: Callable[..., Settings], body: Callable[[Running, Live], Awaitable[None]]
) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_SCREEN="640x400x24", HEARTH_VIEWER_WAIT="60")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        await body(ctl, await start_ready(http, ctl.settings, "crowd"))


async def burst(ctl: Running, live: Live, n: int, in_flight: int, timeout: float) -> list[ServerInit | BaseException]:
    """`n` dials + RFB handshakes from the fabric to the sandbox's Xvnc, at most `in_flight` at a time."""
    gate = asyncio.Semaphore(in_flight)
    writers: list[asyncio.StreamWriter] = []

    async def dial() -> ServerInit:
        async with gate:
            reader, writer = await open_connection(ctl.settings.fabric_netns, live.sandbox_ip, ctl.settings.rfb_port, 5)
            writers.append(writer)

            async def write(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            return await asyncio.wait_for(handshake(reader.readexactly, write), timeout)

    try:
        return await asyncio.gather(*(dial() for _ in range(n)), return_exceptions=True)
    finally:
        for w in writers:
            w.close()


async def test_xvnc_overflows_on_50_simultaneous_dials_and_serves_them_bounded(
    make_settings: Callable[..., Settings],
) -> None:
    async def body(ctl: Running, live: Live) -> None:
        pid = xvnc_pid(live)
        backlog = listen_backlog(live, ctl.settings.rfb_port)
        assert DIALS_PER_SANDBOX < backlog, f"Xvnc's listen backlog is {backlog}"

        before = overflows(pid)
        bounded = await burst(ctl, live, BURST, DIALS_PER_SANDBOX, 30)
        bounded_overflows = overflows(pid) - before
        served = [i for i in bounded if isinstance(i, ServerInit) and (i.width, i.height) == (640, 400)]

        before = overflows(pid)
        at_once = await burst(ctl, live, BURST, BURST, 5)
        at_once_overflows = overflows(pid) - before
        at_once_served = sum(isinstance(i, ServerInit) for i in at_once)
        print(
            f"\nXvnc listen backlog {backlog}; {BURST} dials, {DIALS_PER_SANDBOX} in flight: {len(served)} served, "
            f"{bounded_overflows} accept-queue overflows; all at once: {at_once_served} served within 5 s, "
            f"{at_once_overflows} overflows"
        )
        assert len(served) == BURST, [repr(i) for i in bounded if not isinstance(i, ServerInit)][:3]
        assert bounded_overflows == 0
        assert at_once_overflows > 0  # the claim holds: a burst beyond the backlog waits in the kernel
        assert os.path.exists(f"/proc/{pid}")

    await live_session(make_settings, body)


async def test_viewers_joining_together_are_dialled_side_by_side(make_settings: Callable[..., Settings]) -> None:
    async def body(ctl: Running, live: Live) -> None:
        pid = xvnc_pid(live)
        port = ctl.settings.rfb_port
        before = overflows(pid)
        os.kill(pid, signal.SIGSTOP)  # Xvnc accepts nothing: every dial the gateway makes stays open, pending
        stopped = True
        try:
            viewers = [asyncio.create_task(first_frame(live.ws_url(ctl), timeout=60)) for _ in range(JOINING)]
            deadline = time.monotonic() + 15
            peak = 0
            while time.monotonic() < deadline and peak < DIALS_PER_SANDBOX:
                peak = max(peak, established_to(pid, port))
                await asyncio.sleep(0.05)
            for _ in range(10):  # a while longer: never more than the bound
                peak = max(peak, established_to(pid, port))
                await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGCONT)
            stopped = False
            frames = await asyncio.gather(*viewers)
        finally:
            if stopped:
                os.kill(pid, signal.SIGCONT)
        print(
            f"\n{JOINING} viewers joining while Xvnc was stopped: {peak} dials in flight at once (bound {DIALS_PER_SANDBOX})"
        )
        assert peak == DIALS_PER_SANDBOX
        assert all((f.init.width, f.init.height) == (640, 400) and f.rects for f in frames)
        assert overflows(pid) == before

    await live_session(make_settings, body)
